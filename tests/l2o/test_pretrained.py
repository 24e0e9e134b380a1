"""The shipped meta-trained optimizer: it loads as a plain optax transform and trains."""

from pathlib import Path

import jax
import numpy as np
import optax

import l2o
from tasks import get_task, train

PRETRAINED = Path(l2o.__file__).parent / "pretrained"


def test_shipped_optimizer_beats_default_adam_on_its_training_family():
    """On held-out seeds of digits_mlp, 300 steps: lower final training loss than Adam at its
    default learning rate (1e-3) and at the best of three nearby rates, on every seed."""
    learned = l2o.load_optimizer(PRETRAINED / "mlp_digits.safetensors")
    task = get_task("digits_mlp")
    keys = jax.random.split(jax.random.key(123), 3)

    def final_loss(optimizer):
        run = jax.vmap(lambda k: train(task, optimizer, 300, k)[1]["train_loss"][-20:].mean())
        return np.asarray(jax.jit(run)(keys))

    ours = final_loss(learned)
    adams = np.stack([final_loss(optax.adam(lr)) for lr in (1e-3, 3e-3, 1e-2)])
    assert np.all(np.isfinite(ours)) and np.all(ours < adams.min(0))
