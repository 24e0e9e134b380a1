"""Programs as optax transforms: one program traced op by op, or an encoded population run by one
compiled interpreter (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms").

Both apply the rule to each parameter tensor (the encoded one to all tensors concatenated, with
reductions per tensor and the matrix ops on each tensor in its own shape), with `k` state tensors
per parameter tensor (zero at first), `t = step + 1` from the `step` extra argument or their own
count, and the learning rate a float or an optax schedule of the step. They return `-u`, since
optax adds updates.

The encoded interpreter's op codes are data. Under `vmap` over programs a `lax.switch` on a
per-program op id lowers to computing every op and selecting one, so each body instruction slot
instead loops over the ops that *any* program of the batch runs at that slot (`slot_ops`,
unbatched), each a real `lax.switch` branch over the whole batch, and falls back to computing
all ops when more than `LOOP_MAX_OPS` differ. `population_losses` runs sorted tiles of programs,
so that each tile holds few distinct ops. `bench/search.py` measures the choices on CPU.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from search.encoding import (
    BODY_OPS,
    MAX_ARGS,
    NUM_SCALAR_INPUTS,
    NUM_TENSOR_INPUTS,
    EncodedProgram,
    scalar_file_size,
    tensor_file_size,
)
from search.ops import NUM_OP_IDS, OPS, OPS_BY_ID, TENSOR, WHOLE, Op, Reducer, apply
from search.program import CONSTANTS, Program, W
from tasks import Task, train
from tasks.sharding import device_mesh, pad, replicated, shard_population

LOSS_SPLITS = ("train", "valid")
LOOP_MAX_OPS = 16  # about where looping costs as much as computing all ops (bench/search.py)


class ProgramState(NamedTuple):
    """Step count and the state slots `s1..sk`, each a pytree like the params."""

    count: jax.Array
    slots: tuple[optax.Updates, ...]


def run_program(program: Program, w, g, lr, t, slots) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """`(u, new slots)` of `program` on one tensor `w` with gradient `g` and state `slots`."""
    constants = [jnp.asarray(value, g.dtype) for _, value in CONSTANTS]
    regs = [w, g, jnp.asarray(lr, g.dtype), jnp.asarray(t, g.dtype), *constants, *slots]
    regs += [None] * (program.num_registers - len(regs))
    for inst in program.live_instructions():
        c = np.float32(inst.const)  # float32 like the encoding, so both compute alike
        regs[inst.out] = apply(OPS[inst.op], [regs[a] for a in inst.args], c)
    return regs[program.update], tuple(regs[r] for r in program.new_state)


def _step_lr_t(learning_rate: optax.ScalarOrSchedule, count: jax.Array, step):
    """The step used (`step` extra arg, else the count), the learning rate and `t = step + 1`."""
    step = count if step is None else jnp.asarray(step, jnp.int32)
    lr = learning_rate(step) if callable(learning_rate) else learning_rate
    return jnp.asarray(lr, jnp.float32), (step + 1).astype(jnp.float32)


def _transform(tree_rule_factory, num_slots: int, learning_rate, needs_params: bool):
    """The optax transform around `tree_rule_factory(lr, t) -> tree_rule`, where
    `tree_rule(w leaves, g leaves, slot leaves per slot) -> (u leaves, new slot leaves per slot)`;
    it returns the updates `-u`."""

    def init_fn(params):
        slots = tuple(optax.tree.zeros_like(params) for _ in range(num_slots))
        return ProgramState(jnp.zeros([], jnp.int32), slots)

    def update_fn(updates, state, params=None, *, step=None, **extra_args):
        del extra_args
        if params is None and needs_params:
            raise ValueError("this update rule reads the weights w: pass params to update")
        lr, t = _step_lr_t(learning_rate, state.count, step)
        g, treedef = jax.tree.flatten(updates)
        w = g if params is None else treedef.flatten_up_to(params)
        slots = [treedef.flatten_up_to(s) for s in state.slots]
        u, new_slots = tree_rule_factory(lr, t)(w, g, slots)
        updates = treedef.unflatten([(-ui).astype(gi.dtype) for ui, gi in zip(u, g, strict=True)])
        new_slots = tuple(
            treedef.unflatten([n.astype(o.dtype) for n, o in zip(new, old, strict=True)])
            for new, old in zip(new_slots, slots, strict=True)
        )
        return updates, ProgramState(optax.safe_increment(state.count), new_slots)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def program_transform(
    program: Program, learning_rate: optax.ScalarOrSchedule = 1e-3
) -> optax.GradientTransformationExtraArgs:
    """`program` as an optax transform, traced op by op (one compilation per program).

    Args:
      program: the update rule; `w <- w - u` with `u` its update output.
      learning_rate: the input `lr`, a float or an optax schedule of the step.

    Returns:
      An `optax.GradientTransformationExtraArgs` taking the optional extra arg `step`.
    """
    live = program.live_instructions()
    reads_w = any(W in inst.args for inst in live) or W in (program.update, *program.new_state)

    def tree_rule_factory(lr, t):
        def tree_rule(w, g, slots):
            outs = []
            for i in range(len(g)):
                outs.append(run_program(program, w[i], g[i], lr, t, [s[i] for s in slots]))
            u = [out[0] for out in outs]
            return u, [[out[1][j] for out in outs] for j in range(program.num_state)]

        return tree_rule

    return _transform(tree_rule_factory, program.num_state, learning_rate, reads_w)


_PROLOGUE_OPS = tuple(op for op in OPS_BY_ID.values() if TENSOR not in op.operands)


def _dense_index(ops: tuple[Op, ...]) -> np.ndarray:
    """Op id -> 1 + position in `ops` (0, the no-op, for ids not in `ops`)."""
    index = np.zeros(NUM_OP_IDS, np.int32)
    for i, op in enumerate(ops, 1):
        index[op.id] = i
    return index


_PROLOGUE_INDEX, _BODY_INDEX = _dense_index(_PROLOGUE_OPS), _dense_index(BODY_OPS)


def _op_values(ops: tuple[Op, ...], xs, c, reducer: Reducer) -> list[jax.Array]:
    """Zeros (the no-op), then every op of `ops` on the operands `xs`, shaped like `xs[0]`."""
    zeros = jnp.zeros_like(xs[0])
    values = [zeros]
    for op in ops:
        value = apply(op, xs[: op.arity], c, reducer)
        values.append(jnp.broadcast_to(value, zeros.shape).astype(zeros.dtype))
    return values


def _select_all(ops: tuple[Op, ...], index, xs, c, reducer: Reducer) -> jax.Array:
    """`ops[index - 1]` on `xs` (zeros for index 0): computes every op and selects one."""
    return jax.lax.select_n(index, *_op_values(ops, xs, c, reducer))


def segment_reducer(shapes: tuple[tuple[int, ...], ...]) -> Reducer:
    """Reductions over each segment of a flat vector that concatenates tensors of `shapes`;
    `per_tensor` sees each segment in its tensor's shape (of a flat vector only)."""
    sizes = [math.prod(shape) for shape in shapes]
    ends = np.cumsum(sizes, dtype=int)
    bounds = [(int(end - n), int(end)) for end, n in zip(ends, sizes, strict=True)]

    def per_segment(reduce):
        def segmented(x):
            parts = []
            for a, b in bounds:
                value = reduce(x[..., a:b], axis=-1, keepdims=True)
                parts.append(jnp.broadcast_to(value, (*x.shape[:-1], b - a)))
            return jnp.concatenate(parts, axis=-1)

        return segmented

    def per_tensor(f, x):
        parts = [f(x[a:b].reshape(shape)).reshape(-1)
                 for (a, b), shape in zip(bounds, shapes, strict=True)]  # fmt: skip
        return jnp.concatenate(parts)

    counts = np.repeat(np.asarray(sizes, np.float32), sizes)
    return Reducer(
        per_segment(jnp.sum), per_segment(jnp.max), lambda x: counts.astype(x.dtype), per_tensor
    )


