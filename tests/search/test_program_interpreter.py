"""The interpreters against optax (the warm-start programs) and against each other (every op)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from search.encoding import encode_population
from search.interpreter import LOOP_MAX_OPS, encoded_transform, program_transform, slot_ops
from search.ops import OPS
from search.program import LR, NUM_FIXED, G, Instruction, Program, T
from search.programs_library import get_program

STEPS = 50
TOLERANCE = 1e-5
LR_VALUE = 0.05
S1 = NUM_FIXED
R = NUM_FIXED + 1

OPTAX = {
    "sgd": lambda lr: optax.sgd(lr),
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": lambda lr: optax.adam(lr),
    "adamw": lambda lr: optax.adamw(lr),
    "lion": lambda lr: optax.lion(lr),
}


def random_params(key: jax.Array) -> dict[str, jax.Array]:
    """A matrix, a vector and a scalar."""
    kw, kb, ks = jax.random.split(key, 3)
    return {
        "w": jax.random.normal(kw, (4, 3)),
        "b": jax.random.normal(kb, (3,)),
        "s": jax.random.normal(ks, ()),
    }


def noises(steps: int):
    """The gradient noise of each step, `[steps, ...]`; drawn once and passed to the runs, so
    that their compilations leave out the random number generation."""
    return jax.vmap(lambda t: random_params(jax.random.fold_in(jax.random.key(1), t)))(
        jnp.arange(steps)
    )


NOISE = noises(STEPS)


def train_step(optimizer: optax.GradientTransformation, carry, noise):
    """One update on a noisy gradient that depends on the params; returns the new params twice."""
    params, opt_state = carry
    grads = jax.tree.map(lambda p, n: jnp.sin(2 * p) + 0.3 * n, params, noise)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, opt_state), params


def trajectory(optimizer: optax.GradientTransformation, noise_t):
    """Params after each step of `noise_t` (leading axis `[steps]`), as one `lax.scan`."""
    params = random_params(jax.random.key(0))
    carry = (params, optimizer.init(params))
    return jax.lax.scan(functools.partial(train_step, optimizer), carry, noise_t)[1]


def trajectory_eager(optimizer: optax.GradientTransformation, noise_t):
    """`trajectory` as a Python loop over the steps of `noise_t`, op by op (nothing to compile)."""
    params = random_params(jax.random.key(0))
    carry, out = (params, optimizer.init(params)), []
    for t in range(jax.tree.leaves(noise_t)[0].shape[0]):
        carry, params = train_step(optimizer, carry, jax.tree.map(lambda x, t=t: x[t], noise_t))
        out.append(params)
    return jax.tree.map(lambda *xs: jnp.stack(xs), *out)


def max_relative_error(got, want) -> float:
    """max |got - want| over each leaf's trajectory, relative to the leaf's largest magnitude."""
    errors = jax.tree.map(
        lambda a, b: float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30)),
        got,
        want,
    )
    return max(jax.tree.leaves(errors))


@pytest.mark.parametrize("name", sorted(OPTAX))
def test_program_equals_optax(name):
    want = jax.jit(lambda n: trajectory(OPTAX[name](LR_VALUE), n))(NOISE)
    got = jax.jit(lambda n: trajectory(program_transform(get_program(name), LR_VALUE), n))(NOISE)
    assert max_relative_error(got, want) <= TOLERANCE


def test_encoded_population_equals_optax():
    """The five programs encoded as one population, run by one vmapped interpreter (each with
    its own slot ops: batched, the slow but general dispatch)."""
    names = sorted(OPTAX)
    population = encode_population([get_program(n) for n in names], max_len=16, num_state=3)
    run = jax.vmap(lambda enc, n: trajectory(encoded_transform(enc, LR_VALUE), n), (0, None))
    got = jax.jit(run)(jax.tree.map(jnp.asarray, population), NOISE)
    for i, name in enumerate(names):
        want = jax.jit(lambda n, name=name: trajectory(OPTAX[name](LR_VALUE), n))(NOISE)
        error = max_relative_error(jax.tree.map(lambda x, i=i: x[i], got), want)
        assert error <= TOLERANCE, name


def test_encoded_interpreter_equals_op_by_op_interpreter_on_every_op(one_op_program):
    """Every op, in the prologue (scalar operands) or the body, through both interpreters; the
    population's slot ops are passed unbatched, so slot 0 (~30 ops) computes all ops and the
    other slots loop over the few they hold."""
    names = sorted(OPS)
    programs = [one_op_program(name) for name in names]
    population = jax.tree.map(jnp.asarray, encode_population(programs, max_len=4))
    ops = slot_ops(population.body_ops)
    assert int(ops.counts.max()) > LOOP_MAX_OPS >= int(ops.counts.min())
    noise_t = noises(3)
    run = jax.vmap(lambda enc, n: trajectory(encoded_transform(enc, 1e-3, ops), n), (0, None))
    got = jax.jit(run)(population, noise_t)
    for i, (name, program) in enumerate(zip(names, programs, strict=True)):
        want = trajectory_eager(program_transform(program, 1e-3), noise_t)
        error = max_relative_error(jax.tree.map(lambda x, i=i: x[i], got), want)
        assert error <= TOLERANCE, name


def test_step_extra_arg_and_schedule_set_t_and_lr():
    """`t` and `lr` come from the step (shared by both interpreters' transform wrapper)."""
    schedule = optax.linear_schedule(1.0, 0.0, 10)
    program = Program(  # u = lr * t * g: reads both
        (Instruction("mul", R, (LR, T)), Instruction("scale", R, (R, G))), update=R
    )
    params = {"x": jnp.ones(3)}
    grads = {"x": jnp.full(3, 2.0)}
    transform = program_transform(program, schedule)
    state = transform.init(params)
    updates, state = transform.update(grads, state, params)  # own count 0: t=1, lr=1
    np.testing.assert_allclose(updates["x"], -2.0)
    updates, _ = transform.update(grads, state, params, step=4)  # t=5, lr=0.6
    np.testing.assert_allclose(updates["x"], -0.6 * 5 * 2.0, rtol=1e-6)


def test_update_needs_params_only_when_the_program_reads_w():
    grads = {"x": jnp.ones(3)}
    sgd = program_transform(get_program("sgd"), 0.1)
    updates, _ = sgd.update(grads, sgd.init(grads))
    np.testing.assert_allclose(updates["x"], -0.1)
    adamw = program_transform(get_program("adamw"), 0.1)
    with pytest.raises(ValueError, match="pass params"):
        adamw.update(grads, adamw.init(grads))


def test_no_retrace_and_state_structure_kept():
    traces = []
    transform = program_transform(get_program("adam"), 1e-3)

    @jax.jit
    def update(grads, state, params):
        traces.append(1)
        return transform.update(grads, state, params)

    params = random_params(jax.random.key(2))
    state = transform.init(params)
    updates, new_state = update(params, state, params)
    updates, new_state = update(updates, new_state, params)
    assert len(traces) == 1
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert all(
        u.dtype == p.dtype for u, p in zip(*map(jax.tree.leaves, (updates, params)), strict=True)
    )
