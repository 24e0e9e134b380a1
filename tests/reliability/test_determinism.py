"""The same command, config and seed give bit-identical results: every command runs twice, each
time in a fresh process with a different PYTHONHASHSEED (so nothing may depend on the order of
a set or dict of strings), and the results files are compared exactly after removing the timing
fields. The results also record the package versions and the seeds (all but `export-rule`,
which writes the code and text of a rule file). The commands run in groups, one test class each
(a command that reads another's output runs after it, in the same process), so that the groups
spread over the test workers.

The quickstart runs here only, its first run's report checked too: on its three tasks, with six
of its ten contenders (`QUICKSTART`: a plain and an adaptive baseline, the scheduled NAdamW, the
meta-trained optimizer and both evolved rules; each contender is a compiled sweep per task, the
most expensive programs of the suite)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from l2o.cli import quickstart
from l2o.cli.main import build_parser

REPO = Path(__file__).resolve().parents[2]
SPACE = "learning_rate: {type: log_uniform, low: 1.0e-3, high: 0.1}\n"
# Each command with tiny flags, and the files its run writes (compared between the two runs).
COMMANDS = {
    "train": (["train", "--task", "digits_mlp", "--optimizer", "adam", "--lr", "0.003",
               "--steps", "30", "--eval-every", "10", "--seed", "3", "--out", "train"],
              ["train/results.json"]),
    "evaluate": (["evaluate", "--config", "evaluate.yaml", "--out", "evaluate"],
                 ["evaluate/results.json"]),
    **{f"tune-{method}": (["tune", "--optimizer", "sgd", "--task", "quadratic_k100", "--space",
                           "space.yaml", "--method", method, "--trials", "4", "--steps", "20",
                           "--reports", "2", "--seed", "1", "--out", f"tune_{method}"],
                          [f"tune_{method}/study.json"])
       for method in ("grid", "random", "cmaes", "tpe")},
    "meta-train": (["meta-train", "--config", "meta.yaml", "--steps", "4", "--out", "meta"],
                   ["meta/results.json", "meta/meta_metrics.json", "meta/ckpt_00000004.npz",
                    "meta/optimizer.safetensors"]),
    "export": (["export", "meta", "--out", "exported.safetensors"], ["exported.safetensors"]),
    "evolve": (["evolve", "--config", "evolve.yaml", "--generations", "2", "--out", "evolve"],
               ["evolve/evolution.json", "evolve/best_rule.json"]),
    "distill": (["distill", "adam", "--config", "distill.yaml", "--out", "distill"],
                ["distill/distill.json", "distill/best_rule.json"]),
    "calibrate-rule": (["calibrate-rule", "evolve/best_rule.json", "--out", "calibrated.json"],
                       ["calibrated.json"]),
    "export-rule": (["export-rule", "evolve/best_rule.json", "--out", "rule", "--name", "rule"],
                    ["rule/rule.py", "rule/rule.md", "rule/rule.tex"]),
    "quickstart": (["quickstart", "--out", "quickstart", "--steps", "5", "--seeds", "2"],
                   ["quickstart/results.json"]),
    "targets": (["targets", "--config", "protocol.yaml", "--out", "targets.json"],
                ["targets.json"]),
    "protocol": (["protocol", "--config", "protocol.yaml", "--out", "protocol"],
                 ["protocol/results.json"]),
}  # fmt: skip
# Two tasks (one with a dataset) and two optimizers, a grid of three learning rates (extended
# with three more while the best is at an edge: the same compiled sweep). No timing run: its
# fields are removed before the comparison anyway.
EVALUATE = """tasks: [rosenbrock, digits_mlp]
optimizers: [adam, sgd]
steps: 20
seeds: 1
lr_grid: {low: 1.0e-3, high: 0.1, num: 3}
timing_steps: 0
"""
PROTOCOL = """tasks: [{name: quadratic_k100, options: {dim: 4}}]
optimizers: [sgd]
steps: 20
eval_every: 5
seeds: 1
timing_steps: 2
targets: {file: targets.json, trials: 2, steps: 10, setters: [adamw]}
tuning: {trials: 1, studies: 2}
"""
DISTILL = """generations: 2
population_size: 6
tournament_size: 2
batch_size: 4
warm_starts: [sgd]
mutation: {max_instructions: 8, max_state: 1}
fit: {tasks: [{name: digits_mlp, options: {hidden: [4]}}], steps: 8}
heldout: {tasks: [{name: digits_mlp, options: {hidden: [4]}}], steps: 8}
funnel: {top_k: 2}
"""
# Commands that read or list but compute nothing: nothing to compare.
NOT_COMPUTING = ("tasks", "optimizers", "report")
# Commands whose outputs record no run (export-rule writes code and text of a rule file,
# calibrate-rule a rule file).
NOT_RECORDING = ("export-rule", "calibrate-rule")
TIMING_KEYS = {"wall_time_s", "compile_time_s", "run_time_s", "timing", "date", "seconds_per_step",
               "wall_clock_speedup", "seconds"}  # fmt: skip
# The quickstart's contenders that the runs keep (the driver filters `quickstart._contenders`).
QUICKSTART = ("sgd", "adam", "nadamw_cosine", "celo", "evolved_sgd", "evolved_adamw")
DRIVER = """
import json, sys
from l2o.cli import quickstart
from l2o.cli.main import main
import time
argvs, keep = json.loads(sys.argv[1]), json.loads(sys.argv[2])
contenders = quickstart._contenders
quickstart._contenders = lambda steps: [c for c in contenders(steps) if c[0] in keep]
codes, seconds = [], []
for argv in argvs:
    t0 = time.perf_counter()
    codes.append(main(argv))
    seconds.append(round(time.perf_counter() - t0, 2))
