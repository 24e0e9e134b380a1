"""Rules whose update does not depend on the learning rate: by data flow, through the state, and
numerically; op by op and vmapped over a population alike."""

from __future__ import annotations

import pytest

from search.learning_rate import ignores_learning_rate, reads_learning_rate
from search.program import LR, NUM_FIXED, G, Instruction, Program
from search.programs_library import PROGRAMS, get_program

S1, R = NUM_FIXED, NUM_FIXED + 1


def rule(*instructions: tuple, update: int = R, new_state: tuple[int, ...] = ()) -> Program:
    return Program(tuple(Instruction(*i) for i in instructions), update, new_state)


CASES = {  # name: (program, reads lr, ignores lr)
    "0.5 g": (rule(("scale_c", R, (G,), 0.5)), False, True),
    "lr overwritten": (rule(("mul", R, (LR, G)), ("sign", R, (G,))), False, True),
    "lr only in an unread state": (
        rule(("mul", S1, (LR, G)), ("copy", R, (G,)), new_state=(S1,)), False, True),
    "sign(lr g)": (rule(("mul", R, (LR, G)), ("sign", R, (R,))), True, True),
    "normalize(lr g)": (rule(("mul", R, (LR, G)), ("normalize", R, (R,))), True, True),
    "lr g": (rule(("mul", R, (LR, G))), True, False),
    "g + the last step's lr g": (
        rule(("add", R, (S1, G)), ("mul", S1, (LR, G)), new_state=(S1,)), True, False),
    "clip(g, lr)": (rule(("clip", R, (G, LR))), True, False),
    "sign(lr g) (1e20 g)^3, overflowing": (
        rule(("mul", R, (LR, G)), ("sign", R, (R,)), ("scale_c", R + 1, (G,), 1e20),
             ("cube", R + 1, (R + 1,)), ("mul", R, (R, R + 1))), True, False),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_reads_learning_rate_follows_the_data_flow(name):
    program, reads, _ = CASES[name]
    assert reads_learning_rate(program) is reads


def test_lr_through_two_state_slots_counts():
    """`s2` holds lr g, `s1` takes `s2`'s last value, the update reads `s1`: two steps late."""
    s2 = NUM_FIXED + 1
    program = Program(
        (Instruction("mul", R + 1, (LR, G)), Instruction("add", R + 2, (S1, G))),
        R + 2,
        (s2, R + 1),
        num_registers=NUM_FIXED + 4,
    )
    assert reads_learning_rate(program)
    assert not reads_learning_rate(program.replace(new_state=(S1, R + 1)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_ignores_learning_rate_op_by_op(name):
    program, _, ignores = CASES[name]
    assert ignores_learning_rate([program], op_by_op=True) == [ignores]


@pytest.mark.slow  # compiles the encoded interpreter (the search compiles it anyway)
def test_a_population_vmapped_agrees_with_op_by_op():
    names = sorted(CASES)
    programs = [CASES[n][0] for n in names] + [get_program(n) for n in sorted(PROGRAMS)]
    assert ignores_learning_rate(programs) == [CASES[n][2] for n in names] + [False] * len(PROGRAMS)
