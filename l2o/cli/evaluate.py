"""`l2o evaluate` (optimizers x tasks x seeds, tuned, compared, reported) and `l2o report`."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from rich.progress import Progress

from l2o.cli.builders import versions
from l2o.cli.config import load_yaml, parse_suite, pick_entries
from l2o.cli.distributed import is_writer, on_writer
from l2o.cli.pair_files import PairFiles
from l2o.cli.progress import progress_bar
from l2o.cli.run_folder import claim
from l2o.cli.stopping import check
from l2o.evaluation.comparison import compare
from l2o.evaluation.harness import evaluate_suite
from l2o.evaluation.report import write_report
from l2o.io import UserError, read_json, write_bytes_atomic, write_json_atomic


def suite_from_flags(
    config: Path | None, tasks: str | None, optimizers: str | None, overrides: dict[str, Any]
):
    """The Suite of a config file and/or flags (flags win); validated before any work."""
    data = load_yaml(config) if config else {}
    if tasks:
        data["tasks"] = pick_entries(data.get("tasks"), tasks)
    if optimizers:
        data["optimizers"] = pick_entries(data.get("optimizers"), optimizers)
    for key, value in overrides.items():
        if key == "lr_grid" and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}  # flags set some grid keys, the config the rest
        elif value is not None:
            data[key] = value
    if not data.get("tasks") or not data.get("optimizers"):
        raise UserError("give --config FILE, or both --tasks and --optimizers")
    return parse_suite(data, str(config) if config else "flags")


def untuned_when_lr_is_ignored(suite, *, warn: bool) -> tuple[Any, set[str]]:
    """`suite` with each tuned rule file whose update does not depend on its learning rate
    (`search.learning_rate`) evaluated at its stored learning rate instead (tuning would run the
    same training at every point of the grid), and the keys of those optimizers; with `warn`,
    one line on stderr for each."""
    from l2o.evaluation.harness import RULE_SUFFIX
    from search.learning_rate import ignores_learning_rate
    from search.rule_file import default_learning_rate, read_rule

    optimizers, ignoring = [], set()
    for spec in suite.optimizers:
        if spec.tune_lr and spec.file.endswith(RULE_SUFFIX):
            program, metadata = read_rule(spec.file)  # checked when the suite was parsed
            if ignores_learning_rate([program], op_by_op=True)[0]:
                spec = dataclasses.replace(spec, tune_lr=False)
                ignoring.add(spec.key)
                if warn:
                    lr = default_learning_rate(spec.file, metadata)
                    print(f"l2o: warning: {spec.key}: the rule's update does not depend on its "
                          f"learning rate, so tuning it would choose nothing; evaluated at its "
                          f"learning rate {lr:g} only", file=sys.stderr)  # fmt: skip
        optimizers.append(spec)
    return dataclasses.replace(suite, optimizers=tuple(optimizers)), ignoring


def check_suite_runs(suite) -> list[tuple[str, str, int, bool]]:
    """Build every task and trace one step of every optimizer on it (no compilation), so bad
    task options or hyperparameters fail as a UserError before any work. Returns, per task and
    optimizer, `(task key, optimizer key, bytes of one run, learning rate tuned)`."""
    import numpy as np

    from l2o.cli.builders import build_spec_task, check_step
    from l2o.cli.resources import run_bytes
    from l2o.evaluation.harness import optimizer_factory

    pairs = []
    for task_spec in suite.tasks:
        task = build_spec_task(task_spec)
        optimizers = []
        for spec in suite.optimizers:
            make, lr = optimizer_factory(spec)
            check_step(
                task, lambda key, make=make, lr=lr: make(lr), f"{spec.key} on {task_spec.key}"
            )
            optimizers.append((spec, make(lr), spec.tune_lr and bool(np.isfinite(lr))))
        sizes = run_bytes(task, [optimizer for _, optimizer, _ in optimizers])
        for (spec, _, tuned), size in zip(optimizers, sizes, strict=True):
            pairs.append((task_spec.key, spec.key, size, tuned))
    return pairs


def evaluate_calls(suite, pairs: list[tuple[str, str, int, bool]]) -> list:
    """The calls of `l2o evaluate` (`l2o.cli.resources`): per task and optimizer, the learning
    rates x seeds trained at once; the best learning rate's curves are kept, with the evaluations
    and the reference's longer curve."""
    from l2o.cli.resources import Call, run_values

    calls = []
    for _, key, size, tuned in pairs:
        horizon = max(suite.steps, suite.reference_steps) if key == suite.reference else suite.steps
        values = run_values(horizon, suite.evaluation_interval)
        kept = suite.seeds * (values + suite.steps * (horizon > suite.steps))
        calls.append(Call(size, (suite.lr_num if tuned else 1) * suite.seeds, values, kept))
    return calls


