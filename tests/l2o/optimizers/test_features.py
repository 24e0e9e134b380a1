"""The features every learned optimizer reads, against NumPy transcriptions of their equations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from l2o.optimizers import features


def test_momenta_and_second_moment_match_a_numpy_ema():
    rng = np.random.default_rng(0)
    grads = [{"m": rng.normal(size=(3, 2)), "s": rng.normal(size=())} for _ in range(12)]
    state = features.init_features({"m": jnp.zeros((3, 2)), "s": jnp.zeros(())})
    update = jax.jit(features.update_features)
    for g in grads:
        state = update(state, jax.tree.map(jnp.float32, g))
    for name in ("m", "s"):
        mu = np.zeros((len(features.DECAYS),) + np.shape(grads[0][name]))
        nu = np.zeros(np.shape(grads[0][name]))
        for g in grads:
            for k, d in enumerate(features.DECAYS):
                mu[k] = d * mu[k] + (1 - d) * g[name]
            nu = features.B2 * nu + (1 - features.B2) * g[name] ** 2
        np.testing.assert_allclose(np.asarray(state.mu[name]), mu, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(np.asarray(state.nu[name]), nu, rtol=1e-5, atol=1e-9)
    assert int(state.count) == len(grads)
    assert state.mu["m"].shape == (6, 3, 2) and state.mu["s"].shape == (6,)


def test_adam_direction_matches_optax():
    rng = np.random.default_rng(1)
    ref = optax.scale_by_adam(b1=0.9, b2=0.999, eps=0.0, eps_root=1e-16)
    params = {"w": jnp.zeros((4, 3))}
    ref_state, state = ref.init(params), features.init_features(params, 1)
    for _ in range(6):
        g = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
        want, ref_state = ref.update(g, ref_state)
        state = features.update_features(state, g, (0.9,))
        got = features.adam_direction(state.mu["w"], state.nu["w"], state.count, (0.9,))[0]
        np.testing.assert_allclose(np.asarray(got), np.asarray(want["w"]), rtol=1e-5)


def test_progress_embedding_is_bounded_and_ordered():
    num_steps = 1000
    steps = jnp.arange(0, num_steps + 1, 7)
    emb = jax.vmap(lambda s: features.progress_embedding(features.progress(s, num_steps)))(steps)
    emb = np.asarray(emb)
    assert emb.shape == (len(steps), 11)
    assert np.all(emb >= -1) and np.all(emb <= 1)
    # each rises with training progress (XLA's float32 tanh, compiled, is monotone only up to
    # one unit in the last place near 1: 6e-8)
    assert np.all(np.diff(emb, axis=0) >= -1e-7)
    assert np.all(np.diff(emb[-1]) <= 0)  # shorter timescales have risen further
    assert float(features.progress(5000, num_steps)) == 1.0


def test_log_sign_preprocessing_matches_the_paper():
    g = np.array([3.0, -0.5, 1e-6, -1e-7, 0.0], np.float32)
    p = 10.0
    big = np.abs(g) >= np.exp(-p)
    want = np.stack(
        [
            np.where(big, np.log(np.maximum(np.abs(g), 1e-30)) / p, -1.0),
            np.where(big, np.sign(g), np.exp(p) * g),
        ]
    )
    np.testing.assert_allclose(np.asarray(features.log_sign(jnp.asarray(g), p)), want, rtol=1e-6)


def test_tensor_features_are_scale_free_and_rank_aware():
    rng = np.random.default_rng(2)
    p, g = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32), jnp.asarray(rng.normal(size=(5, 4)))
    mu = jnp.asarray(rng.normal(size=(6, 5, 4)), jnp.float32)
    x = features.normalized_inputs(p, g, mu)
    assert x.shape == (8, 5, 4)
    np.testing.assert_allclose(np.sqrt(np.mean(np.asarray(x) ** 2, axis=(1, 2))), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(features.normalized_inputs(1e-3 * p, 1e-3 * g, 1e-3 * mu)), x, rtol=1e-4
    )
    nu = jnp.square(g)
    stats = features.tensor_statistics(p, g, mu, nu)
    assert stats.shape == (features.NUM_TENSOR_STATS,)
    rank = np.asarray(stats[-features.RANK_BUCKETS - 1 : -1])
    assert rank.tolist() == [0, 0, 1, 0, 0]
    scalar = features.tensor_statistics(p[0, 0], g[0, 0], mu[:, 0, 0], nu[0, 0])
    assert np.all(np.isfinite(np.asarray(scalar)))


def test_loss_features_are_bounded_and_zero_without_a_loss():
    state = features.init_loss_state()
    assert np.all(np.asarray(features.loss_features(state)) == 0)
    assert features.update_loss_state(state, None) is state
    for loss in [5.0, 4.0, 3.0, np.nan, 2.5, 1e9, -3.0]:
        state = features.update_loss_state(state, jnp.float32(loss))
        feats = np.asarray(features.loss_features(state))
        assert np.all(np.isfinite(feats)) and np.all(np.abs(feats) <= 1)
    assert int(state.count) == 6  # the NaN was skipped
