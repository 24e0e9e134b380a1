"""Programs shared by the symbolic-search tests."""

import pytest

from search.program import LR, NUM_FIXED, ONE, G, Instruction, Program, T, W
from search.programs_library import adam


@pytest.fixture
def padded_adam() -> Program:
    """Adam plus instructions that change nothing: dead code, `clip(x, 1e6)`, `x (t / t)`,
    `x + (g - g)`, `x * one`."""

    def i(op: str, out: int, *args: int, c: float = 0.0) -> Instruction:
        return Instruction(op, out, args, c)

    base = adam()
    body = list(base.instructions[:-1])  # ends with the direction in `base.update`, before `lr *`
    r1, r5, r6 = base.update, NUM_FIXED + 6, NUM_FIXED + 7
    body += [
        i("exp", r6, W),  # dead
        i("const", r5, c=1e6),
        i("clip", r1, r1, r5),
        i("div", r5, T, T),
        i("mul", r1, r5, r1),
        i("sub", r6, G, G),
        i("add", r1, r1, r6),
        i("mul", r1, r1, ONE),
        i("mul", r1, LR, r1),
    ]
    return Program(tuple(body), r1, base.new_state, num_registers=NUM_FIXED + 8)