class SlotOps(NamedTuple):
    """Which body ops occur at each instruction slot of a program or population: `ops [L, C]`
    holds indices into `(no-op, *BODY_OPS)`, the first `counts [L]` of each row valid."""

    ops: jax.Array
    counts: jax.Array


def slot_ops(body_ops: jax.Array) -> SlotOps:
    """The `SlotOps` of `body_ops [..., L]` (one program or a population; traceable)."""
    max_len = body_ops.shape[-1]
    dense = jnp.asarray(_BODY_INDEX)[body_ops].reshape(-1, max_len)
    present = jnp.zeros((max_len, len(BODY_OPS) + 1), bool)
    present = present.at[jnp.arange(max_len)[None, :], dense].set(True).at[:, 0].set(False)
    order = jnp.argsort(~present, axis=1, stable=True)  # present ops first
    return SlotOps(order.astype(jnp.int32), jnp.sum(present, axis=1, dtype=jnp.int32))


def _body_alu(index, xs, present_ops, count, reducer: Reducer) -> jax.Array:
    """`BODY_OPS[index - 1]` on `xs` (body ops take no constant). When `present_ops` (unbatched:
    the ops any program runs at this slot) has at most `LOOP_MAX_OPS` entries, only those run,
    one real `lax.switch` branch each over the whole batch; otherwise every op runs and one is
    selected."""
    zeros = jnp.zeros_like(xs[0])
    branches = [lambda xs, op=op: _op_values((op,), xs, 0.0, reducer)[1] for op in BODY_OPS]

    def loop(xs):
        def one(n, value):
            k = present_ops[n]
            return jnp.where(index == k, jax.lax.switch(k - 1, branches, xs), value)

        return jax.lax.fori_loop(0, count, one, zeros)

    def select_all(xs):
        return _select_all(BODY_OPS, index, xs, 0.0, reducer)

    return jax.lax.cond(count <= LOOP_MAX_OPS, loop, select_all, xs)


