"""One policy for output folders: a non-empty `--out` is refused (exit 2, one line) unless the run
resumes or overwrites it; `--overwrite` leaves none of the earlier run's files; a folder in use
by a live run is refused with its pid, and a dead run's lock is no obstacle; one TensorBoard event
file per run, appended to across resumes and repaired after a torn append."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from l2o.cli.main import main
from l2o.cli.run_folder import LOCK_FILE
from l2o.io import EventFile

REPO = Path(__file__).resolve().parents[3]
TRAIN = ["train", "--task", "rosenbrock", "--optimizer", "adam", "--steps", "4"]


COMMANDS = ("train", "tune", "evaluate", "meta-train", "evolve", "quickstart")


def _command(name: str, folder: Path) -> list[str]:
    """A tiny command line of command `name` (files it reads made in `folder`), without `--out`."""
    space = folder / "space.yaml"
    space.write_text("learning_rate: {type: log_uniform, low: 1.0e-3, high: 0.1}\n")
    return {
        "train": TRAIN,
        "tune": ["tune", "--optimizer", "sgd", "--task", "rosenbrock", "--space", str(space),
                 "--trials", "2", "--steps", "4", "--reports", "2"],
        "evaluate": ["evaluate", "--tasks", "rosenbrock", "--optimizers", "sgd", "--steps", "4",
                     "--seeds", "1", "--lr-num", "2"],
        "meta-train": ["meta-train", "--config", str(REPO / "configs/meta_tiny.yaml")],
        "evolve": ["evolve", "--config", str(REPO / "configs/evolve_tiny.yaml")],
        "quickstart": ["quickstart", "--steps", "2", "--seeds", "1"],
    }[name]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_a_non_empty_out_is_refused_in_one_line(tmp_path, capsys, command):
    out = tmp_path / "used"
    out.mkdir()
    (out / "results.json").write_text("{}")
    argv = [*_command(command, tmp_path), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "--overwrite" in err[0], err
    assert ("--resume" in err[0]) == (command != "train"), err
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]  # untouched


def test_overwrite_leaves_no_stale_files_and_spares_foreign_ones(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    first = {p.name for p in out.iterdir() if not p.name.startswith("events")}
    stale = ["lr_sensitivity.png", "report.md", "events.out.tfevents.1.host.1.l2o",
             ".results.json.x1.tmp", "ckpt_00000002.npz"]  # fmt: skip
    for name in stale:
        (out / name).write_text("from an earlier run")
    (out / "pairs").mkdir()
    (out / "pairs" / "pair_0000.json").write_text("{}")
    assert main([*TRAIN, "--out", str(out), "--overwrite"]) == 0
    after = {p.name for p in out.iterdir()}
    assert {n for n in after if not n.startswith("events")} == first, after
    assert len(list(out.glob("events.out.tfevents.*"))) == 1, after
    assert json.loads((out / "results.json").read_text())["command"] == "train"

    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main([*TRAIN, "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "notes.txt" in err and len(err.strip().splitlines()) == 1
    assert {p.name for p in out.iterdir()} == after | {"notes.txt"}  # nothing deleted


@pytest.mark.slow
def test_a_second_run_on_a_live_runs_folder_is_refused_with_its_pid(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "l2o.cli", "train", "--task", "digits_mlp", "--optimizer",
            "adam", "--steps", "200000", "--out", str(out)]  # fmt: skip
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / LOCK_FILE).exists() or not (out / LOCK_FILE).read_text().strip():
            assert first.poll() is None and time.time() < deadline, first.stderr.read()
            time.sleep(0.05)
        assert (out / LOCK_FILE).read_text().strip() == str(first.pid)
        before = sorted(p.name for p in out.iterdir())
        assert main([*TRAIN, "--out", str(out), "--overwrite"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"pid {first.pid}" in err[0] and str(out) in err[0], err
        assert sorted(p.name for p in out.iterdir()) == before  # nothing deleted
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The dead run's lock file stays but holds no lock: the folder can be taken over.
    assert (out / LOCK_FILE).exists()
    assert main([*TRAIN, "--out", str(out), "--overwrite"]) == 0
    assert not (out / LOCK_FILE).exists()  # deleted by the run that ended normally


def _scalars(path: Path) -> list[tuple[str, int]]:
    """`(tag, step)` of every scalar in an event file, as TensorBoard reads them."""
    out = []
    for event in EventFileLoader(str(path)).Load():
        out += [(v.tag, event.step) for v in event.summary.value]
    return out


@pytest.mark.slow
def test_one_event_file_per_meta_training_run_across_a_resume(tmp_path):
    config = REPO / "configs" / "meta_tiny.yaml"
    out = tmp_path / "meta"
    assert main(["meta-train", "--config", str(config), "--out", str(out), "--steps", "2"]) == 0
    assert main(["meta-train", "--config", str(config), "--out", str(out), "--steps", "4",
                 "--resume"]) == 0  # fmt: skip
    (events,) = out.glob("events.out.tfevents.*")  # 2 checkpoints, 2 processes: one file
    steps = sorted(step for tag, step in _scalars(events) if tag == "meta_loss")
    assert steps == list(range(1, 5))


def test_an_event_file_torn_by_a_kill_is_cut_back_before_appending(tmp_path):
    first = EventFile(tmp_path).append({"loss": ([1, 2], [0.5, 0.25])})
    whole = first.read_bytes()
    first.write_bytes(whole + whole[:30])  # an append cut short by a kill
    assert EventFile(tmp_path).append({"loss": ([3], [0.125])}) == first
    assert _scalars(first) == [("loss", 1), ("loss", 2), ("loss", 3)]
    assert list(tmp_path.iterdir()) == [first]
