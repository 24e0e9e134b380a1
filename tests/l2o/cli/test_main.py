"""The `l2o` command: results on disk, TensorBoard events, one-line errors with exit code 2."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from baselines import get_optimizer
from l2o.cli.main import main
from tasks import get_task, train


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_train_writes_results_and_events(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--task", "digits_mlp", "--optimizer", "adam", "--lr", "0.003",
            "--steps", "60", "--eval-every", "25", "--seed", "4", "--out", str(out)]  # fmt: skip
    code, stdout, _ = _run(argv, capsys)
    assert code == 0 and "digits_mlp / adam" in stdout
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "ok"
    assert results["config"]["hparams"]["learning_rate"] == 0.003
    assert len(results["metrics"]["train_loss"]) == 60
    assert results["metrics"]["eval_step"] == [0, 25, 50, 60]
    assert results["final"]["test_accuracy"] == results["metrics"]["test_accuracy"][-1]
    assert results["timing"]["wall_time_s"] > 0 and "jax" in results["versions"]

    # The chunked run with a progress bar is the same run as one `tasks.train` call.
    task, opt = get_task("digits_mlp"), get_optimizer("adam", learning_rate=0.003)
    _, ref = jax.jit(lambda t: train(t, opt, 60, jax.random.key(4), eval_every=25))(task)
    np.testing.assert_array_equal(np.float32(results["metrics"]["train_loss"]), ref["train_loss"])

    (event_file,) = out.glob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file))
    events.Reload()
    assert {"train/loss", "valid/loss", "test/accuracy"} <= set(events.Tags()["scalars"])
    losses = [e.value for e in events.Scalars("train/loss")]
    np.testing.assert_allclose(losses, results["metrics"]["train_loss"], rtol=1e-6)
    assert [e.step for e in events.Scalars("test/accuracy")] == [0, 25, 50, 60]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--task", "no_such_task", "--optimizer", "adam"], "valid tasks: cifar10_cnn"),
        (["train", "--task", "rosenbrock", "--optimizer", "adamm"], "valid optimizers"),
        (["train", "--task", "rosenbrock", "--optimizer", "adam", "--hparam", "b3=1"], "b1"),
        (
            ["train", "--task", "rosenbrock", "--optimizer", "adam", "--task-opt", "dim"],
            "NAME=VALUE",
        ),
        (
            ["train", "--task", "rosenbrock", "--optimizer", "adam", "--task-opt", "dim=1"],
            "dim >= 2",
        ),
        (
            [
                "train",
                "--task",
                "rosenbrock",
                "--optimizer",
                "adam",
                "--steps",
                "5",
                "--eval-every",
                "9",
            ],
            "larger than --steps",
        ),  # fmt: skip
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    code, _, err = _run([*argv, "--out", str(out)], capsys)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("flag, value", [("--steps", "-5"), ("--steps", "0"), ("--lr", "nan"),
                                         ("--lr", "-1"), ("--seed", "x")])  # fmt: skip
def test_bad_numbers_exit_2(capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        main(["train", "--task", "rosenbrock", "--optimizer", "adam", flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and err.count("\n") == 1


def test_unwritable_out_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = _run(["train", "--task", "rosenbrock", "--optimizer", "adam",
                         "--out", str(blocker / "sub")], capsys)  # fmt: skip
    assert code == 2 and "not writable" in err


def test_divergence_is_reported_with_a_nonzero_exit(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = _run(["train", "--task", "digits_mlp", "--optimizer", "sgd", "--lr", "1e6",
                         "--steps", "50", "--out", str(out)], capsys)  # fmt: skip
    assert code == 3 and "diverged" in err
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "diverged"
    assert results["final"]["diverged_at_step"] is not None


def test_tasks_lists_every_task(capsys):
    code, out, _ = _run(["tasks"], capsys)
    assert code == 0
    for name in ("digits_mlp", "mnist1d_mlp", "nqm", "shakespeare_lm"):
        assert name in out


def test_console_entry_point_reports_errors_without_traceback():
    ok = subprocess.run([sys.executable, "-m", "l2o.cli", "tasks"], capture_output=True, text=True)
    assert ok.returncode == 0 and "rosenbrock" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "l2o.cli", "train", "--task", "x", "--optimizer",
                          "adam"], capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_gradient_estimators_through_the_command(tmp_path, capsys):
    out = tmp_path / "dfa"
    code, _, _ = _run(["train", "--task", "digits_mlp", "--optimizer", "adam", "--lr", "3e-3",
                       "--steps", "300", "--grad", "dfa", "--out", str(out)], capsys)  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert code == 0 and results["config"]["grad"] == "dfa"
    assert results["final"]["test_accuracy"] > 0.8
    code, _, err = _run(["train", "--task", "rosenbrock", "--optimizer", "adam", "--grad", "dfa",
                         "--out", str(tmp_path / "x")], capsys)  # fmt: skip
    assert code == 2 and "no layered MLP" in err and not (tmp_path / "x").exists()
    code, _, err = _run(["train", "--task", "rosenbrock", "--optimizer", "adam", "--grad",
                         "forward", "--grad-opt", "tangents=2"], capsys)  # fmt: skip
    assert code == 2 and "num_tangents" in err


def test_optimizers_lists_every_baseline_with_defaults(capsys):
    code, out, _ = _run(["optimizers"], capsys)
    assert code == 0
    for name in ("adahessian", "lbfgs", "lion", "radam", "lars"):
        assert f"\n{name}" in f"\n{out}"
    assert "b2=0.999" in out


def test_version_and_every_subcommand_describes_itself_and_its_defaults(capsys):
    from importlib import metadata

    from l2o.cli.main import build_parser

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"l2o {metadata.version('l2o')}"
    parser = build_parser()
    (action,) = [a for a in parser._actions if a.dest == "command"]
    for name, sub in action.choices.items():
        assert sub.description and "\n" not in sub.description, name
    assert "(default: 1000)" in " ".join(action.choices["train"].format_help().split())


def test_flags_pick_a_config_entry_by_its_label(tmp_path):
    """`--tasks`/`--optimizers` naming a label of the config take that entry, options included;
    other names stay names (here a registered optimizer)."""
    from l2o.cli.evaluate import suite_from_flags
    from l2o.cli.protocol import protocol_from_flags

    config = tmp_path / "suite.yaml"
    config.write_text(
        "tasks: [rosenbrock, {name: quadratic_k10000, label: wide_q, options: {dim: 7}}]\n"
        "optimizers: [adam, {name: nadamw, label: nadamw_cosine, schedule: warmup_cosine}]\n"
    )
    suite = suite_from_flags(config, "wide_q", "nadamw_cosine,sgd", {})
    (task,) = suite.tasks
    assert (task.name, task.label, task.options) == ("quadratic_k10000", "wide_q", {"dim": 7})
    assert [(o.name, o.schedule) for o in suite.optimizers] == [
        ("nadamw", "warmup_cosine"), ("sgd", "constant")]  # fmt: skip
    protocol = protocol_from_flags("configs/protocol_cpu.yaml", "adamw,nadamw_cosine")
    assert [o.key for o in protocol.suite.optimizers] == ["adamw", "nadamw_cosine"]
    assert protocol.suite.optimizers[1].schedule == "warmup_cosine"
