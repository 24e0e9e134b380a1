"""Programs shared by the symbolic-search tests."""

import pytest

from search.ops import OPS, SCALAR, TENSOR
from search.program import LR, NUM_FIXED, ONE, G, Instruction, Program, T, W
from search.programs_library import adam

S1, R = NUM_FIXED, NUM_FIXED + 1


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


@pytest.fixture
def one_op_program():
    """`make(name)`: a program running op `name` once, on tensors (g, s1, w) or scalars (t, lr)
    as it takes, then `u = lr * result` (`lr * result * g` for a scalar result) and an EMA of `g`
    as state."""

    def make(name: str) -> Program:
        op = OPS[name]
        tensors, scalars = [G, S1, W], [T, LR, T]
        args = tuple(
            scalars[i] if kind == SCALAR or (kind != TENSOR and i == 1) else tensors[i]
            for i, kind in enumerate(op.operands)
        )
        kinds = [SCALAR if a in (LR, T) else TENSOR for a in args]
        tensor_out = op.result == TENSOR or (op.result == "same" and TENSOR in kinds)
        body = [Instruction(name, R, args, 0.3)]
        if not tensor_out:
            body.append(Instruction("scale", R, (R, G)))
        body += [Instruction("mul", R, (LR, R)), Instruction("interp_c", S1, (S1, G), 0.1)]
        return Program(tuple(body), update=R, new_state=(S1,))

    return make
