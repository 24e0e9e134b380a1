"""The memory a run asks for, estimated before anything is compiled, and the `--max-memory` check.

A command's runs are made by calls, each training `population` runs at once (vmapped). In bytes:

    device = max over calls of population * (run + 4 * device_values)
    host   = max over calls of 4 * population * device_values + 64 * (sum over calls of kept)

- run: the memory of one training run, `3 * state + gradient`. `state` is the params and the
  optimizer state (`jax.eval_shape` of `tasks.init_state`); three copies: the scan's old and new
  state and the update. `gradient` is the sum of the sizes of every value the traced gradient
  computation makes (`jax.make_jaxpr`, nested calls included): the activations the backward
  pass keeps and the gradient itself, an upper bound since XLA reuses buffers.
- device_values: the numbers (float32) one run of the call returns: its per-step training losses
  and evaluations; `device_get` copies them to the host.
- kept: the numbers the command keeps on the host until it writes its results (curves, at most
  `l2o.evaluation.curves.MAX_CURVE_POINTS` per training curve where they are downsampled), at
  64 bytes each (a NumPy value, and the Python float and JSON text it becomes when written).

On a CPU the device is the host, so the two are added and compared with one limit. Against the
peak resident memory a run added (`resource.getrusage`, compilation included), the estimate for
`digits_mlp` trained with Adam was 1.1x with hidden `[3000, 3000]` and 1.7x with `[4000, 4000]`
(0.11 and 0.20 GB of parameters and Adam state).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from l2o.io import UserError

FLOAT32_BYTES = 4
HOST_BYTES_PER_VALUE = 64
METRICS_PER_EVALUATION = 6
"""Numbers one evaluation returns, at most: loss and accuracy on two splits, the step, one more."""
UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class Call(NamedTuple):
    """One vmapped call of a command: `population` runs of `run_bytes` each, each returning
    `device_values` numbers; `kept_values` numbers of it stay on the host."""

    run_bytes: int
    population: int
    device_values: int
    kept_values: int


class Estimate(NamedTuple):
    """Bytes a command asks for on the device and on the host."""

    device: int
    host: int

    @property
    def total(self) -> int:
        return self.device + self.host


def parse_memory_size(text: str) -> int:
    """`"8G"` -> 8 * 2**30 bytes (units K, M, G, T, powers of 1024, an optional trailing B;
    no unit: bytes); argparse's type for `--max-memory`."""
    value = str(text).strip().upper().removesuffix("B")
    unit = value[-1:] if value[-1:] in UNITS and value[-1:] else ""
    try:
        number = float(value.removesuffix(unit) if unit else value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 8G or 512M") from None
    if not (np.isfinite(number) and number > 0) or number * UNITS[unit] >= 2**63:
        raise argparse.ArgumentTypeError(f"must be a positive size below 8E, got {text!r}")
    return int(number * UNITS[unit])


def physical_memory() -> int:
    """Bytes of physical memory of this machine (`os.sysconf`; 8 GB where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 8 * 2**30


def default_max_memory() -> int:
    """The limit without `--max-memory`: half the physical memory."""
    return physical_memory() // 2


def format_bytes(count: int) -> str:
    """`12884901888` -> `"12.0 GB"` (powers of 1024)."""
    for unit in ("T", "G", "M", "K"):
        if count >= UNITS[unit]:
            return f"{count / UNITS[unit]:.1f} {unit}B"
    return f"{count} B"


def _tree_bytes(tree) -> int:
    import jax

    return sum(int(np.prod(x.shape, dtype=np.int64)) * x.dtype.itemsize
               for x in jax.tree.leaves(tree) if hasattr(x.dtype, "itemsize"))  # fmt: skip


def _values_bytes(jaxpr) -> int:
    """Sum of the sizes of every value the equations of `jaxpr` (and the jaxprs they call) make."""
    total = 0
    for eqn in jaxpr.eqns:
        total += sum(
            int(np.prod(v.aval.shape, dtype=np.int64)) * v.aval.dtype.itemsize
            for v in eqn.outvars
            if hasattr(getattr(v.aval, "dtype", None), "itemsize")
        )
        for param in eqn.params.values():
            for sub in param if isinstance(param, list | tuple) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += _values_bytes(inner)
    return total


def run_bytes(task, optimizers: Sequence, grad_fn=None) -> list[int]:
    """Bytes of one training run of each of `optimizers` on `task`: `3 * state + gradient`
    (module docstring), from traced shapes only: nothing is allocated or compiled."""
    import jax

    from tasks import backprop, init_state

    grad_fn = grad_fn or backprop
    key = jax.random.key(0)
    states = [jax.eval_shape(lambda k, o=o: init_state(task, o, k), key) for o in optimizers]
    params = jax.eval_shape(task.init, key)
    batch = jax.eval_shape(lambda k: task.sample_batch(k, "train"), key)
    gradient = jax.make_jaxpr(lambda p, k, b: grad_fn(task, p, k, b))(params, key, batch)
    return [3 * _tree_bytes(state) + _values_bytes(gradient.jaxpr) for state in states]


def run_values(steps: int, eval_every: int) -> int:
    """Numbers one run of `steps` returns: a loss per step and the evaluations (the first, every
    `eval_every` steps, the last)."""
    evaluations = steps // eval_every + 2 if eval_every > 0 else 0
    return steps + METRICS_PER_EVALUATION * evaluations


def estimate(calls: Sequence[Call]) -> Estimate:
    """The device and host bytes of a command made of `calls` (module docstring)."""
    device = max(c.population * (c.run_bytes + FLOAT32_BYTES * c.device_values) for c in calls)
    copies = max(FLOAT32_BYTES * c.population * c.device_values for c in calls)
    kept = HOST_BYTES_PER_VALUE * sum(c.kept_values for c in calls)
    return Estimate(device, copies + kept)


def check_memory(calls: Sequence[Call], limit: int | None, lower: str) -> Estimate:
    """The estimate of `calls`; a UserError naming it, the limit and `lower` (the settings that
    shrink it) if it is above `limit` (default: `default_max_memory()`)."""
    limit = default_max_memory() if limit is None else limit
    need = estimate(calls)
    if need.total > limit:
        raise UserError(
            f"the run would need about {format_bytes(need.total)} of memory "
            f"({format_bytes(need.device)} for the runs, {format_bytes(need.host)} for results "
            f"on the host), above --max-memory {format_bytes(limit)}; lower {lower}, or raise "
            "--max-memory"
        )
    return need


def add_memory_flag(parser: argparse.ArgumentParser) -> None:
    """`--max-memory SIZE` on a command that trains (default: `default_max_memory()`)."""
    parser.add_argument(
        "--max-memory", type=parse_memory_size, metavar="SIZE",
        default=f"{default_max_memory() // UNITS['M']}M",
        help="refuse a run whose memory estimate is above SIZE (e.g. 8G; units K, M, G, T); "
             "the default is half the physical memory",
    )  # fmt: skip