open("exit_codes.json", "w").write(json.dumps({"codes": codes, "seconds": seconds}))
"""


def test_every_command_is_checked_or_listed():
    (action,) = [a for a in build_parser()._actions if a.dest == "command"]
    commands = {argv[0] for argv, _ in COMMANDS.values()}
    assert set(action.choices) <= commands | set(NOT_COMPUTING)


def without_timing(obj):
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [without_timing(v) for v in obj]
    return obj


def safetensors_parts(data: bytes) -> tuple[dict, bytes]:
    """Header (with the metadata's date removed) and the raw theta bytes."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header["__metadata__"]
    meta["metadata"] = without_timing(json.loads(meta["metadata"]))
    return header, data[8 + n :]


def comparable(path: Path):
    if path.suffix == ".json":
        return without_timing(json.loads(path.read_text()))
    if path.suffix in (".py", ".md", ".tex"):
        return path.read_bytes()
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            return {k: (f[k].dtype.str, f[k].shape, f[k].tobytes()) for k in f.files}
    return safetensors_parts(path.read_bytes())


def _recorded(folder: Path, command: str) -> tuple[dict, object]:
    """(versions, seed or seeds) that the results of `command` record."""
    name = COMMANDS[command][1][0]
    if name.endswith(".safetensors"):
        meta = safetensors_parts((folder / name).read_bytes())[0]["__metadata__"]
        meta = meta["metadata"]
        return meta["versions"], meta["config"]["outer"]["seed"]
    results = json.loads((folder / name).read_text())
    if command == "train":
        return results["versions"], results["config"]["seed"]
    if command.startswith("tune"):
        return results["versions"], (results["config"]["seed"], results["config"]["seeds"])
    if command in ("meta-train", "distill"):
        return results["versions"], results["seed"]
    if command == "evolve":
        rule = json.loads((folder / COMMANDS[command][1][1]).read_text())["metadata"]
        assert (rule["versions"], rule["seed"]) == (results["versions"], results["seed"])
        return results["versions"], results["seed"]
    return results["versions"], results["seeds"]


@pytest.fixture(scope="class")
def two_runs(request, tmp_path_factory, subprocess_env):
    """Run the commands of the test's class twice, in two folders, in two processes with
    different hash seeds."""
    names = request.cls.commands
    runs = []
    for hash_seed in ("1", "2"):
        folder = tmp_path_factory.mktemp(f"{request.cls.__name__}_run{hash_seed}")
        (folder / "space.yaml").write_text(SPACE)
        (folder / "meta.yaml").write_text((REPO / "configs" / "meta_tiny.yaml").read_text())
        (folder / "evolve.yaml").write_text((REPO / "configs" / "evolve_tiny.yaml").read_text())
        (folder / "protocol.yaml").write_text(PROTOCOL)
        (folder / "evaluate.yaml").write_text(EVALUATE)
        (folder / "distill.yaml").write_text(DISTILL)
        argvs = [COMMANDS[name][0] for name in names]
        env = {**subprocess_env, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(argvs),
                               json.dumps(QUICKSTART)], cwd=folder,
                              env=env, capture_output=True, text=True, timeout=1200)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        codes = json.loads((folder / "exit_codes.json").read_text())
        print(dict(zip(names, codes["seconds"], strict=True)))
        assert codes["codes"] == [0] * len(argvs), dict(zip(names, codes["codes"], strict=True))
        runs.append(folder)
    return runs


