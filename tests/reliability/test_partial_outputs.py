"""A command that fails while writing (disk full, Ctrl-C) leaves whole files or none: no temporary
file, no half-written results, and one line on stderr instead of a traceback."""

from __future__ import annotations

import errno
import json
import os

import pytest

from l2o.cli.main import main

TRAIN = ["train", "--task", "rosenbrock", "--optimizer", "adam", "--steps", "4"]


def failing_fsync(monkeypatch, error: BaseException, after: int):
    """`os.fsync` that works `after` times, then raises `error`."""
    calls = {"n": 0}
    real = os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > after:
            raise error
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("after", [0, 1])
@pytest.mark.parametrize(
    "error, code, message",
    [(OSError(errno.ENOSPC, "No space left on device"), 1, "No space left on device"),
     (KeyboardInterrupt(), 130, "interrupted")],
)  # fmt: skip
def test_a_failed_write_leaves_whole_files_or_none(
    tmp_path, capsys, monkeypatch, error, code, message, after
):
    out = tmp_path / "run"
    failing_fsync(monkeypatch, error, after)  # the first write (results.json) or the second
    assert main([*TRAIN, "--out", str(out)]) == code
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err and "Traceback" not in err
    files = sorted(p.name for p in out.iterdir())
    assert not [name for name in files if name.endswith(".tmp")], files
    if after == 0:
        assert files == [], files  # nothing was written
    else:
        assert "results.json" in files  # written whole before the failure
        json.loads((out / "results.json").read_text())
        assert not [name for name in files if name.startswith("events")], files
