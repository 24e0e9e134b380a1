"""Regularized evolution on a tiny quadratic: it improves on a bad warm start, is deterministic,
resumes exactly from its JSON state, caches equivalent programs, penalizes divergence, rejects
rules that ignore the learning rate, restarts, and keeps its compiled shapes.

Every test uses one task object and one set of shapes, so the module compiles the population
interpreter once.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from search.evolution import (
    IGNORES_LR_FITNESS,
    EvolutionConfig,
    Suite,
    best_program,
    make_evolution,
    worst_in_window,
)
from search.learning_rate import ignores_learning_rate
from search.mutation import MutationConfig
from search.objective import PENALTY
from search.program import LR, NUM_FIXED, G, Instruction, Program
from search.programs_library import get_program
from tasks import get_task

TRACES = []


def _counting_task():
    """A small quadratic whose loss counts how often it is traced."""
    task = get_task("quadratic_k100", dim=8)
    loss = task.loss

    def counting_loss(params, key, batch):
        TRACES.append(1)
        return loss(params, key, batch)

    return task.replace(loss=counting_loss)


# SGD with a learning-rate grid far too small for 20 steps: a bad warm start to improve on.
PROXY = Suite(("quadratic",), (_counting_task(),), 20, (1e-4, 1e-3), (0,))
CONFIG = EvolutionConfig(
    population_size=24, tournament_size=4, batch_size=8, warm_starts=(get_program("sgd"),),
    funnel_every=5, funnel_top_k=8,
    mutation=MutationConfig(max_instructions=8, max_state=1),
)  # fmt: skip
EVOLUTION = make_evolution(CONFIG, PROXY)
R = NUM_FIXED + 3
GENERATIONS = 25


def _run(evolution, seed: int, generations: int):
    state, metrics = evolution.init(jax.random.key(seed))
    history = [metrics]
    for _ in range(generations):
        state, metrics = evolution.step(state)
        history.append(metrics)
    return state, history


def _deterministic(history):
    return [{k: v for k, v in m.items() if "seconds" not in k and k != "programs_per_second"}
            for m in history]  # fmt: skip


@pytest.fixture(scope="module")
def run():
    return _run(EVOLUTION, 0, GENERATIONS)


def test_evolution_improves_on_a_bad_warm_start(run):
    state, history = run
    best = [m["best_fitness"] for m in history]
    assert best == sorted(best, reverse=True), "the best so far never gets worse"
    assert best[-1] < best[0] - 0.5, best  # log-loss well below SGD's tuned loss (0)
    assert state["reference"]["proxy"]["losses"][0] > 1.0  # SGD barely moved
    program, passed = best_program(state)
    assert passed and state["accepted"]["funnel_fitness"] <= 0
    assert program != get_program("sgd")
    for m in history[1:]:
        assert 0 <= m["invalid_rate"] < 1 and 0 <= m["cache_hit_rate"] <= 1
        assert sum(v for k, v in m.items() if k.startswith("mutation/")) == CONFIG.batch_size


def test_same_seed_same_result_and_seeds_matter(run):
    state, history = run
    again, again_history = _run(EVOLUTION, 0, GENERATIONS)
    assert json.dumps(again) == json.dumps(state)
    assert _deterministic(again_history) == _deterministic(history)
    other, _ = _run(EVOLUTION, 1, 2)
    assert other["population"] != state["population"]


def test_resume_from_json_state_is_exact(run):
    state, history = run
    middle, _ = _run(EVOLUTION, 0, GENERATIONS - 7)
    restored = json.loads(json.dumps(middle))
    for _ in range(7):
        restored, metrics = EVOLUTION.step(restored)
    assert json.dumps(restored) == json.dumps(state)
    assert _deterministic([metrics]) == _deterministic(history[-1:])


def test_shapes_stay_fixed_across_generations(run):
    state, _ = run
    traced = len(TRACES)
    assert traced > 0
    for _ in range(3):
        state, _ = EVOLUTION.step(state)
    EVOLUTION.finish(state)
    assert len(TRACES) == traced, "a generation or the funnel recompiled"


def _renamed_sgd_with_dead_code() -> Program:
    """SGD on other registers, plus a dead instruction: the same rule."""
    return Program((Instruction("sign", R + 1, (G,)), Instruction("mul", R, (G, LR))), update=R)


def _blow_up() -> Program:
    """`u = lr (1e20 g)^3`, which overflows to inf."""
    return Program(
        (Instruction("const", R, (), 1e20), Instruction("scale", R, (R, G)),
         Instruction("cube", R, (R,)), Instruction("mul", R, (LR, R))),
        update=R,
    )  # fmt: skip


def test_equivalent_programs_are_evaluated_once(run):
    state, _ = run
    evaluated = state["counters"]["evaluated"]
    fresh = Program((Instruction("scale_c", R, (G,), 0.37), Instruction("mul", R, (LR, R))), R)
    programs = [fresh, _renamed_sgd_with_dead_code(), fresh, get_program("sgd")]
    state, records, stats = EVOLUTION.evaluate(state, programs)
    assert stats["evaluated"] == 1 and stats["cache_hits"] == 3
    assert state["counters"]["evaluated"] == evaluated + 1
    assert records[0] == records[2] and records[1] == records[3]
    assert records[3]["fitness"] == 0.0, "SGD is the reference"
    _, again, stats = EVOLUTION.evaluate(state, programs)
    assert again == records and stats["evaluated"] == 0


def test_diverging_programs_get_the_penalty_and_are_counted(run):
    state, _ = run
    state, records, stats = EVOLUTION.evaluate(state, [_blow_up(), get_program("sgd")])
    bad = records[0]
    assert bad["penalized"] and not records[1]["penalized"]
    assert bad["losses"] == [PENALTY] and np.isfinite(bad["fitness"])
    assert bad["fitness"] > 10
    assert stats["penalized"] == 1 and state["counters"]["penalized"] >= 1


def test_rules_that_ignore_the_learning_rate_are_not_trained_and_never_win(run):
    """`u = 0.01 g` steps as far as `lr 10 g` at lr 1e-3, which beats SGD here; but tuning its
    learning rate would choose nothing, so it is rejected without training."""
    state, _ = run
    fixed = Program((Instruction("scale_c", R, (G,), 0.01),), R)
    twin = Program((Instruction("scale_c", R, (G,), 10.0), Instruction("mul", R, (LR, R))), R)
    before = dict(state["counters"])
    state, (ignored, trained), stats = EVOLUTION.evaluate(state, [fixed, twin])
    assert trained["fitness"] < -0.5 and not trained.get("ignores_lr")
    assert ignored == {"fitness": IGNORES_LR_FITNESS, "losses": [], "lr_index": [],
                       "penalized": False, "ignores_lr": True}  # fmt: skip
    assert stats["ignores_lr"] == 1 and stats["evaluated"] == 2
    assert state["counters"]["ignores_lr"] == before["ignores_lr"] + 1
    # The run met such rules among its mutants and kept them out of the hall of fame.
    run_state, _ = run
    assert run_state["counters"]["ignores_lr"] > 0
    fame = [Program.from_json(m["program"]) for m in run_state["hall_of_fame"]]
    assert fame and not any(ignores_learning_rate(fame))
    assert max(m["fitness"] for m in run_state["population"]) == IGNORES_LR_FITNESS


def test_a_search_of_rules_that_all_ignore_lr_has_no_best():
    with pytest.raises(ValueError, match="ignores its learning rate"):
        best_program({"accepted": None, "hall_of_fame": []})


def test_restarts_reseed_from_the_best_and_the_warm_starts():
    config = dataclasses.replace(CONFIG, restart_after=1, funnel_every=0)
    evolution = make_evolution(config, PROXY)
    state, _ = evolution.init(jax.random.key(0))
    restarts = 0
    for _ in range(4):
        state, metrics = evolution.step(state)
        if metrics["restart"]:
            restarts += 1
            programs = [m["program"] for m in state["population"]]
            assert programs[0] == state["hall_of_fame"][0]["program"]
            assert programs[1] == get_program("sgd").to_json()
            assert state["last_improvement"] == state["generation"]
    assert restarts >= 1 and state["counters"]["restarts"] == restarts


def test_nothing_passes_an_impossible_funnel():
    config = dataclasses.replace(CONFIG, funnel_tolerance=-100.0)
    state, _ = _run(make_evolution(config, PROXY), 0, 1)
    state, metrics = make_evolution(config, PROXY).finish(state)
    assert state["accepted"] is None and metrics["accepted_fitness"] is None
    program, passed = best_program(state)
    assert not passed and program == Program.from_json(state["hall_of_fame"][0]["program"])


@pytest.mark.parametrize(
    "changes, message",
    [({"batch_size": 25}, "batch_size"), ({"tournament_size": 0}, "tournament_size"),
     ({"warm_starts": ()}, "random_programs"), ({"loss_floor": 0.0}, "loss_floor"),
     ({"lr_window": -1}, "lr_window")],
)  # fmt: skip
def test_bad_evolution_configs_raise(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(CONFIG, **changes)


def test_validity_on_the_proxy_itself_ranks_as_the_proxy_and_spreads_over_the_population():
    state, _ = EVOLUTION.init(jax.random.key(0))  # the first population: the most diverse
    same = EVOLUTION.validate(state, PROXY, 6)
    records = [(m, state["cache"][m["key"]]) for m in state["population"]]
    trained = {m["key"]: m["fitness"] for m, r in records
               if not (r["penalized"] or r.get("ignores_lr", False))}  # fmt: skip
    assert len(trained) > 6 and same["programs"] == 6
    for member in same["members"]:
        assert member["fitness"] == pytest.approx(trained[member["key"]], abs=1e-9)
    assert same["spearman"] == pytest.approx(1.0)
    fitness = sorted(m["proxy_fitness"] for m in same["members"])
    assert fitness[0] == min(trained.values()) and fitness[-1] == max(trained.values())
    # a longer run at larger rates ranks the rules otherwise: still a number in [-1, 1]
    longer = dataclasses.replace(PROXY, num_steps=40, learning_rates=(1e-2, 1e-1))
    other = EVOLUTION.validate(state, longer, 6)
    assert other["spearman"] is None or -1 <= other["spearman"] <= 1
    assert set(other["spearman_per_task"]) == {"quadratic"}
    assert json.loads(json.dumps(other)) == other


@pytest.mark.parametrize("half_width", [0, 1, 2, 7])
def test_worst_in_window_is_the_max_over_the_cut_window(half_width):
    losses = np.random.default_rng(half_width).lognormal(size=(3, 2, 6))
    want = np.stack([losses[..., max(0, i - half_width) : i + half_width + 1].max(-1)
                     for i in range(6)], -1)  # fmt: skip
    np.testing.assert_array_equal(worst_in_window(losses, half_width), want)


def test_a_window_tunes_the_reference_at_its_worst_neighbour():
    """SGD on the quadratic only gets better from lr 1e-4 to 1e-3 in 20 steps: over a window of
    one point either side, both grid points score the loss at 1e-4."""
    windowed = make_evolution(dataclasses.replace(CONFIG, lr_window=1), PROXY)
    small = make_evolution(CONFIG, dataclasses.replace(PROXY, learning_rates=(1e-4,)))
    plain = EVOLUTION.init(jax.random.key(0))[0]["reference"]["proxy"]["losses"]
    worst = windowed.init(jax.random.key(0))[0]["reference"]["proxy"]["losses"]
    at_small = small.init(jax.random.key(0))[0]["reference"]["proxy"]["losses"]
    assert worst == pytest.approx(at_small, rel=1e-6) and worst[0] > 1.5 * plain[0]
