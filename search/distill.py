"""Distilling an optimizer into a symbolic rule: the fitness of a program is how far its update
directions lie from an optimizer's recorded ones on the same weights and gradients (as Chen et
al. 2023, "Symbolic Discovery of Optimization Algorithms", compare Lion to known rules by what it
does, here made the objective of the search).

A `Stream` holds what an optimizer saw and did while training: the weights `w_t`, gradients `g_t`
and its update `u_t` (`w_{t+1} = w_t - u_t`) at every step. A program runs on the same `w_t, g_t`
(its own updates do not move `w`, so every program sees identical inputs), and at each step `t`
and for each parameter tensor `i` its update `p_{t,i}` is compared with the recorded `u_{t,i}`:

    fitness = 1 - mean_{streams, t, i} cos(p_{t,i}, u_{t,i}) + length_penalty * live instructions

The cosine sees the direction only, per tensor, so a program scaled by any positive constant (or
per-tensor factor) scores the same, and where a program reads `lr` does not matter to it: the
rule distilled is `lr` times the direction the search scored (`direction_rule`), with the
learning rate set afterwards (`matched_learning_rate`).
A cosine that is not finite (a zero or diverged update) counts as 0; steps where the recorded
update of a tensor is zero are left out.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from search.encoding import encode_population, encoded_length
from search.interpreter import ProgramState, encoded_transform, slot_ops
from search.program import LR, MAX_REGISTERS, MAX_STATE, Instruction, Program

Scorer = Callable[[Sequence[Program]], list[dict]]
TILE = 32  # programs per compiled call
MAX_LEN_MULTIPLE = 16  # encoded lengths are rounded up to it: few compilations


class Stream(NamedTuple):
    """Weights `ws`, gradients `gs` and updates `us` of one training run: pytrees of the
    params' structure whose leaves are `[steps, *shape]`; `w_{t+1} = w_t - u_t`."""

    ws: dict
    gs: dict
    us: dict


@jax.jit
def _tile_cosines(encoded, ws, gs, us, lr):
    """`(dot [P, steps, tensors], |p|^2 [P, steps, tensors])` of each program's updates `p` with
    the recorded `us`, the programs run on the stream `ws, gs` from zero state."""
    ops = slot_ops(encoded.body_ops)

    def one(enc):
        transform = encoded_transform(enc, lr, ops)
        zeros = jax.tree.map(lambda x: jnp.zeros(x.shape[1:], x.dtype), gs)
        state = ProgramState(jnp.zeros([], jnp.int32), (zeros,) * enc.num_state)

        def step(state, wgu):
            w, g, u = wgu
            updates, state = transform.update(g, state, w)
            p = [-x for x in jax.tree.leaves(updates)]
            dots = jnp.stack([jnp.vdot(a, b) for a, b in zip(p, jax.tree.leaves(u), strict=True)])
            norms = jnp.stack([jnp.vdot(a, a) for a in p])
            return state, (dots, norms)

        return jax.lax.scan(step, state, (ws, gs, us))[1]

    return jax.vmap(one)(encoded)


