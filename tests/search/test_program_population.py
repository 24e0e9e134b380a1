"""A whole population in one call equals the programs trained one at a time, without retracing.

All populations here share one task object and one shape, so the module compiles the population
interpreter once.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from search.encoding import encode_population
from search.interpreter import population_losses, program_transform
from search.program import LR, NUM_FIXED, G, Instruction, Program
from search.programs_library import get_program
from tasks import get_task, train

STEPS = 20
LRS = np.array([0.01, 0.1], np.float32)
SEEDS = np.array([0, 3])
MAX_LEN, NUM_STATE = 16, 2
S1, R = NUM_FIXED, NUM_FIXED + 1
TRACES = []


def _counting_task():
    """A small task whose loss counts how often it is traced."""
    task = get_task("logistic_regression", num_examples=64, dim=8, batch_size=16)
    loss = task.loss

    def counting_loss(params, key, batch):
        TRACES.append(1)
        return loss(params, key, batch)

    return task.replace(loss=counting_loss)


TASK = _counting_task()


def losses_of(programs: list[Program]) -> dict[str, np.ndarray]:
    """`population_losses` in tiles of 2 programs (sorted, the last tile padded)."""
    population = encode_population(programs, MAX_LEN, NUM_STATE)
    return population_losses(TASK, population, LRS, SEEDS, STEPS, tile=2)


def normalized_momentum() -> Program:
    """A rule with reductions in the body: `s1 = 0.9 s1 + g / ||g||`, `u = lr clip(s1, 1)`."""
    return Program(
        (
            Instruction("norm", R, (G,)),
            Instruction("div", R, (G, R)),
            Instruction("scale_c", S1, (S1,), 0.9),
            Instruction("add", S1, (S1, R)),
            Instruction("clip_c", R, (S1,), 1.0),
            Instruction("mul", R, (LR, R)),
        ),
        update=R,
        new_state=(S1,),
    )


def blow_up() -> Program:
    """`u = (1e30 g)^3`, which overflows to inf."""
    return Program(
        (
            Instruction("const", R, (), 1e30),
            Instruction("scale", R, (R, G)),
            Instruction("cube", R, (R,)),
        ),
        update=R,
    )


def one_at_a_time(program: Program) -> dict[str, np.ndarray]:
    """Final train/valid losses `[L, S]` of `program`: `tasks.train` of its optax transform."""

    @jax.jit
    def run(lr, seed):
        optimizer = program_transform(program, lr)
        evaluate = {"eval_every": STEPS, "eval_splits": ("train", "valid")}
        _, metrics = train(TASK, optimizer, STEPS, jax.random.key(seed), **evaluate)
        return {k: metrics[k][-1] for k in ("train_loss", "valid_loss")}

    out = [[run(lr, seed) for seed in SEEDS] for lr in LRS]
    return {k: np.array([[o[k] for o in row] for row in out]) for k in ("train_loss", "valid_loss")}


@pytest.mark.slow
def test_population_equals_programs_one_at_a_time():
    names = ("momentum", "adamw", "lion", "signsgd")
    programs = [get_program(name) for name in names] + [normalized_momentum()]
    losses = losses_of(programs)
    assert losses["train_loss"].shape == (len(programs), len(LRS), len(SEEDS))
    for p, program in enumerate(programs):
        want = one_at_a_time(program)
        for key in ("train_loss", "valid_loss"):
            np.testing.assert_allclose(losses[key][p], want[key], rtol=1e-5, atol=1e-6)


def test_populations_of_one_shape_compile_once():
    first = [get_program(n) for n in ("sgd", "adam", "lion", "momentum", "adamw")]
    second = [get_program("adamw"), normalized_momentum(), blow_up(), get_program("sgd")]
    a = losses_of(first)
    traced = len(TRACES)
    b = losses_of([*second, get_program("signsgd")])
    assert traced > 0 and len(TRACES) == traced, "a population of the same shape retraced"
    assert not np.allclose(a["valid_loss"], b["valid_loss"])
    # Divergence stays NaN/inf here (a fitness turns it into a penalty later).
    assert not np.isfinite(b["train_loss"][2]).any()
    assert np.isfinite(b["train_loss"][[0, 1, 3, 4]]).all()
