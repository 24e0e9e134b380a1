"""SIGKILL at random moments, then `--resume`: `l2o meta-train` ends with the same theta,
`l2o tune --method tpe` with the same trials and best hyperparameters, and `l2o evolve` with the
same best rule and evolution history, bit for bit, as a run that was never interrupted, in every
trial. The moments are drawn from a seeded generator:
some trials kill the moment a temporary file appears (a checkpoint, metrics, results or rule
file being written) or the run's events file grows (an append being synced), the others after a
delay spread over the whole run. Ten trials per command with `L2O_FULL_TRIALS=1`; by default
four (three for tuning) of those ten, with every kind of kill moment among them (`QUICK`). The
commands run under a small harness that only slows `os.fsync` (and, for tuning, each validation
report) by a few milliseconds, so that writes and trials last long enough to be hit. The other
tuning methods run in one go and refuse `--resume`; grid, random and CMA-ES are covered by
test_determinism.py.

A torn or corrupt newest checkpoint (truncated, or an array changed under its checksum) is
skipped, by checksum, for the one before, by both `--resume` and `l2o export`.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from l2o.meta import checkpoint

REPO = Path(__file__).resolve().parents[2]
FULL_TRIALS = os.environ.get("L2O_FULL_TRIALS") == "1"
TRIALS = 10
# The trials run by default (indices into the ten seeded moments of `triggers`): each kind of
# write hit once, and one or two moments between writes.
QUICK = {
    "meta": (0, 1, 2, 4),  # a checkpoint, the metrics file, an events append; 1 between
    "tune": (0, 4, 5),  # a journal append; 2 between
    "evolve": (0, 2, 3, 4),  # a checkpoint, evolution.json, best_rule.json; 1 between
}
META_STEPS = 20
TUNE_TRIALS = 10
HARNESS = """
import os, sys, time
fsync = os.fsync

def slow_fsync(fd):  # a write in progress lasts long enough to be hit by a kill
    time.sleep(0.02)
    fsync(fd)

os.fsync = slow_fsync
if sys.argv[1] == "tune":
    from optuna.trial import Trial
    report = Trial.report

    def slow_report(self, value, step):
        time.sleep(0.02)
        return report(self, value, step)

    Trial.report = slow_report
