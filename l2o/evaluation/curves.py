"""Per-step training curves kept on the host, downsampled beyond a cap so that memory and results
files stay bounded for any number of steps.

A run of `n` steps keeps at most `MAX_CURVE_POINTS` points: the means of consecutive blocks of
`every = ceil(n / MAX_CURVE_POINTS)` steps (the last block may be shorter). Point `i` covers
steps `i * every + 1 .. (i + 1) * every` (1-based). With `every == 1` (`n <= MAX_CURVE_POINTS`)
the curve is kept as it is, bit for bit. Results record `every` as `train_loss_every`.
"""

from __future__ import annotations

import math

import numpy as np

MAX_CURVE_POINTS = 10_000


def block_size(num_steps: int, max_points: int = MAX_CURVE_POINTS) -> int:
    """Steps averaged into one kept point: 1 up to `max_points` steps."""
    return max(1, math.ceil(num_steps / max_points))


def block_means(values: np.ndarray, every: int) -> np.ndarray:
    """Means of consecutive blocks of `every` values over the last axis (the last block may be
    shorter); `values` itself when `every == 1`. A block holding a NaN or inf is non-finite."""
    values = np.asarray(values)
    if every == 1:
        return values
    full = values.shape[-1] // every * every
    head = values[..., :full].reshape(*values.shape[:-1], -1, every).mean(-1)
    if full == values.shape[-1]:
        return head
    return np.concatenate([head, values[..., full:].mean(-1, keepdims=True)], axis=-1)


def fold_blocks(pending: np.ndarray, new: np.ndarray, every: int) -> tuple[np.ndarray, np.ndarray]:
    """Block means of `pending` followed by `new` (1-D), for a curve arriving in pieces:
    `(means of the whole blocks, the values left over)`. Folding every piece, then taking
    `block_means(left_over, every)`, gives `block_means` of the whole curve."""
    values = np.concatenate([pending, new])
    full = len(values) // every * every
    return block_means(values[:full], every), values[full:]


def block_steps(num_points: int, every: int, num_steps: int) -> np.ndarray:
    """The last step (1-based) each kept point covers: `every, 2 * every, ..., num_steps`."""
    return np.minimum(np.arange(1, num_points + 1) * every, num_steps)
