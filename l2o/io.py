"""Files every room writes: atomic output (temp file + rename, so a result lands whole or not at
all), JSON, and TensorBoard scalar event files written without TensorFlow (one per run, appended
to). Every write holds `WRITING`, so that a process ending at once can wait for it."""

from __future__ import annotations

import io
import json
import math
import os
import re
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

WRITING = threading.RLock()
"""Held while a file is written (`l2o.cli.stopping` ends a process only between writes)."""
EVENT_FILE = re.compile(r"events\.out\.tfevents\..*\.l2o")


class UserError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Create directory `path` if needed and check that files can be written in it."""
    try:
        path = Path(path).expanduser().resolve()
        exists = path.exists()
    except (OSError, ValueError, RuntimeError) as e:  # a NUL, a symlink loop, a name too long
        raise UserError(f"output path {str(path)!r} is not a valid path: {e}") from None
    if exists and not path.is_dir():
        raise UserError(f"output path {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"output directory {path} is not writable: {e.strerror}") from None
    return path


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete the temp files of `write_bytes_atomic` that a killed process left in `directory`
    and its subfolders (call it only when no other process writes there); the paths removed."""
    stale = sorted(Path(directory).rglob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temp file in the same directory and `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with WRITING:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.chmod(tmp, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def to_jsonable(obj: Any) -> Any:
    """Arrays to lists, NumPy scalars to Python numbers, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "__array__") and not isinstance(obj, str):
        arr = np.asarray(obj)
        return to_jsonable(arr.tolist()) if arr.ndim else to_jsonable(arr.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented JSON, atomically (NaN/inf are stored as null)."""
    text = json.dumps(to_jsonable(obj), indent=1, allow_nan=False)
    return write_bytes_atomic(path, (text + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file, or UserError naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except OSError as e:  # a folder, a path through a file, a name too long, no permission
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, a NUL in the path
        raise UserError(f"{path} is not valid JSON: {e}") from None


Scalars = Mapping[str, tuple[Sequence[int], Sequence[float]]]


def encode_scalars(
    scalars: Scalars, wall_time: float | None = None, *, header: bool = True
) -> bytes:
    """A TFRecord event stream: `tag -> (steps, values)`; non-finite values are skipped. With
    `header`, it starts with the file-version event that opens an event file."""
    wall_time = time.time() if wall_time is None else wall_time
    buffer = io.BytesIO()
    writer = RecordWriter(buffer)
    if header:
        version = event_pb2.Event(wall_time=wall_time, file_version="brain.Event:2")
        writer.write(version.SerializeToString())
    for tag, (steps, values) in scalars.items():
        for step, value in zip(steps, values, strict=True):
            value = float(value)
            if value != value or value in (float("inf"), float("-inf")):
                continue
            summary = summary_pb2.Summary(
                value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)]
            )
            event = event_pb2.Event(wall_time=wall_time, step=int(step), summary=summary)
            writer.write(event.SerializeToString())
    return buffer.getvalue()


def whole_records(data: bytes) -> int:
    """Bytes of `data`, a TFRecord stream, up to the end of its last whole record (a record:
    8-byte length, 4-byte CRC, the data, 4-byte CRC)."""
    end = 0
    while end + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, end)
        if end + 16 + length > len(data):
            break
        end += 16 + length
    return end


class EventFile:
    """The one TensorBoard event file of a run in `directory` (TensorBoard's `--logdir`): the
    newest l2o event file there, else one made by the first `append`. Opening an existing file
    cuts off a record torn by a killed process, so that appended records stay readable."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        found = sorted(p for p in self.directory.glob("events.out.tfevents.*")
                       if EVENT_FILE.fullmatch(p.name))  # fmt: skip
        self.path = found[-1] if found else None
        if self.path is not None:
            with WRITING, open(self.path, "r+b") as f:
                f.truncate(whole_records(f.read()))

    def append(self, scalars: Scalars) -> Path:
        """Append `scalars` (`tag -> (steps, values)`) to the file, made now if there is none."""
        now = time.time()
        if self.path is None:
            # The nanosecond clock keeps two files written within one second apart.
            name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{time.time_ns()}.l2o"
            self.path = write_bytes_atomic(self.directory / name, encode_scalars(scalars, now))
            return self.path
        with WRITING, open(self.path, "ab") as f:
            f.write(encode_scalars(scalars, now, header=False))
            f.flush()
            os.fsync(f.fileno())
        return self.path


def append_scalars(directory: str | os.PathLike, scalars: Scalars) -> Path:
    """Append `scalars` to the run's event file in `directory` (`EventFile`)."""
    return EventFile(directory).append(scalars)
