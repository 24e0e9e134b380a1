"""`l2o quickstart`: tune and compare baselines, the shipped meta-trained optimizer and the
shipped discovered rule on offline tasks, then write a short report."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from l2o.cli.builders import versions
from l2o.cli.pair_files import PairFiles
from l2o.cli.progress import progress_bar
from l2o.cli.resources import Call, check_memory, run_bytes, run_values
from l2o.cli.run_folder import claim
from l2o.cli.stopping import check
from l2o.evaluation.harness import OptimizerSpec, optimizer_factory
from l2o.evaluation.plots import loss_curves
from l2o.io import read_json, write_bytes_atomic, write_json_atomic
from search.rule_file import load_rule
from search.sweep import log_grid, lr_seed_sweep, select_best
from tasks import get_task

TASKS = ("digits_mlp", "mnist1d_mlp", "rosenbrock")
OPTIMIZERS = (
    OptimizerSpec("sgd"),
    OptimizerSpec("momentum"),
    OptimizerSpec("adam"),
    OptimizerSpec("adamw"),
    OptimizerSpec("nadamw", label="nadamw_cosine", schedule="warmup_cosine", warmup=0.05),
    OptimizerSpec("muon"),
    OptimizerSpec("schedule_free_adamw"),
)
LEARNING_RATES = log_grid(1e-4, 1.0, 9)
PRETRAINED = Path(__file__).parents[1] / "pretrained"
# The shipped meta-trained optimizer, its learning rate tuned and scheduled like NAdamW's.
LEARNED = OptimizerSpec("celo", file=str(PRETRAINED / "celo.safetensors"),
                        schedule="warmup_cosine", warmup=0.05)  # fmt: skip
# The shipped discovered rules: (name, file).
RULES = (
    ("evolved_sgd", PRETRAINED / "evolved_sgd_seed1.json"),
    ("evolved_adamw", PRETRAINED / "evolved_adamw.json"),
)


def _contenders(steps: int) -> list[tuple[str, Callable, np.ndarray]]:
    """`(name, make(learning_rate) -> transform, learning rates to try)` of every optimizer;
    schedules span `steps`."""
    contenders = [
        (spec.key, optimizer_factory(spec, steps)[0], LEARNING_RATES)
        for spec in (*OPTIMIZERS, LEARNED)
    ]
    for name, path in RULES:
        contenders.append((name, lambda lr, path=path: load_rule(path, lr), LEARNING_RATES))
    return contenders


def _mean_std(values: np.ndarray) -> str:
    if not np.isfinite(values).all():
        return "diverged"
    return f"{values.mean():.4g} ± {values.std():.2g}"


def render_report(results: dict) -> str:
    """The markdown report of a quickstart run."""
    lines = [
        "# l2o quickstart",
        "",
        f"{results['steps']} steps, {len(results['seeds'])} seeds; each optimizer's learning rate "
        f"picked from {len(results['learning_rates'])} values in "
        f"[{min(results['learning_rates']):.0e}, {max(results['learning_rates']):.0e}] "
        "by the mean final validation loss, reported on the test split (mean ± std over seeds). "
        "celo is the shipped meta-trained optimizer (l2o/pretrained/celo.safetensors, "
        "configs/meta_celo.yaml; after Celo2): a small per-parameter MLP corrects Adam's "
        "direction, normalized and orthogonalized per tensor, meta-trained for validation loss "
        "on tiny 8x8 image MLPs; its learning rate is tuned and follows warm-up + cosine decay, "
        "as nadamw_cosine's does. The evolved rules were found "
        "by `l2o evolve`: evolved_sgd from SGD (l2o/pretrained/evolved_sgd_seed1.json, "
        "configs/evolve_sgd.yaml with seed 1) is momentum, m <- 0.815 m + 0.185 lr g, u = m; "
        "evolved_adamw from AdamW with one state slot (l2o/pretrained/evolved_adamw.json, "
        "configs/evolve_adamw.yaml) divides the norm-clipped gradient by the root of a running "
        "mean of g^2, with no momentum.",
        "",
        "| task | optimizer | best lr | final train loss | test loss | test accuracy |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for task, by_optimizer in results["runs"].items():
        for name, run in by_optimizer.items():
            loss = _mean_std(np.array(run["test_loss"], dtype=float))
            train = _mean_std(np.array(run["final_train_loss"], dtype=float))
            acc = run.get("test_accuracy")
            acc = _mean_std(np.array(acc, dtype=float)) if acc is not None else "-"
            lr = run["learning_rate"]
            lr = "-" if lr is None or not np.isfinite(lr) else f"{lr:.2g}"
            lines.append(f"| {task} | {name} | {lr} | {train} | {loss} | {acc} |")
    lines += [
        "",
        "![train loss curves](loss_curves.png)",
        "",
        f"Wall time: {results['wall_time_s']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def quickstart_calls(contenders, steps: int, seeds: int, eval_every: int) -> list[Call]:
    """The calls of the quickstart (`l2o.cli.resources`): per task and contender, its learning
    rates x seeds; the best learning rate's training curves are kept."""
    calls = []
    for task_name in TASKS:
        task = get_task(task_name)
        sizes = run_bytes(task, [make(np.float32(lrs[0])) for _, make, lrs in contenders])
        for (_, _, lrs), size in zip(contenders, sizes, strict=True):
            values = run_values(steps, eval_every)
            calls.append(Call(size, len(lrs) * seeds, values, seeds * values))
    return calls


