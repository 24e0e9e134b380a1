"""Learned optimizers: the baseline contract for every entry of `LEARNED_OPTIMIZERS` at
`theta = init_theta(key(0))`, vmap over thetas, finite meta-gradients; the shared features against
NumPy transcriptions; the optimizer file's round trip, plain-optax use and hostile inputs."""

from __future__ import annotations

import functools
import json
import pickle
import struct

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import tasks
from l2o import features
from l2o.learned import LEARNED_OPTIMIZERS, get_learned, make_config
from l2o.optimizer_file import load_learned, save_learned

NAMES = sorted(LEARNED_OPTIMIZERS)
QUADRATIC_STEPS = 2000
ROSENBROCK_STEPS = 5000
# Untrained, every optimizer starts as Adam(3e-3) (see each docstring); the last training loss
# must be at most this fraction of the first on (quadratic_k100, rosenbrock). Measured at key 0:
# about 7.5e-4 and 7e-5 for each. A new entry of LEARNED_OPTIMIZERS must record its own.
REDUCTION = {
    "lstm": (1e-3, 1e-3),
    "mlp": (1e-3, 1e-3),
    "hyper": (1e-3, 1e-3),
    "learnable_adam": (1e-3, 1e-3),
}


def reductions(name: str) -> tuple[float, float]:
    if name not in REDUCTION:
        pytest.fail(f"learned optimizer {name!r} has no thresholds in REDUCTION of {__file__}")
    return REDUCTION[name]


@functools.cache
def learned(name: str):
    """`(init_theta, transform, theta at key 0)` of the default config."""
    init_theta, transform = get_learned(name)
    return init_theta, transform, init_theta(jax.random.key(0))


@jax.jit
def perturbed(theta, key):
    """`theta` plus N(0, 0.1^2) noise, so zero-initialised output layers take part."""
    flat, unravel = ravel_pytree(theta)
    return unravel(flat + 0.1 * jax.random.normal(key, flat.shape, flat.dtype))


def mixed_task() -> tasks.Task:
    """A float32 matrix, conv kernel and scalar, a bfloat16 vector, and a param the loss ignores
    (its gradient is exactly zero), pulled towards 1 by a quadratic."""

    def init(key):
        kw, kh, ks, kc = jax.random.split(key, 4)
        return {
            "w": jax.random.normal(kw, (3, 2), jnp.float32),
            "h": jax.random.normal(kh, (4,), jnp.bfloat16),
            "s": jax.random.normal(ks, (), jnp.float32),
            "conv": jax.random.normal(kc, (3, 3, 2, 2), jnp.float32),
            "unused": jnp.zeros((2,), jnp.float32),
        }

    def loss(params, key, batch):
        used = {k: v for k, v in params.items() if k != "unused"}
        value = sum(jnp.sum(jnp.square(p - 1).astype(jnp.float32)) for p in jax.tree.leaves(used))
        return 0.5 * value, {}

    return tasks.Task(name="mixed", init=init, loss=loss, sampler=lambda *_: ())


def small_task() -> tasks.Task:
    """A matrix pulled towards 1 and a param the loss ignores (zero gradient, zero value)."""

    def init(key):
        return {"w": jax.random.normal(key, (3, 2)), "unused": jnp.zeros((2,))}

    def loss(params, key, batch):
        return 0.5 * jnp.sum(jnp.square(params["w"] - 1)), {}

    return tasks.Task(name="small", init=init, loss=loss, sampler=lambda *_: ())


# --- the contract --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_untrained_converges_on_quadratic_and_rosenbrock(name):
    quadratic, rosenbrock = tasks.get_task("quadratic_k100"), tasks.get_task("rosenbrock")
    _, transform, theta = learned(name)

    @jax.jit
    def run(theta, key):
        opt = transform(theta)
        _, on_quadratic = tasks.train(quadratic, opt, QUADRATIC_STEPS, key)
        _, on_rosenbrock = tasks.train(rosenbrock, opt, ROSENBROCK_STEPS, key)
        return on_quadratic["train_loss"], on_rosenbrock["train_loss"]

    both = run(theta, jax.random.key(0))
    for task, losses, reduction in zip(
        ("quadratic", "rosenbrock"), both, reductions(name), strict=True
    ):
        first, last = float(losses[0]), float(losses[-1])
        assert np.isfinite(last) and last <= reduction * first, (task, first, last)


