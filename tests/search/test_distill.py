"""Distillation fitness: zero distance for the rule that made the recorded updates, invariance
to positive scaling, the matched learning rate, and an evolution with the distillation scorer
that moves from a bad warm start (SGD) towards the recorded rule (Adam).

Every test scores on one stream shape, so the module compiles the scorer once."""

import functools

import jax
import numpy as np
import optax
import pytest

from search.canonical import probe_updates
from search.distill import (
    Stream,
    direction_rule,
    distill_records,
    make_distill_scorer,
    matched_learning_rate,
)
from search.evolution import EvolutionConfig, make_evolution
from search.mutation import MutationConfig
from search.program import Instruction, Program
from search.programs_library import get_program
from search.rediscovery import probe_stream

LR = 1e-2


@functools.lru_cache(maxsize=1)
def adam_stream() -> Stream:
    """optax.adam's updates on the weights and gradients of `probe_stream` (not its own path)."""
    ws, gs = probe_stream(20, seed=0)
    optimizer = optax.adam(LR)
    state = optimizer.init(jax.tree.map(lambda x: x[0], ws))
    us = []
    for t in range(20):
        updates, state = optimizer.update(jax.tree.map(lambda x, t=t: x[t], gs), state)
        us.append(jax.tree.map(lambda u: -np.asarray(u), updates))
    return Stream(ws, gs, jax.tree.map(lambda *xs: np.stack(xs), *us))


def _scaled(program: Program, factor: float) -> Program:
    """`program` with its update multiplied by `factor`."""
    out = program.num_registers - 1
    body = (*program.instructions, Instruction("scale_c", out, (program.update,), factor))
    return program.replace(instructions=body, update=out)


def test_the_recorded_rule_scores_zero_and_scaling_changes_nothing():
    adam = get_program("adam")
    programs = [adam, _scaled(adam, 7.5), _scaled(adam, 1e-3), get_program("sgd")]
    records = distill_records(programs, [adam_stream()], LR)
    fitness = [r["fitness"] for r in records]
    assert fitness[0] == pytest.approx(0.0, abs=1e-5)
    assert fitness[1] == pytest.approx(fitness[0], abs=1e-6)
    assert fitness[2] == pytest.approx(fitness[0], abs=1e-6)
    assert fitness[3] > 0.05
    assert records[0]["cosines"] == [pytest.approx(1.0, abs=1e-5)]
    penalized = distill_records(programs[:1], [adam_stream()], LR, length_penalty=0.01)
    assert penalized[0]["fitness"] == pytest.approx(0.01 * len(adam.live_instructions()), abs=1e-5)


def test_a_negated_rule_scores_the_worst():
    (record,) = distill_records([_scaled(get_program("adam"), -1.0)], [adam_stream()], LR)
    assert record["fitness"] == pytest.approx(2.0, abs=1e-5)


def test_matched_learning_rate_recovers_the_recorded_step_size():
    adam = get_program("adam")
    assert matched_learning_rate(adam, [adam_stream()], LR) == pytest.approx(LR, rel=1e-4)
    assert matched_learning_rate(_scaled(adam, 4.0), [adam_stream()], LR) == pytest.approx(
        LR / 4, rel=1e-4
    )


def test_the_rule_of_a_direction_is_linear_in_lr_and_scores_as_the_program_at_the_probe():
    adam = get_program("adam")  # u = lr d: the rule is lr (LR d), at lr = 1 Adam's at LR
    rule = direction_rule(adam, LR)
    (a, b) = distill_records([adam, rule], [adam_stream()], LR)
    assert a["cosines"] == pytest.approx(b["cosines"], abs=1e-6)
    assert matched_learning_rate(rule, [adam_stream()], LR) == pytest.approx(1.0, rel=1e-4)
    ws, gs, _ = adam_stream()
    u1, u2 = (probe_updates([rule], ws, gs, lr)[0] for lr in (1.0, 3.0))
    np.testing.assert_allclose(u2, 3.0 * u1, rtol=1e-5)


@pytest.mark.slow
def test_evolution_with_the_distillation_scorer_moves_from_sgd_towards_adam():
    scorer = make_distill_scorer([adam_stream()], LR, length_penalty=0.001)
    config = EvolutionConfig(
        population_size=12, tournament_size=3, batch_size=8, warm_starts=(get_program("sgd"),),
        mutation=MutationConfig(max_instructions=8, max_state=1), funnel_top_k=2,
        funnel_tolerance=1.0, simplify=False,
    )  # fmt: skip
    evolution = make_evolution(config, None, scorer=scorer)
    state, _ = evolution.init(jax.random.key(0))
    start = state["reference"]["proxy"]["fitness"]
    for _ in range(12):
        state, _ = evolution.step(state)
    state, _ = evolution.finish(state)
    assert state["best_fitness"] < start - 0.1  # 0.319 -> 0.156 (seed 0)
    assert state["accepted"] is not None and state["accepted"]["fitness"] < start


def test_a_search_takes_a_proxy_suite_or_a_scorer():
    config = EvolutionConfig(warm_starts=(get_program("sgd"),))
    with pytest.raises(ValueError, match="either"):
        make_evolution(config, None)