def _pair(task, make, lrs, seed_ids, steps: int) -> dict:
    """One optimizer on one task: its learning rate picked by the mean final validation loss,
    the runs at that rate, and their training curves (`train_loss`, seeds x steps)."""
    eval_every = max(1, steps // 10)
    metrics = lr_seed_sweep(task, make, lrs, seed_ids, steps, eval_every=eval_every)
    best = select_best(metrics["valid_loss"][:, :, -1])
    run = {"learning_rate": float(lrs[best])}
    for key in ("valid_loss", "test_loss", "test_accuracy"):
        if key in metrics:
            run[key] = metrics[key][best, :, -1]
    final_valid = metrics["valid_loss"][:, :, -1]
    run["final_valid_loss_by_lr"] = np.where(np.isfinite(final_valid), final_valid, np.inf).mean(1)
    window = max(1, steps // 20)  # the last 5% of the steps, per seed
    run["final_train_loss"] = metrics["train_loss"][best][:, -window:].mean(1)
    return {"run": run, "train_loss": metrics["train_loss"][best]}


def run_quickstart(
    out: Path,
    *,
    steps: int = 1000,
    seeds: int = 3,
    resume: bool = False,
    overwrite: bool = False,
    max_memory: int | None = None,
) -> int:
    """Run the quickstart comparison and write `results.json`, then `report.md` and
    `loss_curves.png` made from it. Each finished pair is saved in `out/pairs`: with `resume`,
    a rerun computes only the others. Refused if its memory estimate (`l2o.cli.resources`) is
    above `max_memory`."""
    contenders = _contenders(steps)
    calls = quickstart_calls(contenders, steps, seeds, max(1, steps // 10))
    check_memory(calls, max_memory, "--steps or --seeds")
    out = claim(out, resume=resume, overwrite=overwrite)
    pairs = PairFiles(out, {"command": "quickstart", "steps": steps, "seeds": seeds},
                      resume=resume)  # fmt: skip
    t0 = time.perf_counter()
    seed_ids = np.arange(seeds)
    runs: dict[str, dict] = {}
    curves: dict[str, dict] = {}
    with progress_bar() as bar:
        job = bar.add_task("quickstart", total=len(TASKS) * len(contenders))
        for task_name in TASKS:
            task = get_task(task_name)
            runs[task_name], curves[task_name] = {}, {}
            for name, make, lrs in contenders:
                bar.update(job, description=f"{task_name} / {name}")
                pair = pairs.run(f"{task_name}/{name}", functools.partial(
                    _pair, task, make, lrs, seed_ids, steps))  # fmt: skip
                runs[task_name][name] = pair["run"]
                curves[task_name][name] = pair["train_loss"]
                bar.advance(job)
                check()  # stop here on Ctrl-C: the pair is saved
    results = {
        "command": "quickstart",
        "steps": steps,
        "seeds": seed_ids,
        "learning_rates": LEARNING_RATES,
        "runs": runs,
        "train_loss_best_lr": curves,
        "wall_time_s": time.perf_counter() - t0,
        "versions": versions(),
    }
    write_json_atomic(out / "results.json", results)
    results = read_json(out / "results.json")
    curves = {t: {o: np.asarray(c, np.float64) for o, c in by_optimizer.items()}
              for t, by_optimizer in results["train_loss_best_lr"].items()}  # fmt: skip
    write_bytes_atomic(out / "loss_curves.png", loss_curves(curves))
    write_bytes_atomic(out / "report.md", render_report(results).encode())
    print(f"quickstart done in {results['wall_time_s']:.0f} s: report at {out / 'report.md'}")
    return 0
