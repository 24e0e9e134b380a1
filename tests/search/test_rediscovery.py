"""Rediscovery scores: each classic rule is closest to itself, and the scores order the classics
as their equations suggest."""

from __future__ import annotations

import numpy as np

from search.program import LR, NUM_FIXED, G, Instruction, Program, state_register
from search.programs_library import PROGRAMS, adam, get_program, momentum
from search.rediscovery import (
    REFERENCES,
    closest_reference,
    is_sign_momentum,
    probe_stream,
    rediscovery_similarity,
    reference_programs,
)

R = NUM_FIXED + 1


def test_reference_programs_are_the_library_rules():
    references = reference_programs()
    assert tuple(references) == REFERENCES
    assert all(program == get_program(name) for name, program in references.items())


def test_every_reference_is_closest_to_itself():
    for name, program in reference_programs().items():
        scores = rediscovery_similarity(program)
        assert scores[name] > 0.999
        assert closest_reference(program) == (name, scores[name])
        others = [v for k, v in scores.items() if k != name]
        assert max(others) < 0.95, (name, scores)
    assert closest_reference(get_program("adamw"))[0] == "adam"


def test_rescaled_and_negated_rules_score_plus_and_minus_one():
    base = adam()
    tripled = base.replace(
        instructions=(*base.instructions, Instruction("scale_c", base.update, (base.update,), 3.0))
    )
    assert rediscovery_similarity(tripled)["adam"] > 0.999
    negated = Program((Instruction("mul", R, (LR, G)), Instruction("neg", R, (R,))), R)
    assert rediscovery_similarity(negated)["sgd"] < -0.999


def test_scores_order_the_classics():
    sgd = rediscovery_similarity(get_program("sgd"))
    assert sgd["momentum"] < 0.97  # momentum 0.9 remembers ~10 steps: clearly not sgd
    assert sgd["signsgd"] < 0.9
    assert rediscovery_similarity(momentum(0.5))["sgd"] > sgd["momentum"]  # less memory
    lion, adam_scores = rediscovery_similarity(get_program("lion")), rediscovery_similarity(adam())
    assert lion["signsgd"] > adam_scores["sgd"] + 0.1  # both sign rules; scale-free vs linear
    assert adam_scores["signsgd"] > adam_scores["sgd"]


def test_probe_stream_is_fixed_by_its_seed_and_divergence_scores_zero():
    a, b, c = probe_stream(5, 0), probe_stream(5, 0), probe_stream(5, 1)
    for x, y, z in zip(a, b, c, strict=True):
        assert sorted(x) == ["matrix", "vector"] and x["vector"].shape[0] == 5
        assert all(np.array_equal(x[k], y[k]) for k in x)
        assert not all(np.array_equal(x[k], z[k]) for k in x)
    assert rediscovery_similarity(get_program("lion"), seed=1) != rediscovery_similarity(
        get_program("lion")
    )
    blow_up = Program(
        (
            Instruction("const", R, (), 1e30),
            Instruction("scale", R, (R, G)),
            Instruction("cube", R, (R,)),
            Instruction("sub", R, (R, R)),
        ),
        R,
    )
    assert rediscovery_similarity(blow_up) == dict.fromkeys(REFERENCES, 0.0)


def test_sign_momentum_is_a_sign_of_the_state_that_reaches_the_update():
    assert [name for name, make in PROGRAMS.items() if is_sign_momentum(make())] == ["lion"]
    S = state_register(0)
    new_m = Instruction("interp_c", S, (S, G), 0.1)
    signed = Instruction("sign", R, (S,))
    step = Instruction("mul", R, (LR, R))
    # sign of the updated momentum (the order Lion does not use): still sign-momentum
    assert is_sign_momentum(Program((new_m, signed, step), R, (S,)))
    # momentum of signs (the state averages sign(g)): not the sign of a momentum
    signs = Program(
        (Instruction("sign", R, (G,)), Instruction("interp_c", S, (S, R), 0.1),
         Instruction("mul", R, (LR, S))), R, (S,),
    )  # fmt: skip
    assert not is_sign_momentum(signs)
    # a sign of the state computed but not used by the update (dead code)
    dead = Program((signed, new_m, Instruction("mul", R, (LR, G))), R, (S,))
    assert not is_sign_momentum(dead)
    # the state's register overwritten by g before the sign: no state left in it
    overwritten = Program(
        (Instruction("copy", S, (G,)), signed, step, Instruction("copy", S, (G,))), R, (S,)
    )
    assert not is_sign_momentum(overwritten)
