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


@pytest.fixture
def tmp_cwd(tmp_path, monkeypatch):
    """Run a test inside an empty temporary directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