def run_evaluate_command(
    suite,
    out: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    max_memory: int | None = None,
) -> int:
    """Evaluate `suite`; write results.json, then report.md, plots and TensorBoard events (made
    from results.json) to `out`. Each finished pair is saved in `out/pairs`: with `resume`, a
    rerun computes only the others.

    With several processes (`l2o.cli.distributed`), every process computes and process 0 writes.
    A suite whose memory estimate (`l2o.cli.resources`) is above `max_memory` is refused. A rule
    file whose update ignores its learning rate is not tuned (`untuned_when_lr_is_ignored`);
    its results say so (`tuning.lr_insensitive`).
    """
    from l2o.cli.resources import check_memory

    writer = is_writer()
    suite, ignoring = untuned_when_lr_is_ignored(suite, warn=writer)
    calls = evaluate_calls(suite, check_suite_runs(suite))
    check_memory(calls, max_memory, "steps, seeds, the number of learning rates or tasks")
    out = on_writer(lambda: claim(out, resume=resume, overwrite=overwrite)) or out
    pairs = PairFiles(out, dataclasses.asdict(suite), resume=resume, writer=writer)
    t0 = time.perf_counter()
    count = len(suite.tasks) * len(suite.optimizers)
    with progress_bar() if writer else Progress(disable=True) as bar:
        job = bar.add_task("evaluate", total=count)

        def on_pair(task, optimizer):
            bar.update(job, advance=1, description=f"evaluate (done: {task} / {optimizer})")
            check()  # stop here on Ctrl-C: the pair is saved

        results_by_task = evaluate_suite(suite, on_pair=on_pair, memo=pairs.run)
    if not writer:
        return 0
    for by_optimizer in results_by_task.values():
        for key in ignoring:
            by_optimizer[key]["tuning"]["lr_insensitive"] = True
    results = {
        "command": "evaluate",
        "suite": dataclasses.asdict(suite),
        "seeds": list(range(suite.seeds)),  # the training seeds of every configuration
        "tasks": results_by_task,
        "wall_time_s": time.perf_counter() - t0,
        "versions": versions(),
    }
    results["comparison"] = compare(results_by_task, suite.reference, suite.steps)
    write_json_atomic(out / "results.json", results)
    write_report(out, read_json(out / "results.json"))
    print(f"evaluated {count} optimizer x task pairs in {results['wall_time_s']:.0f} s: "
          f"{out / 'report.md'}")  # fmt: skip
    return 0


def write_protocol_report(out: Path, results: dict[str, Any]) -> None:
    """`report.md` and the figures of `l2o protocol` results."""
    from l2o.evaluation.protocol_report import figures, render_markdown

    markdown, pngs = render_markdown(results), figures(results)  # both made before any write
    for name, png in pngs.items():
        write_bytes_atomic(out / name, png)
    write_bytes_atomic(out / "report.md", markdown.encode())


def run_report_command(directory: Path) -> int:
    """Re-render `report.md` and the plots of an evaluation (or a protocol run) from its
    `results.json`."""
    results = read_json(Path(directory) / "results.json")
    if not isinstance(results, dict) or results.get("command") not in ("evaluate", "protocol"):
        raise UserError(f"{directory}/results.json is not the result of `l2o evaluate` or "
                        "`l2o protocol`")  # fmt: skip
    try:
        if results["command"] == "protocol":
            write_protocol_report(Path(directory), results)
        else:
            write_report(Path(directory), results, tensorboard=False)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise UserError(
            f"{directory}/results.json is malformed ({type(e).__name__}: {e})"
        ) from None
    print(f"report written to {Path(directory) / 'report.md'}")
    return 0
