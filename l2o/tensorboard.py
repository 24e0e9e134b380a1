"""TensorBoard scalar event files written without TensorFlow, atomically."""

from __future__ import annotations

import io
import os
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from l2o.io import write_bytes_atomic

Scalars = Mapping[str, tuple[Sequence[int], Sequence[float]]]


def encode_scalars(scalars: Scalars, wall_time: float | None = None) -> bytes:
    """A TFRecord event stream: `tag -> (steps, values)`; non-finite values are skipped."""
    wall_time = time.time() if wall_time is None else wall_time
    buffer = io.BytesIO()
    writer = RecordWriter(buffer)
    writer.write(
        event_pb2.Event(wall_time=wall_time, file_version="brain.Event:2").SerializeToString()
    )
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


def write_scalars(directory: str | os.PathLike, scalars: Scalars) -> Path:
    """Write one event file of `scalars` into `directory` (TensorBoard's `--logdir`)."""
    now = time.time()
    # The nanosecond clock keeps two files written within one second apart.
    name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{time.time_ns()}.l2o"
    return write_bytes_atomic(Path(directory) / name, encode_scalars(scalars, now))
