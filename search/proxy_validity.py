"""Does the proxy predict held-out results? The rank correlation (Spearman) between the proxy
fitness of a search's final population and the same programs' fitness on a validity suite of
other tasks, so that a proxy's validity is a number rather than a hope."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks `0..n-1` of `x`, ties sharing the mean of their positions."""
    _, inverse, counts = np.unique(np.asarray(x, np.float64), return_inverse=True,
                                   return_counts=True)  # fmt: skip
    first = np.cumsum(counts) - counts
    return (first + (counts - 1) / 2)[inverse]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation `rho = corr(rank(a), rank(b))` (ties averaged); NaN when
    fewer than 3 pairs or either side is constant."""
    if len(a) != len(b):
        raise ValueError(f"spearman needs pairs, got {len(a)} and {len(b)} values")
    if len(a) < 3:
        return float("nan")
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    scale = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
    return float(np.sum(ra * rb) / scale) if scale > 0 else float("nan")


def spread_by_fitness(fitness: Sequence[float], num: int) -> list[int]:
    """Indices of at most `num` members spread evenly over the ranks of `fitness` (best, worst
    and evenly between), so the correlation covers the population's whole range."""
    order = np.argsort(np.asarray(fitness, np.float64), kind="stable")
    if len(order) <= num:
        return [int(i) for i in order]
    picks = np.unique(np.round(np.linspace(0, len(order) - 1, num)).astype(int))
    return [int(order[p]) for p in picks]
