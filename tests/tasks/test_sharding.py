"""`tasks.sharding` on the devices of this process (tests/test_multidevice.py runs 4 devices)."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tasks import backprop, get_task, train
from tasks.sharding import (
    AXIS,
    data_parallel,
    device_mesh,
    pad,
    padded_size,
    put_replicated,
    shard_population,
    unpad,
)


def test_the_mesh_spans_every_device_on_one_axis():
    mesh = device_mesh()
    assert mesh.axis_names == (AXIS,) and mesh.size == len(jax.devices())
    assert device_mesh(jax.devices()[:1]).size == 1


def test_padding_repeats_the_last_member_and_unpadding_drops_it():
    tree = {"x": jnp.arange(6.0).reshape(3, 2), "key": jax.random.split(jax.random.key(0), 3)}
    padded = pad(tree, 5)
    assert padded["x"].shape == (5, 2) and padded["key"].shape == (5,)
    np.testing.assert_array_equal(padded["x"][3:], np.array([[4.0, 5.0], [4.0, 5.0]]))
    same_key = jax.random.key_data(padded["key"][4]) == jax.random.key_data(tree["key"][2])
    assert bool(jnp.all(same_key))
    back = unpad(padded, 3)
    np.testing.assert_array_equal(back["x"], tree["x"])
    assert pad(tree, 3)["x"] is tree["x"]


@pytest.mark.parametrize(
    ("size", "devices", "padded"), [(6, 4, 8), (8, 4, 8), (1, 4, 4), (5, 1, 5)]
)
def test_padded_size_is_the_next_multiple_of_the_device_count(size, devices, padded):
    assert padded_size(size, types.SimpleNamespace(size=devices)) == padded


def test_shard_population_equals_vmap_bit_for_bit():
    task = get_task("logistic_regression", num_examples=64, dim=8, batch_size=16)

    def run(task, lr, seed):
        return train(task, optax.adam(lr), 20, jax.random.key(seed))[1]["train_loss"]

    lrs, seeds = jnp.array([0.01, 0.03, 0.1]), jnp.array([0, 1, 2])
    batched = jax.vmap(run, in_axes=(None, 0, 0))
    want = jax.jit(batched)(task, lrs, seeds)
    sharded = shard_population(batched, device_mesh(), in_axes=(None, 0, 0))
    got = jax.jit(sharded)(task, lrs, seeds)
    assert got.shape == (3, 20)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_shard_population_rejects_bad_axes_and_ragged_populations():
    with pytest.raises(ValueError, match="in_axes"):
        shard_population(lambda x: x, device_mesh(), in_axes=(1,))
    with pytest.raises(ValueError, match="in_axes"):
        shard_population(lambda x: x, device_mesh(), in_axes=(None,))
    two = shard_population(lambda a, b: a + b, device_mesh(), in_axes=(0, 0))
    with pytest.raises(ValueError, match="leading size"):
        jax.jit(two)(jnp.ones(3), jnp.ones(4))


def test_put_replicated_keeps_values_and_keys():
    tree = {"w": np.arange(4.0), "key": jax.random.key(3)}
    out = put_replicated(tree, device_mesh())
    assert out["w"].sharding.is_fully_replicated
    np.testing.assert_array_equal(np.asarray(out["w"]), tree["w"])
    np.testing.assert_array_equal(jax.random.key_data(out["key"]), jax.random.key_data(tree["key"]))


def test_data_parallel_gradient_is_the_backprop_gradient_on_one_device():
    task = get_task("logistic_regression", num_examples=64, dim=8, batch_size=16)
    params = task.init(jax.random.key(0))
    batch = task.sample_batch(jax.random.key(1))
    grad_fn = data_parallel(device_mesh(jax.devices()[:1]))
    loss, grads = jax.jit(lambda p, b: grad_fn(task, p, jax.random.key(2), b))(params, batch)
    want_loss, want = jax.jit(lambda p, b: backprop(task, p, jax.random.key(2), b))(params, batch)
    np.testing.assert_array_equal(np.asarray(loss), np.asarray(want_loss))
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
