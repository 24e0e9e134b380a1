"""`l2o tune`: study.json, one-line errors with exit code 2, and a killed TPE study that resumes."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from l2o.cli.tune import JOURNAL, METHODS, STUDY_NAME, read_space, run_tune_command
from l2o.io import UserError
from tasks import UnknownNameError

REPO = Path(__file__).resolve().parents[3]
LR_SPACE = "learning_rate: {type: log_uniform, low: 1.0e-3, high: 1.0}\n"


def _main(argv: list[str]) -> int:
    """The `l2o tune` flags and error handling of `l2o.cli.main`, for these tests."""
    p = argparse.ArgumentParser(prog="l2o tune")
    p.add_argument("--optimizer", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--space", required=True)
    p.add_argument("--method", default="tpe")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reports", type=int, default=9)
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    try:
        return run_tune_command(
            optimizer_name=args.optimizer, task_name=args.task, space_path=Path(args.space),
            method=args.method, trials=args.trials, steps=args.steps, seeds=args.seeds,
            seed=args.seed, reports=args.reports, out=Path(args.out), resume=args.resume,
        )  # fmt: skip
    except (UserError, UnknownNameError) as e:
        print(f"l2o: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


@pytest.fixture
def lr_space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(LR_SPACE)
    return path


def test_tune_prints_the_best_and_writes_study_json(tmp_path, lr_space, capsys):
    out = tmp_path / "study"
    argv = ["--optimizer", "sgd", "--task", "quadratic_k100", "--space", str(lr_space),
            "--method", "random", "--trials", "8", "--steps", "30", "--seeds", "2",
            "--out", str(out)]  # fmt: skip
    assert _main(argv) == 0
    stdout = capsys.readouterr().out
    study = json.loads((out / "study.json").read_text())
    assert f"learning_rate={study['best_params']['learning_rate']:.4g}" in stdout
    assert study["status"] == "ok" and study["counts"] == {"complete": 8}
    assert study["config"]["seeds"] == [0, 1] and study["config"]["method"] == "random"
    values = [t["value"] for t in study["trials"]]
    assert study["best_value"] == min(values) and len(values) == 8
    assert not (out / JOURNAL).exists()  # only TPE keeps a study file


@pytest.mark.parametrize("name, optimizer", [("adam_lr", "adam"), ("adam_full", "adam"),
                                             ("sgd_lr", "sgd")])  # fmt: skip
def test_shipped_spaces_parse(name, optimizer):
    from baselines import optimizer_hparams

    spec, space = read_space(
        REPO / "configs" / "spaces" / f"{name}.yaml", optimizer_hparams(optimizer)
    )
    assert "learning_rate" in space.names and spec


BAD_LOW = "learning_rate: {type: log_uniform, low: abc, high: 1}\n"
BAD_TYPE = "learning_rate: {type: loguniform, low: 0.1, high: 1}\n"
NOT_SGD = "b1: {type: uniform, low: 0.5, high: 0.9}\n"


@pytest.mark.parametrize(
    "optimizer, task, space_text, extra, message",
    [
        ("adamm", "quadratic_k100", LR_SPACE, [], "valid optimizers"),
        ("sgd", "no_such_task", LR_SPACE, [], "valid tasks"),
        ("sgd", "rosenbrock", "learning_rate: {type: log_uniform", [], "malformed YAML at line 1"),
        ("sgd", "rosenbrock", LR_SPACE.replace("}", ", step: 2}"), [], "unknown key 'step'"),
        ("sgd", "rosenbrock", NOT_SGD, [], "b1: not a hyperparameter"),
        ("sgd", "rosenbrock", BAD_LOW, [], "learning_rate: low must be a number"),
        ("sgd", "rosenbrock", BAD_TYPE, [], "unknown type 'loguniform'"),
        ("sgd", "rosenbrock", "- learning_rate\n", [], "mapping"),
        ("sgd", "rosenbrock", "", [], "is empty"),
        ("sgd", "rosenbrock", LR_SPACE, ["--method", "hyperopt"], "valid methods: tpe"),
        ("sgd", "rosenbrock", LR_SPACE, ["--method", "grid", "--resume"], "--resume"),
        ("sgd", "rosenbrock", LR_SPACE, ["--reports", "50", "--steps", "10"], "--reports 50"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    tmp_path, capsys, optimizer, task, space_text, extra, message
):
    space = tmp_path / "space.yaml"
    space.write_text(space_text)
    out = tmp_path / "never"
    argv = ["--optimizer", optimizer, "--task", task, "--space", str(space), "--out", str(out)]
    assert _main(argv + extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("l2o: error:")
    assert not out.exists()  # validated before any work


def test_a_missing_space_file_or_a_study_without_resume_is_refused(tmp_path, lr_space, capsys):
    argv = ["--optimizer", "sgd", "--task", "rosenbrock", "--out", str(tmp_path / "o")]
    assert _main(argv + ["--space", str(tmp_path / "nope.yaml")]) == 2
    assert "no such space file" in capsys.readouterr().err
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / JOURNAL).write_text("{}\n")
    assert _main(argv + ["--space", str(lr_space)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert set(METHODS) == {"tpe", "random", "grid", "cmaes"}


_KILLED_RUN = """
import sys, time
from pathlib import Path
from optuna.trial import Trial
report = Trial.report

