"""The autoencoder task reconstructs its standardized input."""

import jax
import numpy as np
import optax
import pytest

from tasks import get_task, train


def test_digits_autoencoder_reconstructs_its_input_and_learns():
    task = get_task("digits_autoencoder")
    batch = task.sample_batch(jax.random.key(0))
    assert batch.shape == (64, 64)
    assert abs(float(batch.mean())) < 0.3  # standardized per pixel
    params = task.init(jax.random.key(1))
    zero = jax.tree_util.tree_map(np.zeros_like, params)
    # A network that outputs 0 scores half the mean squared input.
    loss, _ = task.loss(zero, None, batch)
    assert float(loss) == pytest.approx(0.5 * float((batch**2).mean()), rel=1e-5)
    run = jax.jit(lambda key: train(task, optax.adam(3e-3), 300, key, eval_every=300))
    metrics = run(jax.random.key(2))[1]
    before, after = metrics["valid_loss"]
    assert after < 0.6 * before