def run_prologue(encoded: EncodedProgram, lr, t) -> jax.Array:
    """The scalar file `[scalar_file_size(L)]` after the prologue (see `search.encoding`)."""
    inputs = [lr, t, *(value for _, value in CONSTANTS), 0.0]
    inputs = jnp.stack([jnp.asarray(x, jnp.float32) for x in inputs])
    scalars = jnp.zeros(scalar_file_size(encoded.max_len), jnp.float32)
    scalars = scalars.at[:NUM_SCALAR_INPUTS].set(inputs)
    first = NUM_SCALAR_INPUTS + encoded.max_len
    scalars = scalars.at[NUM_SCALAR_INPUTS:first].set(encoded.body_consts)

    def one(scalars, x):
        j, op_id, args, c = x
        index = jnp.asarray(_PROLOGUE_INDEX)[op_id]
        value = _select_all(_PROLOGUE_OPS, index, list(scalars[args]), c, WHOLE)
        return scalars.at[first + j].set(value), None

    xs = (jnp.arange(encoded.max_len), encoded.prologue_ops, encoded.prologue_args)
    scalars, _ = jax.lax.scan(one, scalars, (*xs, encoded.prologue_consts))
    return scalars


def run_body(encoded: EncodedProgram, scalars: jax.Array, w, g, slots, ops: SlotOps, shapes):
    """`(u, new slots)` of the encoded body on flat vectors `w, g, slots` that concatenate
    tensors of `shapes` (reductions reduce each one, matrix ops see its shape), given the
    prologue's scalar file."""
    size, k, reducer = g.shape[0], encoded.num_state, segment_reducer(shapes)
    n_scalar = scalar_file_size(encoded.max_len)
    n_tensor = tensor_file_size(encoded.max_len, k)
    tensors = (
        jnp.zeros((n_tensor, size), g.dtype)
        .at[: NUM_TENSOR_INPUTS + k]
        .set(jnp.stack([w, g, *slots]))
    )

    def read(tensors, address):
        scalar = jnp.broadcast_to(scalars[jnp.minimum(address, n_scalar - 1)], (size,))
        tensor = tensors[jnp.clip(address - n_scalar, 0, n_tensor - 1)]
        return jnp.where(address < n_scalar, scalar.astype(g.dtype), tensor)

    def one(tensors, x):
        j, op_id, args, present_ops, count = x
        xs = [read(tensors, args[i]) for i in range(MAX_ARGS)]
        value = _body_alu(jnp.asarray(_BODY_INDEX)[op_id], xs, present_ops, count, reducer)
        row = NUM_TENSOR_INPUTS + k + j
        return jax.lax.dynamic_update_slice(tensors, value[None], (row, 0)), None

    xs = (jnp.arange(encoded.max_len), encoded.body_ops, encoded.body_args, *ops)
    tensors, _ = jax.lax.scan(one, tensors, xs)
    outputs = tensors[encoded.outputs]
    return outputs[0], tuple(outputs[1:])


def encoded_transform(
    encoded: EncodedProgram,
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    ops: SlotOps | None = None,
) -> optax.GradientTransformationExtraArgs:
    """An encoded program as an optax transform whose op codes are data: vmap it over a
    population, or jit it once for any program of the same `max_len` and `num_state`.

    Args:
      encoded: one program of `search.encoding.encode` (arrays, possibly traced).
      learning_rate: the input `lr`, a float or an optax schedule of the step.
      ops: the ops occurring at each slot; when vmapping over a population, pass the
        population's `slot_ops(population.body_ops)` unbatched, so that each slot runs only the
        ops the population uses (default: this program's own, exact but batched under vmap).

    Returns:
      An `optax.GradientTransformationExtraArgs` taking the optional extra arg `step`; its
      `update` needs `params`.
    """
    ops = slot_ops(encoded.body_ops) if ops is None else ops

    def tree_rule_factory(lr, t):
        scalars = run_prologue(encoded, lr, t)

        def tree_rule(w, g, slots):
            """All tensors as one flat vector: the body runs (and compiles) once per update."""
            shapes, sizes = tuple(x.shape for x in g), tuple(x.size for x in g)
            dtype = jnp.result_type(*g)

            def flat(leaves):
                return jnp.concatenate([x.reshape(-1).astype(dtype) for x in leaves])

            def unflat(vector):
                parts = jnp.split(vector, np.cumsum(sizes)[:-1])
                return [p.reshape(shape) for p, shape in zip(parts, shapes, strict=True)]

            flat_slots = [flat(s) for s in slots]
            u, new = run_body(encoded, scalars, flat(w), flat(g), flat_slots, ops, shapes)
            return unflat(u), [unflat(s) for s in new]

        return tree_rule

    return _transform(tree_rule_factory, encoded.num_state, learning_rate, needs_params=True)


