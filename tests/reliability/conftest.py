"""Shared setup of the reliability tests: the repository's paths, a persistent JAX compilation
cache for the subprocesses of the determinism and crash-resume tests (one per test session), and
the hypothesis settings and per-case time limit of the fuzz tests."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
FUZZ_CASES = 1000
SECONDS_PER_CASE = 10


@pytest.fixture(scope="session")
def subprocess_env(tmp_path_factory) -> dict[str, str]:
    """Environment of `l2o` subprocesses: a compilation cache shared by the session's runs
    (the second run of a command loads its programs instead of compiling them again)."""
    cache = tmp_path_factory.mktemp("jax_cache")
    return {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def fuzz() -> settings:
    """Settings of every fuzz test (`@fuzz` on its hypothesis function): FUZZ_CASES cases,
    derandomized and without an example database, so each run sees the same cases; no deadline
    and no tracing "explain" phase."""
    return settings(
        max_examples=FUZZ_CASES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )


class CaseTimeout(BaseException):
    """A single case ran too long (a BaseException, so no `except Exception` swallows it)."""


@pytest.fixture
def time_limit():
    """`with time_limit(): ...` fails the test if the block runs longer than SECONDS_PER_CASE."""

    def alarm(signum, frame):
        raise CaseTimeout(f"a case ran longer than {SECONDS_PER_CASE} s")

    previous = signal.signal(signal.SIGALRM, alarm)

    class Limit:
        def __enter__(self):
            signal.setitimer(signal.ITIMER_REAL, SECONDS_PER_CASE)

        def __exit__(self, *exc):
            signal.setitimer(signal.ITIMER_REAL, 0)

    yield Limit
    signal.signal(signal.SIGALRM, previous)