@functools.cache
def update_functions(name: str):
    """One jitted `train_step` on the mixed task that counts its traces, and the same step vmapped
    over states (cached: both update tests share the compiled steps)."""
    _, transform, theta = learned(name)
    task, opt = mixed_task(), transform(theta)

    def step(state, run_key):
        return tasks.train_step(task, opt, state, run_key, total_steps=10)[0]

    traces = []

    def counted_step(state, run_key):
        traces.append(1)  # a Python side effect: runs once per trace, never when compiled
        return step(state, run_key)

    return task, opt, jax.jit(counted_step), jax.jit(jax.vmap(step, in_axes=(0, None))), traces


@pytest.mark.parametrize("name", NAMES)
def test_keeps_dtypes_and_state_structure_and_compiles_once(name):
    task, opt, step, _, traces = update_functions(name)
    states = [tasks.init_state(task, opt, jax.random.key(0))]
    for _ in range(3):
        states.append(step(states[-1], jax.random.key(1)))
    assert len(traces) == 1, "the update was traced again on a later call"

    def signature(tree):
        return jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]

    first = states[0]
    for later in states[1:]:
        assert signature(later.params) == signature(first.params)
        assert signature(later.opt_state) == signature(first.opt_state)
    dtypes = {k: v.dtype for k, v in states[-1].params.items()}
    assert dtypes["h"] == jnp.bfloat16 and dtypes["w"] == dtypes["conv"] == jnp.float32
    assert not np.array_equal(states[-1].params["w"], first.params["w"])
    assert not np.array_equal(states[-1].params["conv"], first.params["conv"])
    assert np.array_equal(states[-1].params["unused"], first.params["unused"])
    for leaf in jax.tree.leaves(states[-1]):
        assert np.all(np.isfinite(np.asarray(leaf, np.float64)))


def assert_close_batched(together, apart):
    """Leafwise equality up to a few float32 ulps (batched reductions may round differently)."""
    for a, b in zip(jax.tree.leaves(together), jax.tree.leaves(apart), strict=True):
        floating = jnp.issubdtype(b.dtype, jnp.floating)
        tol = 8 * float(jnp.finfo(b.dtype).eps) if floating else 0
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max(initial=0))


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_keys_matches_a_loop(name):
    task, opt, step, batched_step, _ = update_functions(name)
    keys = jax.random.split(jax.random.key(2), 3)
    apart = [tasks.init_state(task, opt, k) for k in keys]
    together = jax.vmap(lambda k: tasks.init_state(task, opt, k))(keys)
    for _ in range(3):
        apart = [step(state, jax.random.key(3)) for state in apart]
        together = batched_step(together, jax.random.key(3))
    apart = jax.tree.map(lambda *xs: jnp.stack(xs), *apart)
    assert_close_batched(together, apart)
    assert not np.allclose(apart.params["w"][0], apart.params["w"][1])  # the keys differ


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_thetas_matches_a_loop(name):
    init_theta, transform, _ = learned(name)
    task = tasks.get_task("quadratic_k100")
    keys = jax.random.split(jax.random.key(4), 3)
    thetas = jax.vmap(perturbed, in_axes=(None, 0))(learned(name)[2], keys)

    @jax.jit
    def losses(theta):
        return tasks.train(task, transform(theta), 10, jax.random.key(5))[1]["train_loss"]

    together = jax.jit(jax.vmap(losses))(thetas)
    apart = jnp.stack([losses(jax.tree.map(lambda x, i=i: x[i], thetas)) for i in range(3)])
    np.testing.assert_allclose(np.asarray(together), np.asarray(apart), rtol=1e-5)
    assert not np.allclose(apart[0, -1], apart[1, -1])  # the thetas differ


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_meta_gradient_of_a_short_unroll_is_finite(name):
    _, transform, theta = learned(name)
    task = small_task()

    @jax.jit
    def meta_grad(theta):
        def meta_loss(theta):
            _, metrics = tasks.train(task, transform(theta), 8, jax.random.key(6))
            return jnp.mean(jnp.log(metrics["train_loss"]))

        return jax.grad(meta_loss)(theta)

    for point in (theta, perturbed(theta, jax.random.key(7))):
        grads = meta_grad(point)
        assert jax.tree.structure(grads) == jax.tree.structure(theta)
        for path, g in jax.tree_util.tree_leaves_with_path(grads):
            assert np.all(np.isfinite(np.asarray(g))), path
        assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("name", NAMES)