def _tiled_losses(task, encoded, learning_rates, seeds, num_steps: int, tile: int):
    """Final losses of a block of programs sorted by their body ops, run in tiles of `tile`."""

    def one(enc, lr, seed, ops):
        optimizer = encoded_transform(enc, lr, ops)
        key = jax.random.key(seed)
        evaluate = {"eval_every": num_steps, "eval_splits": LOSS_SPLITS}
        _, metrics = train(task, optimizer, num_steps, key, **evaluate)
        return {f"{split}_loss": metrics[f"{split}_loss"][-1] for split in LOSS_SPLITS}

    over_seeds = jax.vmap(one, in_axes=(None, None, 0, None))
    over_lrs = jax.vmap(over_seeds, in_axes=(None, 0, None, None))
    over_programs = jax.vmap(over_lrs, in_axes=(0, None, None, None))

    def run_tile(programs):
        return over_programs(programs, learning_rates, seeds, slot_ops(programs.body_ops))

    # Tiles of similar programs (the last tile padded with copies) run one after the other:
    # each runs only the ops its programs use, on cache-sized arrays.
    size = encoded.body_ops.shape[0]
    tile = min(tile, size)
    padded = -(-size // tile) * tile
    tiles = pad(encoded, padded)
    tiles = jax.tree.map(lambda x: x.reshape(padded // tile, tile, *x.shape[1:]), tiles)
    out = jax.lax.map(run_tile, tiles)
    return jax.tree.map(lambda x: x.reshape(padded, *x.shape[2:])[:size], out)


@functools.partial(jax.jit, static_argnames=("num_steps", "tile", "mesh"))
def _population_losses(task, encoded, learning_rates, seeds, num_steps, tile, mesh):
    # Programs sorted by body op sequence, so that each device's block, and each tile in it,
    # holds similar programs; the blocks are split over the devices of `mesh`.
    order = jnp.lexsort(encoded.body_ops.T[::-1])
    encoded = jax.tree.map(lambda x: x[order], encoded)
    run = functools.partial(_tiled_losses, num_steps=num_steps, tile=tile)
    out = shard_population(run, mesh, in_axes=(None, 0, None, None))(
        task, encoded, learning_rates, seeds
    )
    out = jax.tree.map(lambda x: x[jnp.argsort(order)], out)
    return jax.lax.with_sharding_constraint(out, replicated(mesh))  # every process reads it


def population_losses(
    task: Task,
    encoded_population: EncodedProgram,
    learning_rates: np.ndarray,
    seeds: np.ndarray,
    num_steps: int,
    *,
    tile: int = 128,
    mesh: Mesh | None = None,
) -> dict[str, np.ndarray]:
    """Final losses of every program x learning rate x seed, trained as ONE jitted call.

    Each run is `tasks.train` with the program's `encoded_transform`; the losses are its final
    evaluation on the train and valid splits. NaN and inf are returned as they are. Populations
    of the same shape (`[P]`, `max_len`, `num_state`), the same task, `num_steps` and `tile`
    reuse one compilation. Inside the call, programs sorted by their body ops are split over
    the devices of `mesh` (default: every device of every process) in contiguous blocks, and
    each device runs its block in tiles of `tile` (one after the other, each vmapped), so a
    tile runs few distinct ops on arrays that stay in cache (`bench/search.py` measures the
    tile size).

    Returns:
      `{"train_loss": [P, L, S], "valid_loss": [P, L, S]}` for `P` programs, `L` learning rates
      and `S` seeds.
    """
    mesh = device_mesh() if mesh is None else mesh
    encoded = EncodedProgram(*(jnp.asarray(x) for x in encoded_population))
    lrs, seeds = jnp.asarray(learning_rates, jnp.float32), jnp.asarray(seeds, jnp.int32)
    return jax.device_get(_population_losses(task, encoded, lrs, seeds, num_steps, tile, mesh))
