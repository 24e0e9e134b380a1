"""Resource bounds: the memory estimate of every training command, refused above --max-memory
(exit 2, one line, before anything is compiled or allocated); the estimate against a measured
peak; every shipped config and README command under the limit of a 24 GB machine."""

import argparse
import json
import resource
from pathlib import Path

import pytest
import yaml

import l2o.cli.resources as resources
from l2o.cli.main import main

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "configs"
LIMIT_24GB = 12 * 2**30  # the default limit (half the memory) of a 24 GB machine


def _refused(argv, capsys, out: Path) -> str:
    """stderr of `argv`, checked to be one line with exit code 2, no traceback, no `out`, and
    no large allocation (the peak resident memory grew by less than 200 MB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    code = main([*argv, "--out", str(out)])
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()
    assert grown < 200 * 2**20
    return err


def _meta_config(tmp_path, **estimator) -> str:
    data = yaml.safe_load((CONFIGS / "meta_tiny.yaml").read_text())
    data["estimator"].update(estimator)
    path = tmp_path / "meta.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize(
    "argv, lower",
    [
        (["train", "--task", "digits_mlp", "--optimizer", "adam",
          "--task-opt", "hidden=[30000,30000]"], "the task's size"),
        (["evaluate", "--tasks", "quadratic_k100", "--optimizers", "adam", "--steps", "10",
          "--seeds", "10000000"], "seeds must lie in 1..1000"),
        (["evaluate", "--tasks", "quadratic_k100", "--optimizers", "adam", "--steps", "10",
          "--lr-num", "10000000"], "lr_grid.num must lie in 1..1000"),
        (["evaluate", "--tasks", "quadratic_k100", "--optimizers", "adam", "--steps",
          "100000000"], "lower steps, seeds, the number of learning rates"),
        (["tune", "--optimizer", "adam", "--task", "quadratic_k100", "--space",
          str(CONFIGS / "spaces" / "adam_lr.yaml"), "--method", "random", "--steps", "10",
          "--trials", "10000000"], "--trials"),
        (["quickstart", "--steps", "10", "--seeds", "10000000"], "--seeds"),
        (["train", "--task", "quadratic_k100", "--optimizer", "adam", "--steps", "100",
          "--max-memory", "10K"], "--steps"),
        (["evolve", "--config", str(CONFIGS / "evolve_tiny.yaml"), "--max-memory", "1K"],
         "batch_size"),
        (["meta-train", "--config", str(CONFIGS / "meta_tiny.yaml"), "--steps", "2147483647"],
         "outer.steps"),
    ],
)  # fmt: skip
def test_runs_above_the_limit_are_refused_before_any_work(argv, lower, tmp_path, capsys):
    err = _refused(argv, capsys, tmp_path / "out")
    assert lower in err
    assert "must lie in" in err or "the run would need about" in err and "--max-memory" in err


def test_huge_meta_training_populations_are_refused(tmp_path, capsys):
    for estimator in ({"num_tasks": 10_000_000}, {"num_pairs": 10_000_000},
                      {"name": "open_es", "population_size": 10_000_000}):  # fmt: skip
        argv = ["meta-train", "--config", _meta_config(tmp_path, **estimator)]
        assert "estimator.num_tasks" in _refused(argv, capsys, tmp_path / "out")


def test_protocol_commands_are_refused_above_the_limit(tmp_path, capsys):
    config = {"tasks": ["quadratic_k100"], "optimizers": ["adam"], "steps": 20, "eval_every": 10,
              "seeds": 2, "targets": {"file": str(tmp_path / "t.json"), "steps": 10, "trials": 4,
              "setters": ["adamw"]}, "tuning": {"trials": 2, "studies": 2}}  # fmt: skip
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = ["targets", "--config", str(path), "--max-memory", "1K"]
    assert "targets.trials" in _refused(argv, capsys, tmp_path / "t.json")
    targets = {"steps": 20, "target_steps": 10, "eval_every": 10,
               "tasks": {"quadratic_k100": {"target": 1.0}}}  # fmt: skip
    (tmp_path / "t.json").write_text(json.dumps(targets))
    argv = ["protocol", "--config", str(path), "--targets", str(tmp_path / "t.json"),
            "--max-memory", "1K"]  # fmt: skip
    assert "tuning.trials" in _refused(argv, capsys, tmp_path / "p")


@pytest.mark.parametrize(
    "text, size", [("8G", 8 * 2**30), ("512M", 512 * 2**20), ("1.5g", 3 * 2**29),
                   ("64KB", 65536), ("100", 100), ("1T", 2**40)]
)  # fmt: skip
def test_memory_sizes(text, size):
    assert resources.parse_memory_size(text) == size


@pytest.mark.parametrize("text", ["abc", "-1G", "0", "nan", "inf", "G", "", "9e30T"])
def test_bad_memory_sizes_exit_2(text, capsys):
    with pytest.raises(argparse.ArgumentTypeError):
        resources.parse_memory_size(text)
    with pytest.raises(SystemExit) as e:
        main(["train", "--task", "rosenbrock", "--optimizer", "adam", "--max-memory", text])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--max-memory" in err and err.count("\n") == 1


def test_default_limit_is_half_the_physical_memory():
    assert resources.default_max_memory() == resources.physical_memory() // 2 > 2**28


def test_every_command_that_trains_takes_max_memory():
    from l2o.cli.main import build_parser

    (action,) = [a for a in build_parser()._actions if a.dest == "command"]
    takes = {name for name, sub in action.choices.items()
             if any(a.dest == "max_memory" for a in sub._actions)}  # fmt: skip
    trains = {"train", "tune", "evaluate", "targets", "protocol", "meta-train", "evolve",
              "quickstart", "calibrate-rule", "distill"}  # fmt: skip
    assert takes == trains
    default = action.choices["train"].parse_args(["--task", "t", "--optimizer", "o"]).max_memory
    assert abs(default - resources.default_max_memory()) < 2**20


def test_estimate_adds_the_largest_call_and_every_kept_value():
    calls = [resources.Call(1000, 10, 50, 7), resources.Call(3000, 2, 100, 5)]
    device, host = resources.estimate(calls)
    assert device == max(10 * (1000 + 4 * 50), 2 * (3000 + 4 * 100))
    assert host == max(4 * 10 * 50, 4 * 2 * 100) + 64 * 12


SHIPPED = [
    "train --task digits_mlp --optimizer adam --lr 3e-3 --steps 2000 --seed 0",
    "tune --optimizer adam --task mnist1d_mlp --space configs/spaces/adam_full.yaml --method tpe",
    "quickstart",
    "targets --config configs/protocol_cpu.yaml",
    "protocol --config configs/protocol_cpu.yaml --optimizers adamw,"
    "l2o/pretrained/evolved_adamw.json,l2o/pretrained/mlp_digits.safetensors",
    "evaluate --config configs/suite_heldout.yaml --optimizers "
    "adam,l2o/pretrained/mlp_digits.safetensors --steps 1000 --seeds 2 --reference-steps 2000",
    "evolve --config configs/evolve_adamw.yaml --generations 480",
    *[f"evaluate --config {p.relative_to(REPO)}" for p in sorted(CONFIGS.glob("*.yaml"))
      if p.name.startswith(("suite_", "eval_")) and p.name != "eval_andrychowicz.yaml"],
    *[f"meta-train --config {p.relative_to(REPO)}"
      for p in sorted([*CONFIGS.glob("meta_*.yaml"), *CONFIGS.glob("ablation/meta_*.yaml")])],
    *[f"evolve --config {p.relative_to(REPO)}" for p in sorted(CONFIGS.glob("evolve_*.yaml"))],
]  # fmt: skip
"""The README's commands and every shipped config (eval_andrychowicz.yaml needs the optimizers
the README's meta-training makes first)."""