def test_untrained_is_adam(name):
    """The documented init: every learned optimizer starts as Adam(3e-3, b1=0.9, b2=0.999)."""
    _, transform, theta = learned(name)
    params = mixed_task().init(jax.random.key(8))
    params = {k: v.astype(jnp.float32) for k, v in params.items()}
    opt, ref = transform(theta), optax.adam(3e-3)
    state, ref_state = opt.init(params), ref.init(params)
    update = jax.jit(functools.partial(opt.update, loss=jnp.float32(1.0), num_steps=5))
    for t in range(5):
        grads = jax.tree.map(lambda p, t=t: jnp.sin(p + t), params)
        upd, state = update(grads, state, params, step=t)
        ref_upd, ref_state = ref.update(grads, ref_state, params)
        for a, b in zip(jax.tree.leaves(upd), jax.tree.leaves(ref_upd), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-9)
        params = optax.apply_updates(params, upd)


def test_lstm_without_residual_is_the_paper_architecture():
    init_theta, transform = get_learned("lstm", residual=False)
    theta = init_theta(jax.random.key(0))
    assert "log_lr" not in theta and np.any(np.asarray(theta["out_w"]) != 0)
    sizes = {k: v.shape for k, v in theta.items()}
    assert sizes["lstm0_wx"] == (2, 80) and sizes["lstm1_wh"] == (20, 80)
    params = {"x": jnp.ones((5,))}
    opt = transform(theta)
    updates, _ = opt.update({"x": jnp.full((5,), 0.3)}, opt.init(params))
    assert np.all(np.abs(np.asarray(updates["x"])) < 0.1)  # about output_scale = 0.01


def test_registry_rejects_unknown_names_and_config():
    with pytest.raises(ValueError, match="valid: hyper, learnable_adam, lstm, mlp"):
        get_learned("velo")
    with pytest.raises(ValueError, match="no config key 'hiden_sizes'"):
        get_learned("mlp", hiden_sizes=(8,))
    with pytest.raises(ValueError, match="must be an int"):
        get_learned("lstm", hidden_size=2.5)
    with pytest.raises(ValueError, match="base_decay"):
        get_learned("mlp", base_decay=0.7)
    assert make_config("mlp", hidden_sizes=[16, 4]).hidden_sizes == (16, 4)


def test_meta_parameter_counts():
    counts = {n: sum(x.size for x in jax.tree.leaves(learned(n)[2])) for n in NAMES}
    assert counts == {"hyper": 5226, "learnable_adam": 4, "lstm": 5142, "mlp": 251}
    for name in NAMES:
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(learned(name)[2]))


# --- features ------------------------------------------------------------------------------


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
    assert np.all(np.diff(emb, axis=0) >= 0)  # each rises with training progress
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


# --- the optimizer file --------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_file_round_trip_gives_identical_updates(name, tmp_path):
    _, transform, theta = learned(name)
    theta = perturbed(theta, jax.random.key(9))
    path = tmp_path / f"{name}.safetensors"
    meta = {"command": "l2o meta-train --steps 3", "steps": 3}
    save_learned(path, name, make_config(name), theta, meta)
    loaded, info = load_learned(path)
    assert info["name"] == name and info["config"] == make_config(name)
    assert info["metadata"]["steps"] == 3 and "jax" in info["metadata"]["versions"]
    assert "date" in info["metadata"] and info["metadata"]["command"].startswith("l2o")
    for a, b in zip(jax.tree.leaves(info["theta"]), jax.tree.leaves(theta), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))

    task = small_task()

    def run(opt):
        return jax.jit(lambda k: tasks.train(task, opt, 5, k)[0].params)(jax.random.key(10))

    a, b = run(transform(theta)), run(loaded)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_loaded_optimizer_trains_in_a_plain_optax_loop(tmp_path):
    # Only jax, optax, numpy and l2o.load_optimizer below: no `tasks`.
    import l2o

    _, _, theta = learned("mlp")
    save_learned(tmp_path / "opt.safetensors", "mlp", make_config("mlp"), theta, {})
    optimizer = l2o.load_optimizer(tmp_path / "opt.safetensors")

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(256, 8)), jnp.float32)
    y = jnp.asarray(x @ rng.normal(size=(8,)) > 0, jnp.int32)

    def loss_fn(params):
        h = jnp.tanh(x @ params["w1"] + params["b1"][None])
        logits = h @ params["w2"] + params["b2"][None]
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    k1, k2 = jax.random.split(jax.random.key(0))
    params = {
        "w1": 0.3 * jax.random.normal(k1, (8, 16)), "b1": jnp.zeros(16),
        "w2": 0.3 * jax.random.normal(k2, (16, 2)), "b2": jnp.zeros(2),
    }  # fmt: skip
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(300):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])


def write_raw(path, header: dict, body: bytes = b"", length: int | None = None):
    """A file in the safetensors layout, written by hand."""
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + body)
    return path


