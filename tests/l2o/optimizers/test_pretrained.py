"""The shipped meta-trained optimizer and evolved rule: they load as plain optax transforms and
train."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import l2o
from l2o.optimizers.file_format import at_learning_rate, load_learned
from search import load_rule
from search.rule_file import read_rule
from tasks import get_task, train
from tasks.data_files import DatasetError

PRETRAINED = Path(l2o.__file__).parent / "pretrained"


def test_shipped_optimizer_beats_default_adam_on_its_training_family():
    """On held-out seeds of digits_mlp, 300 steps: lower final training loss than Adam at its
    default learning rate (1e-3) and at the best of three nearby rates, on every seed."""
    learned = l2o.load_optimizer(PRETRAINED / "mlp_digits.safetensors")
    task = get_task("digits_mlp")
    keys = jax.random.split(jax.random.key(123), 3)

    def final_loss(make, learning_rates):
        """Per learning rate and seed (one compilation)."""

        def final(lr, k):
            return train(task, make(lr), 300, k)[1]["train_loss"][-20:].mean()

        over_seeds = jax.vmap(final, in_axes=(None, 0))
        return np.asarray(jax.jit(jax.vmap(over_seeds, in_axes=(0, None)))(learning_rates, keys))

    (ours,) = final_loss(lambda lr: learned, jnp.zeros(1))
    adams = final_loss(optax.adam, jnp.array([1e-3, 3e-3, 1e-2]))
    assert np.all(np.isfinite(ours)) and np.all(ours < adams.min(0))


def test_shipped_evolved_rule_has_one_state_slot_and_beats_adamw_on_its_proxy():
    """The rule evolved from AdamW keeps one state slot and, on 8 held-out seeds of its proxy's
    digits MLP (64-16-10, 200 steps), reaches a lower mean validation loss than AdamW at the
    best of three learning rates around AdamW's tuned one (0.138 against 0.161 when written)."""
    path = PRETRAINED / "evolved_adamw.json"
    program, metadata = read_rule(path)
    assert len(program.new_state) == 1 and metadata["passed_funnel"]
    task = get_task("digits_mlp", hidden=(16,))
    keys = jax.random.split(jax.random.key(321), 8)

    def mean_final_valid(make, learning_rates):
        """Mean over seeds, per learning rate (one compilation)."""

        def final(lr, k):
            return train(task, make(lr), 200, k, eval_every=200)[1]["valid_loss"][-1]

        over_seeds = jax.vmap(final, in_axes=(None, 0))
        runs = jax.jit(jax.vmap(over_seeds, in_axes=(0, None)))(learning_rates, keys)
        return np.asarray(runs).mean(1)

    (ours,) = mean_final_valid(lambda lr: load_rule(path, 3e-3), jnp.zeros(1))
    adamw = mean_final_valid(optax.adamw, jnp.array([3e-3, 1e-2, 3e-2])).min()
    assert np.isfinite(ours) and ours < adamw, (ours, adamw)


def test_shipped_celo_beats_tuned_adamw_on_held_out_seeds_of_its_family():
    """celo (l2o/pretrained/celo.safetensors) with warm-up + cosine at a learning rate of 3e-3,
    on 4 held-out seeds of the 8x8 MNIST MLP (64-32-10), 300 steps: a lower mean final
    validation loss than AdamW at the best of three constant learning rates; it records how it
    was made."""
    path = PRETRAINED / "celo.safetensors"
    _, info = load_learned(path)
    assert "configs/meta_celo.yaml" in info["metadata"]["command"]
    assert len(info["metadata"]["meta_loss_per_100_steps"]) == 30
    try:
        task = get_task("mnist8_mlp")
    except DatasetError:
        pytest.skip("MNIST is not in the data folder")
    keys = jax.random.split(jax.random.key(777), 4)

    def mean_final_valid(make, learning_rates):
        """Mean over seeds of the final validation loss, per learning rate (one compilation)."""
        final = lambda lr, k: train(task, make(lr), 300, k, eval_every=300)[1]["valid_loss"][-1]  # noqa: E731
        over_seeds = jax.vmap(final, in_axes=(None, 0))
        return np.asarray(jax.jit(jax.vmap(over_seeds, in_axes=(0, None)))(learning_rates, keys))

    celo = l2o.load_optimizer(path, num_steps=300)
    shape = optax.warmup_cosine_decay_schedule(0.0, 1.0, 15, 300)
    scheduled = lambda lr: at_learning_rate(celo, 1e-3, lambda step: lr * shape(step))  # noqa: E731
    ours = mean_final_valid(scheduled, jnp.array([3e-3])).mean()
    adamw = mean_final_valid(optax.adamw, jnp.array([1e-3, 3e-3, 1e-2])).mean(1).min()
    assert np.isfinite(ours) and ours < adamw, (ours, adamw)
