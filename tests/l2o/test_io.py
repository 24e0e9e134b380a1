"""Atomic writes leave whole files or nothing; JSON output is strict."""

import json
import os

import numpy as np
import pytest

from l2o.io import UserError, check_writable_dir, read_json, write_bytes_atomic, write_json_atomic


def test_json_roundtrip_with_arrays_and_nonfinite_values(tmp_path):
    path = write_json_atomic(
        tmp_path / "r.json", {"a": np.arange(3), "b": float("nan"), "c": np.float32(2.5)}
    )
    assert json.loads(path.read_text()) == {"a": [0, 1, 2], "b": None, "c": 2.5}
    assert read_json(path)["c"] == 2.5


def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "r.json"
    write_json_atomic(target, {"version": 1})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_interrupted_write_leaves_no_temp_file(tmp_path, monkeypatch):
    def boom(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        write_bytes_atomic(tmp_path / "x.bin", b"payload")
    assert list(tmp_path.iterdir()) == []


def test_output_dir_checks(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="not a directory"):
        check_writable_dir(tmp_path / "file")
    with pytest.raises(UserError, match="not writable"):
        check_writable_dir(tmp_path / "file" / "sub")
    assert check_writable_dir(tmp_path / "new" / "dir").is_dir()


def test_read_json_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="bad.json"):
        read_json(bad)
    with pytest.raises(UserError, match="no such file"):
        read_json(tmp_path / "missing.json")
