"""The contract every registered optimizer keeps, checked for each entry of `OPTIMIZERS`: it
converges on a quadratic and on Rosenbrock inside the inner loop, keeps dtypes and the state's
structure, compiles once, and gives the same numbers under `jax.vmap` as in a Python loop."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tasks
from baselines import OPTIMIZERS, get_optimizer

QUADRATIC_STEPS = 2000
ROSENBROCK_STEPS = 10000
REDUCTION = 1e-3  # converged: the last training loss is at most this fraction of the first

# Learning rates (a float or an optax schedule) on (quadratic_k100, rosenbrock). A new entry of
# OPTIMIZERS must add its own: the contract tests fail for a name missing here.
LEARNING_RATES = {
    "sgd": (5e-3, 1e-3),
    "momentum": (1e-3, 1e-3),
    "nesterov": (1e-3, 5e-4),
    "adagrad": (0.3, 0.3),
    "adadelta": (0.3, 0.03),
    "rmsprop": (1e-3, 1e-3),
    "adam": (1e-2, 1e-2),
    "adamw": (1e-2, 1e-2),
    "amsgrad": (0.1, 0.1),
    "nadam": (1e-2, 1e-2),
    "adamax": (2e-2, 2e-2),
    "radam": (1e-2, 3e-3),
    "lars": (0.2, 0.5),
    # The trust ratio scales LAMB's step with ||x||, which nearly stalls it where Rosenbrock's
    # valley passes the origin at a constant rate; a decaying schedule gets it through.
    "lamb": (4e-3, optax.cosine_decay_schedule(1e-2, ROSENBROCK_STEPS)),
    "lion": (2e-3, 1e-3),
    "nadamw": (1e-2, 1e-2),
    "muon": (1e-2, 1e-2),  # both problems are vectors: Muon's AdamW part does all the work
    "orthogonal_adam": (1e-2, 1e-2),  # vectors again: Adam's step
    "schedule_free_adamw": (1e-2, 1e-2),
    "adafactor": (3e-3, 3e-3),  # relative steps: about 3e-3 ||x||_rms per step
    # A multiplier of the adapted step. At a constant 1.0 Prodigy keeps bouncing in Rosenbrock's
    # valley (final/first loss 1e-2..1e-9, depending on the seed and on rounding); decayed, it
    # settles (about 1e-14 for every seed tried).
    "prodigy": (1.0, optax.cosine_decay_schedule(1.0, ROSENBROCK_STEPS)),
    "sophia": (1e-2, 1e-2),
    "shampoo": (1e-2, 1e-2),
    "adahessian": (0.15, 1.0),
    "newton": (1.0, 1.0),
    "lbfgs": (1.0, 1.0),
}
NAMES = sorted(OPTIMIZERS)


def learning_rates(name: str):
    """The recorded (quadratic, rosenbrock) learning rates of `name`; fails if there are none."""
    if name not in LEARNING_RATES:
        pytest.fail(f"optimizer {name!r} has no learning rates in LEARNING_RATES of {__file__}")
    return LEARNING_RATES[name]


@pytest.fixture(scope="module")
def quadratic() -> tasks.Task:
    return tasks.get_task("quadratic_k100")


@pytest.fixture(scope="module")
def rosenbrock() -> tasks.Task:
    return tasks.get_task("rosenbrock")


def mixed_dtype_task() -> tasks.Task:
    """A float32 matrix and scalar and a bfloat16 vector, pulled towards 1 by a quadratic."""

    def init(key):
        kw, kh, ks = jax.random.split(key, 3)
        return {
            "w": jax.random.normal(kw, (3, 2), jnp.float32),
            "h": jax.random.normal(kh, (4,), jnp.bfloat16),
            "s": jax.random.normal(ks, (), jnp.float32),
        }

    def loss(params, key, batch):
        value = sum(jnp.sum(jnp.square(p - 1).astype(jnp.float32)) for p in jax.tree.leaves(params))
        return 0.5 * value, {}

    return tasks.Task(name="mixed_dtypes", init=init, loss=loss, sampler=lambda *_: ())


@pytest.mark.parametrize("name", NAMES)
def test_converges_on_quadratic_and_rosenbrock(name, quadratic, rosenbrock):
    lr_quadratic, lr_rosenbrock = learning_rates(name)

    @jax.jit
    def run(key):
        opt = get_optimizer(name, learning_rate=lr_quadratic)
        _, on_quadratic = tasks.train(quadratic, opt, QUADRATIC_STEPS, key)
        opt = get_optimizer(name, learning_rate=lr_rosenbrock)
        _, on_rosenbrock = tasks.train(rosenbrock, opt, ROSENBROCK_STEPS, key)
        return on_quadratic["train_loss"], on_rosenbrock["train_loss"]

    for task, losses in zip(("quadratic", "rosenbrock"), run(jax.random.key(0)), strict=True):
        first, last = float(losses[0]), float(losses[-1])
        assert np.isfinite(last) and last <= REDUCTION * first, (task, first, last)


@functools.cache
def update_functions(name: str):
    """Default `name` on the mixed-dtype task: one jitted `train_step` that counts its traces, and
    the same step vmapped over states (cached: both update tests share the compiled step)."""
    task, opt = mixed_dtype_task(), get_optimizer(name)

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
    assert dtypes == {"w": jnp.float32, "h": jnp.bfloat16, "s": jnp.float32}
    assert not np.array_equal(states[-1].params["w"], first.params["w"])


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_keys_matches_a_loop(name):
    task, opt, step, batched_step, _ = update_functions(name)
    keys = jax.random.split(jax.random.key(2), 3)
    apart = [tasks.init_state(task, opt, k) for k in keys]
    together = jax.vmap(lambda k: tasks.init_state(task, opt, k))(keys)
    assert not np.allclose(apart[0].params["w"], apart[1].params["w"])  # the keys differ
    for _ in range(3):
        apart = [step(state, jax.random.key(3)) for state in apart]
        together = batched_step(together, jax.random.key(3))
    apart = jax.tree.map(lambda *xs: jnp.stack(xs), *apart)
    for a, b in zip(jax.tree.leaves(together), jax.tree.leaves(apart), strict=True):
        if jax.dtypes.issubdtype(b.dtype, jax.dtypes.prng_key):  # keys held in optimizer state
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        # Batched reductions may round differently: allow a few units in the last place.
        tol = 4 * float(jnp.finfo(b.dtype).eps) if jnp.issubdtype(b.dtype, jnp.floating) else 0
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max(initial=0))
