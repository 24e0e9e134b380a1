"""Greedy pruning: padding goes, what the fitness needs stays, never worse than the tolerance."""

from __future__ import annotations

import numpy as np
import pytest

from search.canonical import canonicalize, fingerprint_stream, probe_updates, structural_hash
from search.encoding import encode_population
from search.interpreter import population_losses
from search.program import LR, NUM_FIXED, G, Instruction, Program, T, W
from search.programs_library import adam
from search.simplify import removals, simplify
from tasks import get_task

R = NUM_FIXED + 2


def i(op: str, out: int, *args: int, c: float = 0.0) -> Instruction:
    return Instruction(op, out, args, c)


def ops_of(program: Program) -> list[str]:
    return [inst.op for inst in program.live_instructions()]


class Recorder:
    """A fitness that records the batch sizes it is called with."""

    def __init__(self, fn):
        self.fn, self.sizes = fn, []

    def __call__(self, programs):
        self.sizes.append(len(programs))
        return np.array([self.fn(p) for p in programs], np.float64)


def test_removals_forward_operands_of_the_same_kind():
    program = Program(
        (i("norm", R, G), i("scale", R + 1, R, G), i("clip_c", R + 1, R + 1, c=5.0)), R + 1
    )
    got = {tuple(ops_of(p)) for p in removals(program)}
    # scale(s, g) may forward g (a tensor) but not s (a scalar); norm(g) feeds only that scalar.
    assert got == {("clip_c",), ("norm", "mul")}
    assert all(canonicalize(p) == p for p in removals(program))


def test_only_what_the_fitness_needs_stays():
    program = Program(
        (
            i("sign", R, G),
            i("div", R + 1, T, T),
            i("mul", R, R, R + 1),
            i("clip_c", R, R, c=5.0),
            i("scale_c", R + 1, W, c=1e-3),
            i("add", R, R, R + 1),
            i("mul", R, LR, R),
        ),
        update=R,
    )
    fitness = Recorder(lambda p: 0.0 if "sign" in ops_of(p) else 1.0)
    simple = simplify(program, fitness)
    assert simple.instructions == (i("sign", NUM_FIXED, G),) and simple.update == NUM_FIXED
    # One call per round, the first with the original in front of its removals.
    assert fitness.sizes[0] == 1 + len(removals(canonicalize(program))) > 2
    assert len(fitness.sizes) <= len(program.instructions)


def test_tolerance_bounds_the_loss_of_fitness(padded_adam):
    program = padded_adam
    start = len(canonicalize(program).instructions)

    def size(p):
        return -len(p.instructions)  # every removal makes this worse

    fitness = Recorder(size)
    assert simplify(program, fitness) == canonicalize(program)
    assert len(fitness.sizes) == 1
    pruned = simplify(program, Recorder(size), tolerance=2.0)
    assert start - 2 <= len(pruned.instructions) < start


def test_fitness_must_score_every_program(padded_adam):
    with pytest.raises(ValueError, match="one number per program"):
        simplify(padded_adam, lambda programs: np.zeros(1))


def test_padding_is_pruned_back_to_adam_when_behaviour_is_the_fitness(padded_adam):
    """Fitness: distance of the updates from Adam's on a fixed stream; only exact no-ops go."""
    ws, gs = fingerprint_stream(8, 32, 0)
    target = probe_updates([adam()], ws, gs, 1e-2)[0]

    def distance(programs):
        updates = probe_updates(programs, ws, gs, 1e-2)
        return np.nan_to_num(np.abs(updates - target).mean(axis=(1, 2)), nan=np.inf)

    simple = simplify(padded_adam, distance)
    assert structural_hash(simple) == structural_hash(adam())


@pytest.mark.slow
def test_padding_is_pruned_on_a_real_task(padded_adam):
    """Fitness: final train loss of 50 steps on `quadratic_k100`, the whole batch in one
    `population_losses` call (batches padded to one shape, so it compiles once)."""
    task = get_task("quadratic_k100")
    batch = 32

    def losses(programs):
        assert len(programs) <= batch
        padded = [*programs, *[programs[0]] * (batch - len(programs))]
        population = encode_population(padded, 16, 2)
        out = population_losses(task, population, np.array([0.1]), np.array([0]), 50, tile=batch)
        return np.nan_to_num(out["train_loss"][: len(programs), 0, 0], nan=np.inf)

    program = padded_adam
    start = losses([program])[0]
    simple = simplify(program, losses, tolerance=1e-6 * start)
    assert len(simple.instructions) <= len(canonicalize(adam()).instructions)
    assert not {"clip_c", "add", "exp"} & set(ops_of(simple))
    assert sum(op == "div" for op in ops_of(simple)) <= 3  # Adam's; `t / t` is gone
    assert losses([simple])[0] <= start * (1 + 1e-6)
