"""Task families sample valid, reproducible configs; networks initialise as documented."""

import json

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tasks import UnknownNameError, get_family, list_families, networks, train


@pytest.mark.parametrize("name", list_families())
def test_family_samples_reproducible_trainable_tasks(name):
    family = get_family(name)
    configs = [family.sample(jax.random.key(s)) for s in range(6)]
    assert configs[0] == family.sample(jax.random.key(0))
    assert len({json.dumps(c, sort_keys=True) for c in configs}) > 1
    task = family.task(configs[0])
    optimizer = optax.adam(1e-2)
    _, metrics = jax.jit(lambda t: train(t, optimizer, 30, jax.random.key(0), eval_every=30))(task)
    assert metrics["valid_loss"][-1] < metrics["valid_loss"][0]


def test_unknown_family_lists_valid_names():
    with pytest.raises(UnknownNameError, match="quadratics"):
        get_family("quadratic")


@pytest.mark.parametrize(
    "initializer, expected_var", [("he", 2.0 / 400), ("lecun", 1.0 / 400), ("glorot", 2.0 / 600)]
)
def test_initializer_variance(initializer, expected_var):
    net = networks.mlp([200], 10, initializer=initializer)
    params = net.init(jax.random.key(0), jnp.zeros((1, 400)))
    w = np.asarray(params["mlp/~/linear_0"]["w"])
    assert w.shape == (400, 200)
    assert w.var() == pytest.approx(expected_var, rel=0.05)


def test_small_normal_initializer_and_unknown_names():
    params = networks.mlp([50], 10, initializer="normal").init(
        jax.random.key(0), jnp.zeros((1, 30))
    )
    assert np.asarray(params["mlp/~/linear_0"]["w"]).std() == pytest.approx(0.01, rel=0.1)
    with pytest.raises(ValueError, match="relu"):
        networks.mlp([4], 2, activation="rleu")
    with pytest.raises(ValueError, match="glorot"):
        networks.cnn([4], 2, initializer="xavierr")


def test_cnn_and_char_lstm_shapes():
    cnn = networks.cnn([4, 8], 10)
    x = jnp.zeros((2, 16, 16, 3))
    assert cnn.apply(cnn.init(jax.random.key(0), x), x).shape == (2, 10)
    lm = networks.char_lstm(vocab_size=11, embed_dim=4, hidden=8)
    tokens = jnp.zeros((3, 7), jnp.int32)
    assert lm.apply(lm.init(jax.random.key(0), tokens), tokens).shape == (3, 7, 11)
    assert isinstance(lm, hk.Transformed)


@pytest.mark.parametrize("kernel", [2, 3, 4])
def test_patch_conv_matches_haiku_conv(kernel):
    x = jax.random.normal(jax.random.key(1), (2, 7, 6, 3))
    init = hk.initializers.RandomNormal(1.0)

    def both(x):
        return (
            networks.PatchConv2D(5, kernel, init)(x),
            hk.Conv2D(5, kernel, w_init=init, b_init=init)(x),
        )

    net = hk.without_apply_rng(hk.transform(both))
    params = net.init(jax.random.key(0), x)
    # Share one set of weights and a nonzero bias between the two.
    (ours, theirs) = sorted(params)
    params = {ours: params[theirs], theirs: params[theirs]}
    patch, reference = net.apply(params, x)
    np.testing.assert_allclose(patch, reference, rtol=1e-5, atol=1e-5)
    grads = jax.grad(lambda p: sum(jnp.sum(jnp.sin(y)) for y in net.apply(p, x)))(params)
    np.testing.assert_allclose(grads[ours]["w"], grads[theirs]["w"], rtol=1e-4, atol=1e-4)
