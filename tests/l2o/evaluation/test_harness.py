"""The evaluation harness: fair LR tuning, one vmapped call per pair, reports, bad specs."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2o.cli.main import main
from l2o.evaluation import harness
from l2o.evaluation.comparison import compare
from l2o.evaluation.harness import (
    OptimizerSpec,
    Suite,
    TaskSpec,
    evaluate_pair,
    evaluate_suite,
)
from tasks import get_task


def exact_gd_losses(task, learning_rates, steps, seeds):
    """Closed-form loss of gradient descent on a quadratic after `steps` steps, mean over seeds."""
    x0 = [task.init(jax.random.split(jax.random.key(s))[0])["x"] for s in range(seeds)]
    value = lambda x: task.loss({"x": x}, None, ())[0]  # noqa: E731
    A = np.asarray(jax.hessian(value)(x0[0]), np.float64)
    x_star = np.asarray(x0[0], np.float64) - np.linalg.solve(A, np.asarray(jax.grad(value)(x0[0])))
    eigenvalues, Q = np.linalg.eigh(A)
    losses = []
    for lr in np.asarray(learning_rates, np.float64):
        per_seed = []
        for x in x0:
            c = Q.T @ (np.asarray(x, np.float64) - x_star)
            per_seed.append(
                0.5 * np.sum(eigenvalues * (1 - lr * eigenvalues) ** (2 * steps) * c**2)
            )
        losses.append(np.mean(per_seed))
    return np.array(losses)


def test_tuning_picks_the_exactly_best_learning_rate_on_a_quadratic():
    task = get_task("quadratic_k100")
    suite = Suite((TaskSpec("quadratic_k100"),), (OptimizerSpec("sgd"),), steps=50, seeds=2,
                  lr_low=1e-3, lr_high=3e-2, lr_num=12)  # fmt: skip
    result = evaluate_pair(task, OptimizerSpec("sgd"), suite)
    exact = exact_gd_losses(task, suite.learning_rates(), suite.steps, suite.seeds)
    assert result["learning_rate"] == pytest.approx(suite.learning_rates()[np.argmin(exact)])
    finite = np.isfinite(exact) & (exact < 1e6)
    np.testing.assert_allclose(result["final_valid_loss_by_lr"][finite], exact[finite], rtol=1e-3)
    assert result["train_loss"].shape == (2, 50)


def test_one_vmapped_call_per_optimizer_and_task(monkeypatch):
    calls = []
    original = harness.population_sweep

    def counting(task, make, hparams, seeds, steps, **kw):
        calls.append((len(hparams["learning_rate"]), len(seeds)))
        return original(task, make, hparams, seeds, steps, **kw)

    monkeypatch.setattr(harness, "population_sweep", counting)
    suite = Suite((TaskSpec("rosenbrock"), TaskSpec("quadratic_k100")),
                  (OptimizerSpec("adam"), OptimizerSpec("sgd", tune_lr=False)),
                  steps=20, seeds=3, lr_num=4, lr_low=1e-3, lr_extensions=0)  # fmt: skip
    results = evaluate_suite(suite)
    assert calls == [(4, 3), (1, 3), (4, 3), (1, 3)]
    assert results["rosenbrock"]["sgd"]["learning_rate"] == pytest.approx(0.1)


def test_adam_against_itself_has_speedup_one():
    suite = Suite((TaskSpec("digits_mlp"),),
                  (OptimizerSpec("adam"), OptimizerSpec("adam", label="adam_again")),
                  steps=60, seeds=2, lr_num=3, lr_low=1e-3, lr_high=1e-1)  # fmt: skip
    comparison = compare(evaluate_suite(suite), "adam", 60)
    for name in ("adam", "adam_again"):
        entry = comparison["per_task"]["digits_mlp"][name]
        assert entry["speedup"]["speedup"] == 1.0 and entry["speedup"]["reached"]
        assert entry["paired_difference"]["mean_difference"] == 0.0
        assert entry["paired_difference"]["within_noise"]
        # Both are the same optimizer: equal steps, so the wall-clock speedup is the ratio of
        # two timings of the same step.
        wall = entry["wall_clock_speedup"]
        assert wall["speedup"] == pytest.approx(
            entry["seconds_per_step"] and wall["reference_seconds"] / wall["challenger_seconds"]
        )
    assert comparison["win_fraction"] == {"adam": 0.0, "adam_again": 0.0}


@pytest.mark.slow
def test_evaluate_command_writes_a_report_that_report_rerenders(tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["evaluate", "--tasks", "logistic_regression,rosenbrock", "--optimizers",
                 "adam,sgd", "--steps", "40", "--seeds", "2", "--lr-num", "3", "--lr-low", "1e-3",
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    report = (out / "report.md").read_text()
    assert "| logistic_regression | sgd |" in report
    assert "| speedup, steps | speedup, wall clock |" in report
    for png in ("loss_curves.png", "performance_profile.png", "lr_sensitivity.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert list(out.glob("events.out.tfevents.*"))
    results = json.loads((out / "results.json").read_text())
    adam = results["tasks"]["rosenbrock"]["adam"]
    added = adam["tuning"]["extended"]
    assert len(adam["lr_grid"]) == 3 + added["below"] + added["above"]
    assert adam["seconds_per_step"] > 0
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == report


BAD_CONFIGS = {
    "tasks: [digits_mlp\n": "malformed YAML",
    "tasks: [digits_mlp]\noptimizers: [adamm]\n": "unknown optimizer 'adamm'",
    "tasks: [digits_mlp]\noptimizers: [adam]\nstepz: 5\n": "unknown key(s) stepz",
    "tasks: [nope]\noptimizers: [adam]\n": "unknown task 'nope'",
    "tasks: [{name: digits_mlp, options: {width: 3}}]\noptimizers: [adam]\n": "key(s) width",
    "tasks: [digits_mlp]\noptimizers: [{name: adam, hparams: {b3: 1}}]\n": "b3",
    "tasks: [digits_mlp]\noptimizers: [adam]\nsteps: -4\n": "positive integer",
    "tasks: [digits_mlp]\noptimizers: [adam]\nlr_grid: {low: 1, high: 0.1}\n": "low must be below",
    "- just\n- a list\n": "mapping",
}


@pytest.mark.parametrize("text, message", list(BAD_CONFIGS.items()))
def test_bad_configs_exit_2_with_one_line(tmp_path, capsys, text, message):
    config = tmp_path / "suite.yaml"
    config.write_text(text)
    code = main(["evaluate", "--config", str(config), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_report_of_a_missing_or_foreign_directory(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    (tmp_path / "results.json").write_text(json.dumps({"command": "train"}))
    assert main(["report", str(tmp_path)]) == 2
    assert "not the result of `l2o evaluate`" in capsys.readouterr().err


def test_shipped_suites_parse():
    from l2o.cli.config import load_yaml, parse_suite

    small = parse_suite(load_yaml("configs/suite_small.yaml"))
    heldout = parse_suite(load_yaml("configs/suite_heldout.yaml"))
    assert len(small.tasks) >= 8 and small.lr_num == 15 and small.steps == 2000
    assert not {t.key for t in small.tasks} & {t.key for t in heldout.tasks}
    assert jnp.isclose(small.learning_rates()[0], 1e-7)
    from l2o.cli import quickstart

    modern = {"adam", "adamw", "nadamw", "muon", "schedule_free_adamw"}
    for optimizers in (small.optimizers, heldout.optimizers, quickstart.OPTIMIZERS):
        assert modern <= {spec.name for spec in optimizers}
        (nadamw,) = [spec for spec in optimizers if spec.name == "nadamw"]
        assert nadamw.schedule == "warmup_cosine" and 0 < nadamw.warmup < 0.2


def test_optimizer_files_are_evaluated_like_baselines(tmp_path, capsys):
    """A rule file runs (and is tuned) exactly like the baseline it encodes; a meta-trained
    file runs untuned; both are named by their file in flags and configs."""
    from l2o.optimizers.file_format import save_learned
    from l2o.optimizers.registry import get_learned
    from search.programs_library import sgd
    from search.rule_file import save_rule

    save_rule(tmp_path / "my_sgd.json", sgd(), {"learning_rate": 0.01})
    init_theta, _ = get_learned("learnable_adam")
    save_learned(tmp_path / "ladam.safetensors", "learnable_adam", {},
                 init_theta(jax.random.key(0)))  # fmt: skip
    out = tmp_path / "eval"
    optimizers = f"sgd,{tmp_path / 'my_sgd.json'},{tmp_path / 'ladam.safetensors'}"
    code = main(["evaluate", "--tasks", "rosenbrock", "--optimizers", optimizers,
                 "--steps", "30", "--seeds", "2", "--lr-num", "4", "--lr-low", "1e-4",
                 "--lr-high", "1e-1", "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    runs = json.loads((out / "results.json").read_text())["tasks"]["rosenbrock"]
    assert runs["my_sgd"]["learning_rate"] == runs["sgd"]["learning_rate"]
    np.testing.assert_allclose(runs["my_sgd"]["train_loss"], runs["sgd"]["train_loss"], rtol=1e-5)
    assert runs["ladam"]["learning_rate"] is None and len(runs["ladam"]["lr_grid"]) == 1
    assert "| rosenbrock | ladam | - |" in (out / "report.md").read_text()


def test_a_rule_file_that_ignores_its_learning_rate_is_evaluated_once(tmp_path, capsys):
    """`u = 0.01 g` has its step size in a constant: every point of the grid would train the same
    run. It runs at its stored learning rate only, with one warning, and the report says why."""
    from search.program import NUM_FIXED, G, Instruction, Program
    from search.rule_file import save_rule

    r = NUM_FIXED + 1
    fixed = Program((Instruction("scale_c", r, (G,), 0.01),), r)
    save_rule(tmp_path / "fixed.json", fixed, {"learning_rate": 0.003})
    out = tmp_path / "eval"
    optimizers = f"sgd,{tmp_path / 'fixed.json'}"
    code = main(["evaluate", "--tasks", "rosenbrock", "--optimizers", optimizers, "--steps", "20",
                 "--seeds", "1", "--lr-num", "4", "--lr-low", "1e-4", "--lr-high", "1e-1",
                 "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "fixed" in warnings[0]
    assert "does not depend on its learning rate" in warnings[0] and "0.003" in warnings[0]
    results = json.loads((out / "results.json").read_text())
    runs = results["tasks"]["rosenbrock"]
    assert (
        runs["fixed"]["lr_grid"] == [pytest.approx(0.003)]
        and runs["fixed"]["tuning"]["lr_insensitive"]
    )
    assert len(runs["sgd"]["lr_grid"]) >= 4 and not runs["sgd"]["tuning"]["lr_insensitive"]
    assert [o["tune_lr"] for o in results["suite"]["optimizers"]] == [True, False]
    assert "| rosenbrock | fixed | 0.003 **(no effect" in (out / "report.md").read_text()


@pytest.mark.parametrize("entry, message", [
    ("nothere.safetensors", "no optimizer file"),
    ("{file: x.pkl}", "must be a path ending in .json or .safetensors"),
    ("{file: SHIPPED, tune_lr: true}", "learned its step size; it has no learning rate to tune"),
    ("BAD", "invalid learned optimizer"),
])  # fmt: skip
def test_bad_optimizer_files_exit_2(tmp_path, capsys, entry, message):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"a": "b"}      ')
    config = tmp_path / "suite.yaml"
    shipped = Path(__file__).resolve().parents[3] / "l2o" / "pretrained" / "mlp_digits.safetensors"
    entry = entry.replace("BAD", str(bad)).replace("SHIPPED", str(shipped))
    config.write_text(f"tasks: [rosenbrock]\noptimizers: [{entry}]\n")
    code = main(["evaluate", "--config", str(config), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert message in err, err


def test_a_longer_reference_is_tuned_at_the_budget_and_measures_speedups_above_one():
    """Adam run on to 4x the budget picks the same LR and gives the same budget-length curve;
    against itself the speedup stays 1; SGD's (slower) speedup is unchanged, and a challenger
    that reaches a loss Adam only reaches later gets a speedup above 1."""
    tasks, opts = (TaskSpec("digits_mlp"),), (OptimizerSpec("adam"), OptimizerSpec("sgd"))
    grid = {"seeds": 2, "lr_num": 3, "lr_low": 1e-3, "lr_high": 1e-1, "timing_steps": 0}
    plain = evaluate_suite(Suite(tasks, opts, steps=40, **grid))
    longer = evaluate_suite(Suite(tasks, opts, steps=40, reference_steps=160, **grid))
    adam, adam_long = plain["digits_mlp"]["adam"], longer["digits_mlp"]["adam"]
    assert adam_long["learning_rate"] == adam["learning_rate"]
    np.testing.assert_array_equal(adam_long["train_loss"], adam["train_loss"])
    np.testing.assert_array_equal(adam_long["extended_train_loss"][:, :40], adam["train_loss"])
    assert adam_long["extended_train_loss"].shape[-1] == 160
    assert "extended_train_loss" not in longer["digits_mlp"]["sgd"]
    comparison = compare(longer, "adam", 40)["per_task"]["digits_mlp"]
    assert comparison["adam"]["speedup"]["speedup"] == 1.0
    # A challenger whose curve is Adam's curve at 160 steps squeezed into 40 steps.
    fast = dict(longer["digits_mlp"]["sgd"], train_loss=adam_long["extended_train_loss"][:, ::4])
    speedup = compare({"digits_mlp": {"adam": adam_long, "fast": fast}}, "adam", 40)
    entry = speedup["per_task"]["digits_mlp"]["fast"]["speedup"]
    assert entry["reached"] and 2.0 < entry["speedup"] <= 4.0


def test_tune_on_train_picks_the_lr_with_the_lowest_smoothed_final_training_loss(monkeypatch):
    """Three LRs whose runs are made up: LR 0 has the best final validation loss, LR 1 the best
    training loss early on, LR 2 the best training loss over the last 2% of the budget. "valid"
    picks LR 0, "train" picks LR 2."""
    steps, seeds = 100, 2
    train = np.ones((3, seeds, steps), np.float32)
    train[1, :, :90] = 0.1
    train[2, :, -2:] = 0.5
    valid = np.ones((3, seeds, 21), np.float32)
    valid[0] = 0.2

    def fake_sweep(task, make, members, seed_values, horizon, eval_every):
        steps_at = np.broadcast_to(np.arange(0, steps + 1, eval_every), valid.shape)
        return {"train_loss": train, "valid_loss": valid, "test_loss": valid, "eval_step": steps_at}

    monkeypatch.setattr(harness, "population_sweep", fake_sweep)
    grid = {"steps": steps, "seeds": seeds, "lr_num": 3, "lr_low": 1e-3, "lr_high": 1e-1,
            "lr_extensions": 0, "timing_steps": 0}  # fmt: skip
    chosen = {
        tune_on: evaluate_pair(None, OptimizerSpec("sgd"), Suite((), (), tune_on=tune_on, **grid))
        for tune_on in ("valid", "train")
    }
    assert chosen["valid"]["learning_rate"] == pytest.approx(1e-3)
    assert chosen["train"]["learning_rate"] == pytest.approx(1e-1)
    np.testing.assert_array_equal(chosen["train"]["train_loss"], train[2])


def test_unknown_tune_on_is_rejected(tmp_path, capsys):
    config = tmp_path / "suite.yaml"
    config.write_text("tasks: [rosenbrock]\noptimizers: [adam]\ntune_on: test\n")
    assert main(["evaluate", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "tune_on: 'test' is not one of valid, train" in capsys.readouterr().err


def test_reference_steps_below_steps_is_rejected(tmp_path, capsys):
    config = tmp_path / "suite.yaml"
    config.write_text("tasks: [rosenbrock]\noptimizers: [adam]\nsteps: 100\nreference_steps: 50\n")
    assert main(["evaluate", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "reference_steps must be 0 or at least steps" in capsys.readouterr().err


def fake_grid_sweep(best_lr: float, steps: int = 20, seeds: int = 2):
    """A `population_sweep` stand-in whose final validation loss is |log10(lr / best_lr)|, and
    the learning-rate lists it was called with."""
    calls = []

    def sweep(task, make, members, seed_values, horizon, eval_every):
        lrs = np.asarray(members["learning_rate"], np.float64)
        calls.append(lrs)
        loss = np.abs(np.log10(lrs / best_lr))[:, None, None] * np.ones((1, seeds, 2))
        return {
            "train_loss": np.ones((len(lrs), seeds, steps)),
            "valid_loss": loss,
            "test_loss": loss,
            "eval_step": np.broadcast_to(np.array([0, steps]), loss.shape),
        }

    return sweep, calls


@pytest.mark.parametrize(
    ("best_lr", "extended", "at_edge"),
    [
        (1e-2, {"below": 0, "above": 0}, False),  # inside the grid: no extension
        (1e-3, {"below": 0, "above": 0}, False),  # at the lowest point, which is the optimum...
        (1e-5, {"below": 3, "above": 0}, False),  # below the grid: found after one extension
        (1e3, {"below": 0, "above": 6}, False),  # found after two extensions
        (1e7, {"below": 0, "above": 6}, True),  # far above: two extensions, still at the edge
    ],
)
def test_the_grid_is_extended_exactly_when_the_best_lr_is_at_its_edge(
    monkeypatch, best_lr, extended, at_edge
):
    sweep, calls = fake_grid_sweep(best_lr)
    monkeypatch.setattr(harness, "population_sweep", sweep)
    suite = Suite((), (), steps=20, seeds=2, lr_low=1e-3, lr_high=1e-1, lr_num=3, timing_steps=0)
    out = evaluate_pair(None, OptimizerSpec("sgd"), suite)
    if best_lr == 1e-3:  # ...so the edge triggers one extension below, which finds nothing better
        extended = {"below": 3, "above": 0}
    assert out["tuning"]["extended"] == extended and out["tuning"]["at_edge"] == at_edge
    assert len(calls) == 1 + (extended["below"] + extended["above"]) // 3
    assert np.all(np.diff(np.log10(out["lr_grid"])) == pytest.approx(1.0))  # one log grid
    grid = out["lr_grid"]
    assert out["learning_rate"] == pytest.approx(min(max(best_lr, grid[0]), grid[-1]), rel=1e-5)
    assert len(out["final_valid_loss_by_lr"]) == len(out["lr_grid"])


def test_an_lr_insensitive_optimizer_is_flagged_and_not_extended(monkeypatch):
    sweep, calls = fake_grid_sweep(1.0)
    flat = lambda *a, **k: {**sweep(*a, **k), "valid_loss": np.ones((3, 2, 2))}  # noqa: E731
    monkeypatch.setattr(harness, "population_sweep", flat)
    suite = Suite((), (), steps=20, seeds=2, lr_low=1e-3, lr_high=1e-1, lr_num=3, timing_steps=0)
    out = evaluate_pair(None, OptimizerSpec("sgd"), suite)
    assert out["tuning"]["lr_insensitive"] and not out["tuning"]["at_edge"]
    assert len(calls) == 1


def test_warmup_cosine_matches_optax_and_unknown_schedules_fail():
    import optax

    from l2o.evaluation.harness import learning_rate_schedule

    spec = OptimizerSpec("nadamw", schedule="warmup_cosine", warmup=0.1)
    ours = learning_rate_schedule(spec, 0.3, 200)
    reference = optax.warmup_cosine_decay_schedule(0.0, 0.3, 20, 200, 0.0)
    steps = np.arange(0, 230)
    np.testing.assert_allclose(jax.vmap(ours)(steps), jax.vmap(reference)(steps), atol=1e-7)
    assert learning_rate_schedule(OptimizerSpec("adam"), 0.3, 200) == 0.3
    with pytest.raises(ValueError, match="unknown schedule 'cosin'"):
        learning_rate_schedule(OptimizerSpec("adam", schedule="cosin"), 0.3, 200)