def pytest_generate_tests(metafunc):
    """`command` runs over the commands of the test's class (those that record a run, for
    `test_results_record_versions_and_seeds`)."""
    if "command" in metafunc.fixturenames:
        names = metafunc.cls.commands
        if metafunc.function.__name__ == "test_results_record_versions_and_seeds":
            names = [name for name in names if name not in NOT_RECORDING]
        metafunc.parametrize("command", sorted(names))


class Commands:
    """The checks of a group of commands (`commands`, run by `two_runs` for the whole class).
    Each group is its own test class, so `--dist loadscope` spreads the groups over workers."""

    commands: tuple[str, ...] = ()

    @pytest.mark.slow
    def test_two_runs_are_bit_identical(self, two_runs, command):
        first, second = two_runs
        for name in COMMANDS[command][1]:
            a, b = comparable(first / name), comparable(second / name)
            assert a == b, f"{command}: {name} differs between two runs"

    @pytest.mark.slow
    def test_results_record_versions_and_seeds(self, two_runs, command):
        versions, seed = _recorded(two_runs[0], command)
        assert {"python", "jax", "jaxlib", "optax", "numpy", "l2o"} <= set(versions), versions
        expected = {"train": 3, "meta-train": 0, "export": 0, "evolve": 0, "distill": 0,
                    "evaluate": [0], "quickstart": [0, 1], "targets": 1, "protocol": 1}  # fmt: skip
        assert seed == expected.get(command, (1, [1])), (command, seed)


class TestTrainEvaluateTune(Commands):
    commands = ("train", "evaluate", "tune-grid", "tune-random", "tune-cmaes", "tune-tpe")


class TestMetaTrainAndEvolve(Commands):
    # each export (and the calibration) reads the run before it
    commands = ("meta-train", "export", "evolve", "calibrate-rule", "export-rule")


class TestProtocol(Commands):
    commands = ("targets", "protocol")  # protocol reads the targets


class TestDistill(Commands):
    commands = ("distill",)


class TestQuickstart(Commands):
    commands = ("quickstart",)

    @pytest.mark.slow
    def test_quickstart_writes_a_report(self, two_runs):
        out = two_runs[0] / "quickstart"
        report = (out / "report.md").read_text()
        assert "| digits_mlp | adam |" in report and "loss_curves.png" in report
        assert "| digits_mlp | celo |" in report and "| rosenbrock | evolved_sgd |" in report
        assert "| mnist1d_mlp | evolved_adamw |" in report
        assert (out / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
        results = json.loads((out / "results.json").read_text())
        assert set(results["runs"]) == {"digits_mlp", "mnist1d_mlp", "rosenbrock"}
        assert set(QUICKSTART) <= {name for name, *_ in quickstart._contenders(5)}
        assert all(set(runs) == set(QUICKSTART) for runs in results["runs"].values())
        assert len(results["runs"]["rosenbrock"]["sgd"]["test_loss"]) == 2


def test_the_groups_cover_every_command_once():
    groups = [cls.commands for cls in Commands.__subclasses__()]
    assert sorted(name for group in groups for name in group) == sorted(COMMANDS)


def test_timing_fields_are_the_only_ones_removed():
    record = {"wall_time_s": 1.0, "timing": {"x": 1}, "final": {"loss": 0.5, "date": "d"}}
    assert without_timing(record) == {"final": {"loss": 0.5}}
