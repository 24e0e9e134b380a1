"""Shared test setup: strict rank promotion, the offline data folder beside the repository, XLA
with fewer LLVM optimizations, a compilation cache for the test process, and SIGINT as from a
terminal."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
from pathlib import Path

# The tests' programs are small and run for a few steps: compiling them costs far more than
# running them. XLA's CPU backend compiles them about twice as fast at LLVM optimization level 1
# as at its default (3), and 1.5 times as fast again with its older elemental emitters instead of
# its fusion emitters; they run at most 1.5 times slower. Without the fusion emitters the suite
# takes about 40% less CPU time (README). Level 0 compiles faster still but runs the evolution
# tests' programs slower than it saves, and rounds differently in the last bit from one program
# to another where tests compare the bits of two (a truncated and a whole run). Set before JAX
# starts its backend, so the commands that tests start inherit it too; the same flags in the
# caller's XLA_FLAGS come last and win.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=1 --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = f"{TEST_XLA_FLAGS} {os.environ.get('XLA_FLAGS', '')}"

import jax  # noqa: E402
import pytest  # noqa: E402

from tasks import classification  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

# The commands that tests start and interrupt get SIGINT as from a terminal, also when the suite
# runs as a background job of a script: such a job starts with SIGINT ignored, and a command
# keeps an ignored signal ignored.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# A persistent compilation cache private to this test process (removed when it exits): a program
# that another test compiled before, the same computation in another jitted function or after the
# per-module `jax.clear_caches()` below, is loaded instead of compiled again. The commands that
# tests start in subprocesses do not inherit it (they compile as a user's run does).
_COMPILATION_CACHE = tempfile.mkdtemp(prefix="l2o-tests-jax-cache-")
atexit.register(shutil.rmtree, _COMPILATION_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _COMPILATION_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
if "L2O_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["L2O_DATA_DIR"] = str(SHARED_DATA)


@pytest.fixture(autouse=True, scope="module")
def _clear_jax_caches_after_module():
    """Free each test module's compiled programs and loaded datasets when it ends: they are
    rarely reused by the next module, and kept they would grow a test process by gigabytes over
    the suite (one module builds every shipped config's tasks)."""
    yield
    jax.clear_caches()
    classification.load_splits.cache_clear()


@pytest.fixture
def tmp_cwd(tmp_path, monkeypatch):
    """Run a test inside an empty temporary directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
