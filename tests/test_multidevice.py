"""Sharded over 4 host CPU devices, every population and the data-parallel inner loop give the
single-device results. The device count is fixed when JAX starts, so the runs happen in a
subprocess (`tests/multidevice_runs.py`) started with `--xla_force_host_platform_device_count=4`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent / "multidevice_runs.py"
TIMEOUT_S = 600  # generous: the machine may be shared; a hang is killed by subprocess.run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("multidevice") / "runs.npz"
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    env = {**os.environ, "XLA_FLAGS": flags}
    # -P: the script's folder (tests/, whose tests/tasks would shadow the package) is not on
    # sys.path.
    done = subprocess.run([sys.executable, "-P", str(SCRIPT), str(out)], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


def _pair(runs, name):
    return runs[f"{name}/4"], runs[f"{name}/1"]


@pytest.mark.slow
def test_the_subprocess_saw_four_devices(runs):
    assert int(runs["devices"]) == 4


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "sweep_train_loss",
        "sweep_valid_loss",
        "programs_train_loss",
        "programs_valid_loss",
        "pes_meta_loss",
        "pes_theta",
    ],
)
def test_sharded_populations_are_bit_identical(runs, name):
    """Sweeps, program populations and PES (padded: 6 runs, 5 programs, 6 particles on 4)."""
    four, one = _pair(runs, name)
    assert four.shape == one.shape and np.isfinite(one).all()
    np.testing.assert_array_equal(four, one)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tbptt_meta_loss", "tbptt_theta"])
def test_truncated_backprop_through_sharded_tasks_agrees(runs, name):
    """Gradients through `shard_map` (one task per device vs three on one) round differently."""
    four, one = _pair(runs, name)
    np.testing.assert_allclose(four, one, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_sweep_members_and_seeds_really_differ(runs):
    losses = runs["sweep_train_loss/1"]  # [3 learning rates, 2 seeds, 30 steps]
    assert losses.shape == (3, 2, 30)
    assert not np.allclose(losses[0], losses[2]) and not np.allclose(losses[:, 0], losses[:, 1])


@pytest.mark.slow
def test_data_parallel_batch_gives_the_single_device_loss_curve(runs):
    single = runs["data_parallel_train_loss/1"]
    sharded = runs["data_parallel_train_loss/4"]
    assert sharded.shape == (40,) and sharded[-1] < 0.5 * sharded[0]
    np.testing.assert_allclose(sharded, single, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(
        runs["data_parallel_test_loss/4"], runs["data_parallel_test_loss/1"], rtol=2e-5
    )
    assert int(runs["data_parallel_all_reduces"]) > 0, "the gradient was not reduced over devices"
    assert "does not split over 4 devices" in str(runs["data_parallel_indivisible_error"])