def slow_report(self, value, step):  # slow enough to be killed in the middle of a trial
    time.sleep(0.05)
    return report(self, value, step)

Trial.report = slow_report
from l2o.cli.tune import run_tune_command
sys.exit(run_tune_command(
    optimizer_name="sgd", task_name="quadratic_k100", space_path=Path(sys.argv[1]), method="tpe",
    trials=12, steps=40, reports=4, seeds=1, seed=0, out=Path(sys.argv[2]), resume=True,
))
"""


def _stored_trials(journal: Path) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    try:
        return optuna.load_study(study_name=STUDY_NAME, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return []


@pytest.mark.slow
def test_a_killed_tpe_study_resumes_to_the_requested_count(tmp_path, lr_space, capsys):
    out = tmp_path / "study"
    script = tmp_path / "run.py"
    script.write_text(_KILLED_RUN)
    log = open(tmp_path / "child.log", "w")
    child = subprocess.Popen([sys.executable, str(script), str(lr_space), str(out)],
                             stdout=subprocess.DEVNULL, stderr=log, cwd=tmp_path)  # fmt: skip
    journal = out / JOURNAL
    deadline = time.monotonic() + 120
    try:
        while True:
            assert child.poll() is None, f"the run ended before it was killed: {child.returncode}"
            assert time.monotonic() < deadline, "no trials were stored in time"
            stored = _stored_trials(journal) if journal.exists() else []
            finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in stored)
            # Kill while a trial trains (its values drawn), not while TPE is still drawing them.
            if finished >= 3 and any(t.state == TrialState.RUNNING and t.params for t in stored):
                break
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        log.close()
    before = {t.number: t for t in _stored_trials(journal)}
    running = [n for n, t in before.items() if t.state == TrialState.RUNNING]
    kept = {n: t for n, t in before.items() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    assert 3 <= len(kept) < 12  # almost always with one trial RUNNING (the in-process test
    # in tests/search covers that case deterministically)

    argv = ["--optimizer", "sgd", "--task", "quadratic_k100", "--space", str(lr_space),
            "--method", "tpe", "--trials", "12", "--steps", "40", "--reports", "4",
            "--out", str(out), "--resume"]  # fmt: skip
    assert _main(argv) == 0, capsys.readouterr().err
    after = {t.number: t for t in _stored_trials(journal)}
    finished = [t for t in after.values() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 12  # exactly the requested number
    for n, t in kept.items():  # the earlier trials are kept as they were
        assert (after[n].state, after[n].params, after[n].value) == (t.state, t.params, t.value)
    for n in running:  # a trial killed mid-run is failed and run again with the same values
        assert after[n].state == TrialState.FAIL
        if before[n].params:  # (unless killed while TPE was still drawing them)
            assert any(t.params == before[n].params for t in finished if t.number > max(before))
    study = json.loads((out / "study.json").read_text())
    counts = study["counts"]
    assert counts.get("complete", 0) + counts.get("pruned", 0) == 12
    assert counts.get("fail", 0) == len(running)
    # Resuming with other settings is refused before any work.
    assert _main([a if a != "40" else "41" for a in argv]) == 2
    assert "(num_steps differ)" in capsys.readouterr().err
