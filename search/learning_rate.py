"""Whether an update rule's update depends on its learning rate `lr` (Chen et al. 2023, "Symbolic
Discovery of Optimization Algorithms", tune the learning rate of every rule they compare): a rule
that ignores it has its step size frozen in its constants, and tuning `lr` changes nothing.

A rule ignores `lr` when no data flow carries `lr` to the update (within a step, or through the
state to later steps), or when its updates on one stream of weights and gradients are the same
at each learning rate of `LEARNING_RATES`, 10x apart (as for `sign(lr g)`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from search.canonical import probe_shapes, probe_updates
from search.interpreter import program_transform
from search.mutation import rng_from_key
from search.program import LR, Program, state_register

LEARNING_RATES = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
# Updates that change by less than 0.1% over six decades of `lr` do not depend on it: tuning it
# chooses nothing. (`lr` cancelled up to a guard, as in `normalize(lr g)` whose `+1e-12` acts
# on gradients of 1e-8, leaves ~1e-4; float32 rounding ~1e-7.)
RTOL = 1e-3
NUM_STEPS = 16  # lr reaches the update in step 1, through the state from step 2
NUM_PARAMS = 32


def reads_learning_rate(program: Program) -> bool:
    """Whether `lr` reaches the update through the program's data flow, in the same step or
    through state slots in later ones (a fixed point over the slots)."""
    carrying: set[int] = set()  # state slots whose value depends on lr
    while True:
        tainted = {LR} | {state_register(i) for i in carrying}
        for inst in program.instructions:
            if tainted.intersection(inst.args):
                tainted.add(inst.out)
            else:
                tainted.discard(inst.out)
        more = {i for i, r in enumerate(program.new_state) if r in tainted} - carrying
        if not more:
            return program.update in tainted
        carrying |= more


def ignores_learning_rate(
    programs: Sequence[Program],
    *,
    op_by_op: bool = False,
    num_steps: int = NUM_STEPS,
    num_params: int = NUM_PARAMS,
    seed: int = 0,
) -> list[bool]:
    """Per program, whether its update does not depend on `lr`.

    A program that does not `reads_learning_rate` ignores it. The others run `num_steps` steps
    on random weights and gradients of two tensors of about `num_params` entries (from `seed`)
    at each learning rate of `LEARNING_RATES`; a program ignores `lr` if its updates are finite
    and those at every learning rate equal those at the first (to `RTOL` relatively). Updates
    that overflow tell nothing: such a rule counts as reading `lr` (and diverges when trained).

    Args:
      programs: the rules.
      op_by_op: run each program through `search.interpreter.program_transform` (a small
        compilation per program: for a few rules) instead of vmapped through the encoded
        interpreter (`search.canonical.probe_updates`: one compilation for any population).

    Returns:
      One bool per program, in order.
    """
    out = [not reads_learning_rate(p) for p in programs]
    readers = [programs[i] for i, ignores in enumerate(out) if not ignores]
    if not readers:
        return out
    ws, gs = _stream(num_steps, num_params, seed)
    if op_by_op:
        updates = np.stack([_updates_op_by_op(p, ws, gs) for p in readers])
    else:
        updates = np.stack([probe_updates(readers, ws, gs, lr) for lr in LEARNING_RATES], 1)
    updates = updates.reshape(len(readers), len(LEARNING_RATES), -1)
    close = np.isclose(updates, updates[:, :1], rtol=RTOL, atol=0.0) & np.isfinite(updates)
    same = iter(close.all(axis=(1, 2)))
    return [ignores or bool(next(same)) for ignores in out]


def _stream(num_steps: int, num_params: int, seed: int):
    """Weights and gradients `(ws, gs)`, `[num_steps, ...]`, of the two tensors of
    `search.canonical.probe_shapes(num_params)`: standard normal, the matrix's gradients 100x
    smaller (float32, from a NumPy Generator seeded by `jax.random.key(seed)`)."""
    rng = rng_from_key(jax.random.key(seed))
    ws, gs = {}, {}
    for name, shape in sorted(probe_shapes(num_params).items()):
        scale = np.float32(0.01 if name == "matrix" else 1.0)
        ws[name] = rng.standard_normal((num_steps, *shape), np.float32)
        gs[name] = scale * rng.standard_normal((num_steps, *shape), np.float32)
    return ws, gs


def _updates_op_by_op(program: Program, ws, gs) -> np.ndarray:
    """The updates `u` of `program` at each of `LEARNING_RATES` on the stream `ws, gs`,
    `[learning rates, steps, ...]`, through `search.interpreter.program_transform`."""

    def run(lr):
        transform = program_transform(program, lr)

        def step(state, wg):
            updates, state = transform.update(wg[1], state, wg[0])
            return state, jax.tree.leaves(updates)

        first = jax.tree.map(lambda x: x[0], ws)
        _, updates = jax.lax.scan(step, transform.init(first), (ws, gs))
        return -jnp.concatenate([u.reshape(u.shape[0], -1) for u in updates], axis=1)

    return np.asarray(jax.jit(jax.vmap(run))(jnp.asarray(LEARNING_RATES, jnp.float32)))