def valid_header(name="learnable_adam", theta=None, **meta_changes):
    """Header and body of a valid learnable_adam file, with optional changes."""
    theta = dict(learned("learnable_adam")[2] if theta is None else theta)
    header, body = {}, b""
    for key, value in theta.items():
        data = np.asarray(value, "<f4").tobytes()
        header[key] = {
            "dtype": "F32", "shape": list(np.shape(value)),
            "data_offsets": [len(body), len(body) + len(data)],
        }  # fmt: skip
        body += data
    header["__metadata__"] = {
        "format": "l2o-learned-optimizer", "format_version": "1", "architecture": name,
        "config": json.dumps({"learning_rate": 0.003}), "metadata": "{}",
    } | meta_changes  # fmt: skip
    return header, body


def test_hand_written_file_loads(tmp_path):
    header, body = valid_header()
    _, info = load_learned(write_raw(tmp_path / "ok.safetensors", header, body))
    assert info["name"] == "learnable_adam"


def hostile_files(tmp_path):
    """(description, path) of malformed files, each to be rejected."""
    theta = {k: np.asarray(v) for k, v in learned("learnable_adam")[2].items()}
    out = []

    def add(label, header=None, body=None, length=None, raw=None, **kw):
        path = tmp_path / f"{label.replace(' ', '_')}.safetensors"
        if raw is not None:
            path.write_bytes(raw)
        else:
            h, b = valid_header(**kw) if header is None else (header, b"")
            write_raw(path, h, b if body is None else body, length)
        out.append((label, path))

    header, body = valid_header()
    good = tmp_path / "good.safetensors"
    write_raw(good, header, body)
    add("truncated", raw=good.read_bytes()[:-5])
    add("truncated header", raw=good.read_bytes()[:40])
    add("tiny", raw=b"\x01\x02")
    add("wrong magic", **{"format": "safetensors-something-else"})
    add("huge header length", header=header, body=body, length=10**12)
    add("header not json", raw=struct.pack("<Q", 12) + b"{not json!!}" + body)
    add("header not utf8", raw=struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc" + body)
    add("header a list", raw=struct.pack("<Q", 2) + b"[]")
    add("unknown architecture", name="velo")
    add("unknown config key", config=json.dumps({"learning_rat": 0.1}))
    add("config wrong type", config=json.dumps({"learning_rate": "fast"}))
    add("missing leaf", theta={k: v for k, v in theta.items() if k != "log_eps"})
    add("extra leaf", theta={**theta, "bonus": np.zeros(())})
    add("wrong shape", theta={**theta, "log_lr": np.zeros((2,))})
    add("nan value", theta={**theta, "log_lr": np.float32(np.nan)})
    add("inf value", theta={**theta, "log_eps": np.float32(-np.inf)})
    bad_dtype, _ = valid_header()
    bad_dtype["log_lr"]["dtype"] = "F64"
    add("wrong dtype", header=bad_dtype, body=body)
    overlap, _ = valid_header()
    overlap["log_eps"]["data_offsets"] = [0, 4]
    add("overlapping offsets", header=overlap, body=body)
    add("trailing bytes", header=header, body=body + b"\x00" * 4)
    add("pickle renamed", raw=pickle.dumps({"theta": theta, "name": "mlp"}))
    add("empty", raw=b"")
    return out


def test_hostile_files_are_rejected_naming_the_file(tmp_path):
    for label, path in hostile_files(tmp_path):
        with pytest.raises(ValueError) as excinfo:
            load_learned(path)
        message = str(excinfo.value)
        assert str(path) in message and "\n" not in message, (label, message)
    with pytest.raises(ValueError, match="missing.safetensors"):
        load_learned(tmp_path / "missing.safetensors")


def test_save_rejects_a_theta_that_does_not_fit(tmp_path):
    theta = dict(learned("mlp")[2])
    path = tmp_path / "bad.safetensors"
    with pytest.raises(ValueError, match="bad.safetensors"):
        save_learned(path, "mlp", make_config("mlp"), {**theta, "w0": jnp.zeros((3, 3))})
    with pytest.raises(ValueError, match="non-finite"):
        save_learned(path, "mlp", make_config("mlp"), {**theta, "log_lr": jnp.float32(jnp.nan)})
    with pytest.raises(ValueError, match="unexpected theta leaf: b2, w2"):
        save_learned(path, "mlp", make_config("mlp", hidden_sizes=(8,)), theta)
    with pytest.raises(ValueError, match="theta leaf missing: log_lr"):
        save_learned(
            path, "mlp", make_config("mlp"), {k: v for k, v in theta.items() if k != "log_lr"}
        )
    assert not path.exists()
