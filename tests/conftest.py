"""Shared test setup: strict rank promotion, and the offline data folder beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
if "L2O_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["L2O_DATA_DIR"] = str(SHARED_DATA)


@pytest.fixture(autouse=True, scope="module")
def _clear_jax_caches_after_module():
    """Free each test module's compiled programs when it ends: they are rarely reused by the next
    module, and kept they would grow a test process by gigabytes over the suite."""
    yield
    jax.clear_caches()


@pytest.fixture
def tmp_cwd(tmp_path, monkeypatch):
    """Run a test inside an empty temporary directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