def update_cosines(programs: Sequence[Program], stream: Stream, learning_rate: float):
    """Per program, step and tensor: the cosine between its update and the recorded one
    `[P, steps, tensors]` (NaN where either is zero or not finite), and its update's norm
    `[P, steps, tensors]`; the programs run at `lr = learning_rate`."""
    steps, tensors = jax.tree.leaves(stream.gs)[0].shape[0], len(jax.tree.leaves(stream.gs))
    if not programs:
        return np.zeros((0, steps, tensors)), np.zeros((0, steps, tensors))
    longest = max(encoded_length(p) for p in programs)
    max_len = max(MAX_LEN_MULTIPLE, -(-longest // MAX_LEN_MULTIPLE) * MAX_LEN_MULTIPLE)
    recorded = np.stack(
        [np.sqrt(np.sum(np.square(np.asarray(u, np.float64)).reshape(steps, -1), axis=1))
         for u in jax.tree.leaves(stream.us)], axis=1
    )  # fmt: skip
    lr = jnp.float32(learning_rate)
    dots, norms = [], []
    for first in range(0, len(programs), TILE):
        part = list(programs[first : first + TILE])
        part += [part[0]] * (TILE - len(part))
        encoded = jax.tree.map(jnp.asarray, encode_population(part, max_len, MAX_STATE))
        dot, norm = _tile_cosines(encoded, stream.ws, stream.gs, stream.us, lr)
        dots.append(np.asarray(dot, np.float64))
        norms.append(np.sqrt(np.asarray(norm, np.float64)))
    dot, norm = np.concatenate(dots)[: len(programs)], np.concatenate(norms)[: len(programs)]
    with np.errstate(all="ignore"):
        cosine = dot / (norm * recorded[None])
    cosine = np.where(np.isfinite(cosine) & (norm > 0), cosine, np.nan)
    return cosine, norm


def mean_cosines(programs: Sequence[Program], streams: Sequence[Stream], learning_rate: float):
    """`[P, streams]`: each program's mean cosine to the recorded updates over the steps and
    tensors of each stream (a non-finite cosine counts as 0; tensors whose recorded update is
    zero at a step are left out)."""
    out = np.zeros((len(programs), len(streams)))
    for j, stream in enumerate(streams):
        cosine, _ = update_cosines(programs, stream, learning_rate)
        counted = _recorded_nonzero(stream)[None] & np.ones(cosine.shape, bool)
        values = np.where(np.isnan(cosine), 0.0, cosine)
        out[:, j] = np.sum(values * counted, axis=(1, 2)) / max(1, int(counted[0].sum()))
    return out


def _recorded_nonzero(stream: Stream) -> np.ndarray:
    """`[steps, tensors]`: whether the recorded update of a tensor at a step is nonzero."""
    steps = jax.tree.leaves(stream.us)[0].shape[0]
    return np.stack(
        [np.any(np.asarray(u).reshape(steps, -1) != 0, axis=1) for u in jax.tree.leaves(stream.us)],
        axis=1,
    )


def distill_records(
    programs: Sequence[Program],
    streams: Sequence[Stream],
    learning_rate: float,
    length_penalty: float = 0.0,
) -> list[dict]:
    """Fitness records of `programs` against recorded `streams`: `fitness` (lower is better,
    0 for the recorded rule itself at length 0), `cosine` (mean over streams), `cosines` (per
    stream), `length` (live instructions) and `penalized` (False: every value is finite)."""
    cosines = mean_cosines(programs, streams, learning_rate)
    records = []
    for program, row in zip(programs, cosines, strict=True):
        length = len(program.live_instructions())
        cosine = float(np.mean(row))
        records.append({
            "fitness": 1.0 - cosine + length_penalty * length,
            "cosine": cosine,
            "cosines": [float(c) for c in row],
            "length": length,
            "penalized": False,
        })  # fmt: skip
    return records


def make_distill_scorer(
    streams: Sequence[Stream], learning_rate: float, length_penalty: float = 0.0
) -> Scorer:
    """`distill_records` on fixed `streams` as a scorer for `search.evolution.make_evolution`."""
    if not streams:
        raise ValueError("distillation needs at least one recorded stream")
    return functools.partial(
        distill_records, streams=tuple(streams), learning_rate=learning_rate,
        length_penalty=length_penalty,
    )  # fmt: skip


def matched_learning_rate(
    program: Program, streams: Sequence[Stream], learning_rate: float
) -> float:
    """The learning rate at which `program`'s updates have the recorded updates' size: the
    probe `learning_rate` times the median over streams and steps of `|u_t| / |p_t|` (norms
    over all tensors of a step; exact for programs whose update is linear in `lr`). NaN if the
    program's updates are all zero."""
    ratios = []
    for stream in streams:
        _, norm = update_cosines([program], stream, learning_rate)
        steps = norm.shape[1]
        recorded = np.sqrt(sum(
            np.sum(np.square(np.asarray(u, np.float64)).reshape(steps, -1), axis=1)
            for u in jax.tree.leaves(stream.us)
        ))  # fmt: skip
        found = np.sqrt(np.sum(np.square(norm[0]), axis=1))
        ok = (found > 0) & np.isfinite(found) & (recorded > 0)
        ratios.append(recorded[ok] / found[ok])
    ratios = np.concatenate(ratios)
    return float(learning_rate * np.median(ratios)) if ratios.size else float("nan")


def direction_rule(program: Program, learning_rate: float) -> Program:
    """`u = lr d`, with `d` the update of `program` at `lr = learning_rate` (the direction the
    search scored at that probe learning rate): a rule exactly linear in `lr` whatever the
    program did with it, and as close to the recorded updates as `program` at the probe."""
    probe, out = program.num_registers, program.num_registers + 1
    if out >= MAX_REGISTERS:
        raise ValueError(f"a program of {program.num_registers} registers leaves no room for lr")
    body = [Instruction("const", probe, (), learning_rate)]
    body += [i.replace(args=tuple(probe if a == LR else a for a in i.args))
             for i in program.instructions]  # fmt: skip
    body.append(Instruction("mul", out, (LR, program.update)))
    return Program(tuple(body), out, program.new_state, program.num_registers + 2)
