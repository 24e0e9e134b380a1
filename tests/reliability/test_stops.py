"""Runs that stop early: SIGINT and SIGTERM end `l2o train` and `l2o evaluate` within a few
seconds with exit code 130 or 143 (never a segfault, never a traceback), even inside a long
compiled call; an evaluation or a quickstart interrupted, or killed, after some pairs resumes to
the uninterrupted result, and a resume under a changed config is refused with the key named."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from l2o.cli import quickstart
from l2o.cli.main import main
from l2o.cli.run_folder import LOCK_FILE
from l2o.cli.stopping import stop_on_signals
from l2o.evaluation import harness

SUITE = {
    "tasks": ["rosenbrock", "quadratic_k100"],
    "optimizers": ["adam", "sgd"],
    "steps": 60,
    "seeds": 2,
    "lr_grid": {"low": 1e-3, "high": 0.1, "num": 3, "extensions": 0},
    "timing_steps": 0,  # no wall-clock measurement: results must match exactly
}
STOP_WITHIN_S = 3.0


def _results(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())
    results.pop("wall_time_s")
    return results


def _report(out: Path) -> list[str]:
    lines = (out / "report.md").read_text().splitlines()
    return [line for line in lines if not line.startswith("Wall time")]


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "suite.yaml"
    path.write_text(yaml.safe_dump(SUITE))
    return path


@pytest.fixture(scope="module")
def whole(suite) -> Path:
    """An uninterrupted evaluation of `suite`."""
    out = suite.parent / "whole"
    assert main(["evaluate", "--config", str(suite), "--out", str(out)]) == 0
    return out


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists() or not path.stat().st_size:
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def _stop(proc: subprocess.Popen, signum: int) -> tuple[int, float, str]:
    """Send `signum`; the exit code, the seconds it took, stderr."""
    start = time.perf_counter()
    proc.send_signal(signum)
    code = proc.wait(timeout=60)
    return code, time.perf_counter() - start, proc.stderr.read()


@pytest.mark.slow
def test_an_interrupted_evaluation_resumes_to_the_uninterrupted_result(
    suite, whole, tmp_path, monkeypatch, capsys
):
    real, calls = harness.evaluate_pair, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(harness, "evaluate_pair", interrupted)
    out = tmp_path / "run"
    argv = ["evaluate", "--config", str(suite), "--out", str(out)]
    assert main(argv) == 130
    assert len(list((out / "pairs").glob("pair_*.json"))) == 2
    assert not (out / "results.json").exists()
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err
    assert main([*argv, "--resume", "--steps", "50"]) == 2
    assert "steps: 60 -> 50" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    assert len(calls) == 3 + 2  # the two saved pairs were not computed again
    assert _results(out) == _results(whole)
    assert _report(out) == _report(whole)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL])
def test_an_evaluation_stopped_by_a_signal_resumes_to_the_uninterrupted_result(
    suite, whole, tmp_path, signum
):
    out = tmp_path / "run"
    argv = ["evaluate", "--config", str(suite), "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "l2o.cli", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for(out / "pairs" / "pair_0000.json", proc)
    code, seconds, err = _stop(proc, signum)
    assert code == (130 if signum == signal.SIGINT else -signal.SIGKILL), err
    assert seconds < STOP_WITHIN_S, seconds
    assert not (out / "results.json").exists(), "the run ended before the signal"
    assert main([*argv, "--resume"]) == 0
    assert _results(out) == _results(whole)
    assert not list(out.rglob("*.tmp"))


TRIALS = ((signal.SIGINT, 0.0), (signal.SIGINT, 2.0), (signal.SIGTERM, 1.0))
"""Signals to `l2o train`, and the seconds after its validation (compiling, then training)."""


@pytest.mark.slow
def test_a_signal_stops_train_promptly_with_its_exit_code(tmp_path):
    runs = []
    for i, _ in enumerate(TRIALS):  # the trials run side by side
        out = tmp_path / f"run{i}"
        argv = [sys.executable, "-m", "l2o.cli", "train", "--task", "digits_mlp", "--optimizer",
                "adam", "--steps", "200000", "--eval-every", "500", "--out", str(out)]  # fmt: skip
        runs.append((out, subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.PIPE, text=True)))  # fmt: skip
    for (signum, delay), (out, proc) in zip(TRIALS, runs, strict=True):
        _wait_for(out / LOCK_FILE, proc)  # validated: compiling, or training after `delay`
        time.sleep(delay)
        code, seconds, err = _stop(proc, signum)
        assert code == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum], err
        assert seconds < STOP_WITHIN_S, seconds
        assert err.strip().splitlines()[-1].startswith("l2o: "), err
        assert "Traceback" not in err and not list(out.glob("*.tmp"))


@pytest.mark.slow
def test_an_interrupted_quickstart_resumes_to_the_uninterrupted_result(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(quickstart, "TASKS", ("rosenbrock",))  # a small quickstart
    contenders = quickstart._contenders
    monkeypatch.setattr(quickstart, "_contenders", lambda steps: contenders(steps)[:3])
    argv = ["quickstart", "--steps", "5", "--seeds", "2"]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    real, calls = quickstart._pair, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(quickstart, "_pair", interrupted)
    out = tmp_path / "run"
    assert main([*argv, "--out", str(out)]) == 130
    assert main([*argv, "--out", str(out), "--resume", "--seeds", "3"]) == 2
    assert "seeds: 2 -> 3" in capsys.readouterr().err
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    assert len(calls) == 2 + 2  # the saved pair was not computed again
    assert _results(out) == _results(tmp_path / "whole")


def test_a_signal_ignored_at_the_start_stays_ignored():
    """A job started in the background by a script ignores SIGINT: a command keeps it so, and
    still catches SIGTERM."""
    sigint, sigterm = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.getsignal(signal.SIGTERM)
    try:
        with stop_on_signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (sigterm, signal.SIG_IGN)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is sigterm
    finally:
        signal.signal(signal.SIGINT, sigint)


EARLY = """
import os, signal, sys
import l2o.cli.__main__ as entry  # sets the first handler
os.kill(os.getpid(), signal.{name})  # a signal while the command's modules would be imported
assert entry.EARLY_SIGNALS == [signal.{name}], entry.EARLY_SIGNALS
entry.run()
"""


@pytest.mark.parametrize(("name", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_before_the_command_starts_ends_it_with_its_exit_code(tmp_path, name, code):
    """The entry point's first handler records a signal that comes while `l2o.cli.stopping` is
    imported; the command then does not start, and exits with the signal's code."""
    out = tmp_path / "out"
    argv = [sys.executable, "-c", EARLY.format(name=name), "train", "--task", "rosenbrock",
            "--optimizer", "sgd", "--steps", "10", "--out", str(out)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"l2o: {'interrupted' if code == 130 else 'terminated'}; no file was left half-written"
    ]
    assert not out.exists()


def test_the_first_handler_keeps_an_ignored_signal_ignored():
    script = (
        "import os, signal\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "import l2o.cli.__main__ as entry\n"
        "assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "assert entry.EARLY_SIGNALS == []\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