@pytest.mark.slow
def test_shipped_configs_and_readme_commands_fit_a_24gb_machine(tmp_path, monkeypatch):
    """Each command's estimate, taken where the command checks it, is below the default limit
    of a 24 GB machine (the command stops there: nothing is trained). The traced check of every
    optimizer's step on every task before it (`check_step`, tested with the commands) is skipped:
    it is most of the time here and estimates nothing."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr("l2o.cli.builders.check_step", lambda *a, **k: None)
    estimates = {}

    class CheckedError(Exception):
        pass

    def record(calls, limit, lower):
        estimates[command] = resources.estimate(calls).total
        raise CheckedError

    for module in ("train", "tune", "evaluate", "protocol", "meta_train", "evolve", "quickstart"):
        __import__(f"l2o.cli.{module}")
        monkeypatch.setattr(f"l2o.cli.{module}.check_memory", record, raising=False)
        monkeypatch.setattr(f"l2o.cli.{module}.check_step", lambda *a, **k: None, raising=False)
    monkeypatch.setattr(resources, "check_memory", record)
    for command in SHIPPED:
        with pytest.raises(CheckedError):
            main([*command.split(), "--out", str(tmp_path / "out")])
    assert set(estimates) == set(SHIPPED)
    assert max(estimates.values()) < LIMIT_24GB, estimates
