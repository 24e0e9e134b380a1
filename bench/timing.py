"""Best-of-n wall-clock timing of compiled JAX calls, alone or interleaved."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax


def best_time(fn, *args, repeats: int) -> float:
    """Best wall-clock seconds of `fn(*args)` over `repeats` calls, after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return min(times)


def interleaved_best(calls: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Best wall-clock seconds of each call (compiled already) over `rounds` rounds of one call
    of each in turn, so that drifting machine load hits all alike."""
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(rounds):
        for label, call in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(call())
            best[label] = min(best[label], time.perf_counter() - t0)
    return best