from l2o.cli.main import main
sys.exit(main(sys.argv[1:]))
"""
SPACE = "learning_rate: {type: log_uniform, low: 1.0e-3, high: 1.0}\n"
EVOLVE_GENERATIONS = 8
TIMING_KEYS = {"wall_time_s", "timing"}


def meta_argv(folder: Path, out: Path) -> list[str]:
    return ["meta-train", "--config", str(folder / "meta.yaml"), "--out", str(out)]


def evolve_argv(folder: Path, out: Path) -> list[str]:
    return ["evolve", "--config", str(folder / "evolve.yaml"), "--out", str(out)]


def tune_argv(folder: Path, out: Path) -> list[str]:
    return ["tune", "--optimizer", "sgd", "--task", "quadratic_k100", "--space",
            str(folder / "space.yaml"), "--method", "tpe", "--trials", str(TUNE_TRIALS),
            "--steps", "40", "--reports", "4", "--seed", "2", "--out", str(out)]  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    config = yaml.safe_load((REPO / "configs" / "meta_tiny.yaml").read_text())
    config["outer"]["steps"] = META_STEPS
    (folder / "meta.yaml").write_text(yaml.safe_dump(config))
    (folder / "space.yaml").write_text(SPACE)
    # The tiny evolution (the programs test_determinism.py compiles too), a checkpoint every
    # generation and the funnel mid-run.
    evolve = yaml.safe_load((REPO / "configs" / "evolve_tiny.yaml").read_text())
    evolve.update(generations=EVOLVE_GENERATIONS, checkpoint_every=1)
    evolve["funnel"]["every"] = EVOLVE_GENERATIONS // 2
    (folder / "evolve.yaml").write_text(yaml.safe_dump(evolve))
    return folder


def start(argv: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HARNESS, *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip


def run(argv: list[str], env: dict) -> str:
    """Run the command to completion under the harness; its stderr."""
    done = subprocess.run([sys.executable, "-c", HARNESS, *argv], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def kill_when(proc: subprocess.Popen, out: Path, trigger) -> str:
    """SIGKILL `proc` once `trigger(elapsed, out)` holds; what the kill interrupted."""
    t0 = time.perf_counter()
    try:
        while proc.poll() is None:
            reason = trigger(time.perf_counter() - t0, out)
            if reason:
                os.kill(proc.pid, signal.SIGKILL)
                return reason
            time.sleep(0.001)
        return "finished before the kill"
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


def temp_file_trigger(prefix: str, k: int):
    """Kill at the k-th temporary file of `prefix` seen in `out` (that file being written)."""
    seen: set[str] = set()

    def trigger(elapsed, out):
        if out.is_dir():
            seen.update(e.name for e in os.scandir(out)
                        if e.name.startswith(f".{prefix}") and e.name.endswith(".tmp"))  # fmt: skip
        return f"while writing {prefix}... ({k})" if len(seen) >= k else None

    return trigger


def progress_trigger(count, j: int, seconds: float, what: str):
    """Kill `seconds` after `count(out)` first reaches `j` (a moment between two writes)."""
    state = {"since": None, "last": -1}

    def trigger(elapsed, out):
        n = count(out) if out.is_dir() else -1
        if state["since"] is None and n >= j:
            state["since"] = elapsed
        return (f"{seconds:.3f} s after {what} {j}"
                if state["since"] is not None and elapsed - state["since"] >= seconds
                else None)  # fmt: skip

    return trigger


def event_appends():
    """`count(out)`: the saves seen so far in the run's one events file (each save appends to it
    or makes it: its size changes)."""
    state = {"size": 0, "saves": 0}

    def count(out: Path) -> int:
        size = sum(e.stat().st_size for e in os.scandir(out) if e.name.startswith("events.out"))
        if size != state["size"]:
            state["size"], state["saves"] = size, state["saves"] + 1
        return state["saves"]

    return count


def save_times(reference: Path) -> list[float]:
    """When each save of a finished run happened: a save writes its events with one wall time."""
    (events,) = reference.glob("events.out*")
    return sorted({event.wall_time for event in EventFileLoader(str(events)).Load()})


def journal_writes():
    state = {"size": 0, "writes": 0}

    def count(out: Path) -> int:
        path = out / "study.journal"
        size = path.stat().st_size if path.exists() else 0
        if size != state["size"]:
            state["size"], state["writes"] = size, state["writes"] + 1
        return state["writes"]

    return count


def median_gap(times: list[float]) -> float:
    return float(np.median(np.diff(sorted(times)))) if len(times) > 1 else 0.1


def triggers(kind: str, reference: Path) -> list:
    """The seeded kill moments (`QUICK[kind]` of the ten unless `L2O_FULL_TRIALS=1`)."""
    moments = ten_triggers(kind, reference)
    return moments if FULL_TRIALS else [moments[i] for i in QUICK[kind]]


def ten_triggers(kind: str, reference: Path) -> list:
    """Ten seeded kill moments: four while a file is being written (a checkpoint, metrics or
    events file; a journal line), six at random moments between two writes, over the whole run."""
    rng = random.Random(f"{kind}-kill-moments")
    out = []
    if kind == "meta":
        saves = save_times(reference)
        gap = median_gap(saves)
        for prefix in ["ckpt_", "meta_metrics", "events", "ckpt_"]:
            k = rng.randint(1, len(saves) - 1)
            out.append(progress_trigger(event_appends(), k + 1, 0, "events append")
                       if prefix == "events" else temp_file_trigger(prefix, k))  # fmt: skip
        for _ in range(TRIALS - len(out)):
            j = rng.randint(0, len(saves) - 2)  # not after the last save: the run may end
            out.append(progress_trigger(event_appends(), j, rng.uniform(0, gap), "save"))
        return out
    if kind == "evolve":  # one events file per checkpoint
        saves = save_times(reference)
        gap = median_gap(saves)
        for k in sorted(rng.sample(range(1, len(saves)), 2)):
            out.append(temp_file_trigger("evolve_", k))
        out += [temp_file_trigger("evolution.json", 1), temp_file_trigger("rule-", 1)]
        for _ in range(TRIALS - len(out)):
            j = rng.randint(0, len(saves) - 2)  # not after the last save: the run may end
            out.append(progress_trigger(event_appends(), j, rng.uniform(0, gap), "save"))
        return out
    writes = len((reference / "study.journal").read_text().splitlines())
    for _ in range(4):  # the moment a journal line is appended
        out.append(progress_trigger(journal_writes(), rng.randint(2, writes - 2), 0, "write"))
    seconds = float(json.loads((reference / "study.json").read_text())["timing"]["wall_time_s"])
    gap = seconds / writes
    for _ in range(TRIALS - len(out)):  # in the first half, so the kill lands before the end
        j = rng.randint(1, writes // 2)
        out.append(progress_trigger(journal_writes(), j, rng.uniform(0, gap * writes / 8), "write"))
    return out


def theta_of(out: Path) -> dict[str, bytes]:
    final = checkpoint.list_checkpoints(out)[-1]
    with np.load(final, allow_pickle=False) as f:
        arrays = {k: f[k].tobytes() for k in f.files if k != "__metadata__"}
    data = (out / "optimizer.safetensors").read_bytes()
    (n,) = np.frombuffer(data[:8], "<u8")
    arrays["optimizer.safetensors"] = data[8 + int(n) :]
    results = json.loads((out / "results.json").read_text())
    results.pop("wall_time_s")
    arrays["results.json"] = json.dumps(results, sort_keys=True).encode()
    return {"checkpoint": final.name, **arrays}


def evolve_outcome(out: Path) -> dict:
    """The best rule file, and evolution.json without its timing fields."""
    evolution = json.loads((out / "evolution.json").read_text())
    generations = [row["generation"] for row in evolution["timing"]]
    assert generations == list(range(EVOLVE_GENERATIONS + 1)), generations
    return {
        "best_rule.json": (out / "best_rule.json").read_bytes(),
        "evolution.json": {k: v for k, v in evolution.items() if k not in TIMING_KEYS},
    }


def tune_outcome(out: Path) -> dict:
    study = json.loads((out / "study.json").read_text())
    finished = [(t["params"], t["value"], t["state"]) for t in study["trials"]
                if t["state"] in ("complete", "pruned")]  # fmt: skip
    return {"best": (study["best_params"], study["best_value"]), "finished": finished}


@pytest.fixture(scope="module")
def meta_reference(tmp_path_factory, inputs, subprocess_env) -> Path:
    """An uninterrupted meta-training run."""
    reference = tmp_path_factory.mktemp("meta") / "reference"
    run(meta_argv(inputs, reference), subprocess_env)
    assert theta_of(reference)["checkpoint"] == f"ckpt_{META_STEPS:08d}.npz"
    return reference


@pytest.mark.slow
def test_meta_train_resumes_bit_identically_after_kills(
    tmp_path, inputs, subprocess_env, meta_reference
):
    reference = meta_reference
    expected = theta_of(reference)
    interrupted = []
    for i, trigger in enumerate(triggers("meta", reference)):
        out = tmp_path / f"trial{i}"
        proc = start(meta_argv(inputs, out), subprocess_env)
        interrupted.append(kill_when(proc, out, trigger))
        run([*meta_argv(inputs, out), "--resume"], subprocess_env)
        assert theta_of(out) == expected, f"trial {i} ({interrupted[-1]}) differs"
        assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp")), interrupted[-1]
    killed = [r for r in interrupted if r != "finished before the kill"]
    assert len(killed) == (TRIALS if FULL_TRIALS else len(QUICK["meta"])), interrupted
    assert sum(r.startswith("while writing ckpt_") for r in killed) == 1 + FULL_TRIALS, interrupted


@pytest.mark.slow
def test_tpe_study_resumes_bit_identically_after_kills(tmp_path, inputs, subprocess_env):
    reference = tmp_path / "reference"
    run(tune_argv(inputs, reference), subprocess_env)
    expected = tune_outcome(reference)
    assert len(expected["finished"]) == TUNE_TRIALS
    interrupted = []
    for i, trigger in enumerate(triggers("tune", reference)):
        out = tmp_path / f"trial{i}"
        proc = start(tune_argv(inputs, out), subprocess_env)
        interrupted.append(kill_when(proc, out, trigger))
        stderr = run([*tune_argv(inputs, out), "--resume"], subprocess_env)
        assert tune_outcome(out) == expected, f"trial {i} ({interrupted[-1]}) differs"
        assert "lock" not in stderr, stderr  # no wait for the lock the killed process held
        assert not list(out.glob(".*.tmp")), interrupted[-1]
    assert all(r != "finished before the kill" for r in interrupted), interrupted


def _evolve_trial(i: int, trigger, inputs: Path, out: Path, env: dict) -> tuple[str, dict]:
    """Kill a run of `l2o evolve` at `trigger`, resume it; (what the kill hit, the outcome)."""
    interrupted = kill_when(start(evolve_argv(inputs, out), env), out, trigger)
    run([*evolve_argv(inputs, out), "--resume"], env)
    assert not list(out.glob(".*.tmp")), (i, interrupted)
    return interrupted, evolve_outcome(out)


@pytest.mark.slow
def test_evolve_resumes_bit_identically_after_kills(tmp_path, inputs, subprocess_env):
    reference = tmp_path / "reference"
    run(evolve_argv(inputs, reference), subprocess_env)
    expected = evolve_outcome(reference)
    assert len(expected["evolution.json"]["history"]) == EVOLVE_GENERATIONS + 1
    # Two trials at a time (each process is mostly single-threaded tracing); the kills are
    # placed by the files each run writes, not by the clock alone.
    with ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(_evolve_trial, i, trigger, inputs, tmp_path / f"trial{i}", subprocess_env)
            for i, trigger in enumerate(triggers("evolve", reference))
        ]
        results = [f.result() for f in futures]
    interrupted = [r for r, _ in results]
    for i, (reason, outcome) in enumerate(results):
        assert outcome == expected, f"trial {i} ({reason}) differs"
    assert all(r != "finished before the kill" for r in interrupted), interrupted
    assert sum(r.startswith("while writing") for r in interrupted) == 3 + FULL_TRIALS, interrupted
    assert sum(r.startswith("while writing evolve_") for r in interrupted) == 1 + FULL_TRIALS, (
        interrupted
    )


def _rewrite_with_old_checksum(path: Path) -> None:
    """Change one array of a checkpoint but keep its recorded sha256 (a silent corruption that
    the zip format itself does not notice)."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    name = next(k for k in arrays if k != "__metadata__" and arrays[k].dtype.kind == "f")
    arrays[name] = arrays[name] + np.ones_like(arrays[name])
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "checksum"])
def test_a_torn_newest_checkpoint_falls_back_to_the_previous(
    tmp_path, inputs, subprocess_env, meta_reference, damage
):
    expected = theta_of(meta_reference)
    out = tmp_path / "damaged"
    shutil.copytree(meta_reference, out)
    newest = checkpoint.list_checkpoints(out)[-1]
    if damage == "truncated":
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    else:
        _rewrite_with_old_checksum(newest)
    (out / "optimizer.safetensors").unlink()
    # `export` takes the newest checkpoint that loads: the one before.
    exported = tmp_path / "exported.safetensors"
    done = subprocess.run([sys.executable, "-m", "l2o.cli", "export", str(out), "--out",
                           str(exported)], env=subprocess_env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"outer step {META_STEPS - 2}" in done.stdout
    # `--resume` skips it (saying why), redoes the last steps and ends where the reference did.
    resumed = subprocess.run([sys.executable, "-c", HARNESS, *meta_argv(inputs, out),
                              "--resume"], env=subprocess_env, capture_output=True, text=True,
                             timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    reason = "unreadable checkpoint" if damage == "truncated" else "checksum mismatch"
    assert "skipped a checkpoint" in resumed.stdout and reason in resumed.stdout
    assert theta_of(out) == expected
