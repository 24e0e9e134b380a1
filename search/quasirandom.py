"""Quasi-random hyperparameter trials from a scrambled Halton sequence (Bousquet et al. 2017,
"Critical hyper-parameters: no random, no cry"), as AlgoPerf's baselines are tuned."""

from __future__ import annotations

from typing import Any

import numpy as np

from search import spaces
from search.spaces import Space

# Digits kept per coordinate: base**-digits is below float64 resolution, and any point index
# below 2**53 is written exactly, so a longer sequence shares its first points with a shorter one.
_MANTISSA_BITS = 53


def _primes(count: int) -> list[int]:
    """The first `count` primes (the Halton bases, one per dimension)."""
    primes: list[int] = []
    candidate = 2
    while len(primes) < count:
        if all(candidate % p for p in primes if p * p <= candidate):
            primes.append(candidate)
        candidate += 1
    return primes


def _scrambled_radical_inverse(
    index_P: np.ndarray, base: int, permutations_KxB: np.ndarray
) -> np.ndarray:
    """u(i) = sum_j pi_j(a_j(i)) base^-(j+1), a_j(i) the j-th base-`base` digit of i."""
    u_P = np.zeros(index_P.shape, np.float64)
    quotient = index_P.copy()
    weight = 1.0 / base
    for permutation in permutations_KxB:
        u_P += permutation[quotient % base] * weight
        quotient //= base
        weight /= base
    return u_P


def halton(num_points: int, num_dims: int, seed: int | np.random.Generator = 0) -> np.ndarray:
    """The first `num_points` points `[P, D]` in [0, 1) of a scrambled Halton sequence.

    Dimension d uses the d-th prime base b_d and random digit permutations pi_{d,j}, one per digit
    position j (drawn from `np.random.default_rng(seed)`)::

        u_d(i) = sum_j pi_{d,j}(a_{d,j}(i)) b_d^-(j+1),   i = 0, 1, ..., P - 1

    Permuting digits keeps Halton's stratification: for P = b_d^m every 1-D cell
    [k / P, (k + 1) / P) of dimension d holds one point. Same seed, same points; the first
    points and dimensions do not depend on `num_points` or on later dimensions.
    """
    if num_points < 0 or num_dims < 1:
        raise ValueError(f"need num_points >= 0 and num_dims >= 1, got {num_points}, {num_dims}")
    if num_points > 2**_MANTISSA_BITS:
        raise ValueError(f"at most 2**{_MANTISSA_BITS} points, got {num_points}")
    rng = np.random.default_rng(seed)
    index_P = np.arange(num_points, dtype=np.int64)
    columns = []
    for base in _primes(num_dims):
        num_digits = int(np.ceil(_MANTISSA_BITS / np.log2(base)))
        permutations_KxB = np.stack([rng.permutation(base) for _ in range(num_digits)])
        columns.append(_scrambled_radical_inverse(index_P, base, permutations_KxB))
    u_PxD = np.stack(columns, axis=1)
    return np.minimum(u_PxD, np.nextafter(1.0, 0.0))


def quasirandom_trials(
    space: Space, num_trials: int, seed: int | np.random.Generator = 0
) -> list[dict[str, Any]]:
    """`num_trials` hyperparameter settings: Halton points mapped through the space, plus fixed
    values (ints for int dimensions, floats for the other searched ones)."""
    u_PxD = halton(num_trials, len(space.dims), seed)
    searched = spaces.members(space, spaces.from_unit(space, u_PxD))
    return [{**space.fixed, **trial} for trial in searched]


def study_trials(
    space: Space, num_trials: int = 5, num_studies: int = 3, seed: int = 0
) -> list[list[dict[str, Any]]]:
    """AlgoPerf's tuning protocol: `num_studies` independent studies of `num_trials` quasi-random
    trials each, every study scrambled by its own generator spawned from `seed`."""
    if num_studies < 1:
        raise ValueError(f"num_studies must be at least 1, got {num_studies}")
    generators = np.random.default_rng(seed).spawn(num_studies)
    return [quasirandom_trials(space, num_trials, rng) for rng in generators]
