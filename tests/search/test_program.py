"""The op table, the program IR (typing, JSON, dead code), warm starts and the encoding."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from search.encoding import (
    align,
    encode,
    encode_population,
    encoded_length,
    scalar_file_size,
)
from search.ops import NOP_ID, OPS, OPS_BY_ID, SAME, TENSOR, apply
from search.program import LR, NUM_FIXED, G, Instruction, Program, T, W
from search.programs_library import PROGRAMS, get_program

S1 = NUM_FIXED
R = NUM_FIXED + 2  # a scratch register of a program with up to two state slots


def test_op_table_is_a_stable_plain_dict():
    assert 40 <= len(OPS) <= 50
    assert sorted(OPS_BY_ID) == list(range(1, len(OPS) + 1))
    assert NOP_ID not in OPS_BY_ID
    # Ids are part of the encoding: these must never change.
    assert (OPS["const"].id, OPS["add"].id, OPS["interp_c"].id, OPS["cosine"].id) == (1, 23, 31, 45)
    for name, op in OPS.items():
        assert op.name == name and op.doc


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_is_total_on_hostile_inputs(name):
    """Zeros, tiny and huge values (squares still finite) never give NaN."""
    op = OPS[name]
    x = jnp.array([0.0, -0.0, 1e-30, -1e-30, 1e15, -1e15, 3.0, -2.0])
    args = [x if kind != "scalar" else jnp.float32(0.0) for kind in op.operands]
    args = [jnp.roll(a, i) if a.ndim else a for i, a in enumerate(args)]
    out = apply(op, args, np.float32(0.0))
    assert not jnp.any(jnp.isnan(out)), f"{name} gives NaN on finite inputs: {out}"
    kinds = tuple(TENSOR if a.ndim else "scalar" for a in args)
    want = TENSOR if op.result == SAME and TENSOR in kinds else op.result
    assert (out.ndim > 0) == (want == TENSOR or (op.result == SAME and TENSOR in kinds))


def test_warm_start_programs_are_valid_and_small():
    for name, factory in PROGRAMS.items():
        program = factory()
        assert program.live_instructions() == program.instructions, name
        assert get_program(name) == program
    assert get_program("adam", b1=0.5).instructions[0].const == 0.5
    with pytest.raises(ValueError, match="valid programs"):
        get_program("adagrad")


def test_type_checking_rejects_scalar_op_on_tensor_slot():
    with pytest.raises(ValueError, match=r"scale.*operand 0 must be a scalar, got a tensor"):
        Program((Instruction("scale", R, (G, G)),), update=R)
    with pytest.raises(ValueError, match=r"norm.*operand 0 must be a tensor, got a scalar"):
        Program((Instruction("norm", R, (LR,)), Instruction("mul", R, (R, G))), update=R)


def test_type_checking_rejects_wrong_arity_and_bad_registers():
    with pytest.raises(ValueError, match="takes 2 operands, got 1"):
        Program((Instruction("add", R, (G,)),), update=R)
    with pytest.raises(ValueError, match="unknown op 'adam_step'"):
        Program((Instruction("adam_step", R, (G,)),), update=R)
    with pytest.raises(ValueError, match="read-only"):
        Program((Instruction("neg", G, (G,)),), update=G)
    with pytest.raises(ValueError, match="before it is written"):
        Program((Instruction("add", R, (G, R + 1)),), update=R)
    with pytest.raises(ValueError, match="out of range"):
        Program((Instruction("add", R, (G, 99)),), update=R)


def test_outputs_must_be_written_tensors():
    with pytest.raises(ValueError, match="never written"):
        Program((Instruction("add", R, (G, G)),), update=R + 1)
    with pytest.raises(ValueError, match="must hold a tensor, but it is a scalar"):
        Program((Instruction("mul", R, (LR, T)),), update=R)
    with pytest.raises(ValueError, match="state"):
        Program((), update=G, new_state=(R,))


def test_constants_must_be_finite():
    for bad in (float("nan"), float("inf"), 1e300, "0.9", True):
        with pytest.raises(ValueError, match="const"):
            Instruction("scale_c", R, (G,), bad)


def test_live_instructions_drop_dead_code():
    program = Program(
        (
            Instruction("square", R, (G,)),  # dead: overwritten before use
            Instruction("sign", R, (G,)),
            Instruction("exp", R + 1, (W,)),  # dead: never read
            Instruction("mul", R, (LR, R)),
        ),
        update=R,
    )
    assert program.live_indices() == (1, 3)
    assert program.without_dead_code().instructions == program.live_instructions()
    assert encoded_length(program) == 2


def test_json_round_trip_is_exact():
    for factory in PROGRAMS.values():
        program = factory()
        text = json.dumps(program.to_json())
        assert Program.from_json(json.loads(text)) == program
    text = get_program("lion").format()
    assert "r10 = interp_c(s1, g; 0.1)" in text and "s1 = interp_c(s1, g; 0.01)" in text


def test_from_json_rejects_unknown_and_missing_keys():
    data = get_program("sgd").to_json()
    with pytest.raises(ValueError, match="unknown keys"):
        Program.from_json({**data, "code": "print(1)"})
    with pytest.raises(ValueError, match="lacks"):
        Program.from_json({k: v for k, v in data.items() if k != "update"})
    bad = json.loads(json.dumps(data))
    bad["instructions"][0]["args"] = ["g", "lr"]
    with pytest.raises(ValueError, match="register numbers"):
        Program.from_json(bad)


def test_encoding_splits_scalar_prologue_from_tensor_body():
    program = get_program("adam")
    enc = encode(program, max_len=12)
    n_prologue = int(np.sum(enc.prologue_ops != NOP_ID))
    n_body = int(np.sum(enc.body_ops != NOP_ID))
    assert (n_prologue, n_body) == (6, 9)  # the bias corrections run on scalars
    assert enc.body_args.max() < scalar_file_size(12) + 2 + 2 + 12
    with pytest.raises(ValueError, match="max_len is 8"):
        encode(program, max_len=8)
    population = encode_population([get_program(n) for n in PROGRAMS])
    # adafactor's 21 body instructions, rounded up to a multiple of 4; orthogonal_adam_hd's 4 slots
    assert population.body_ops.shape == (len(PROGRAMS), 24)
    assert population.outputs.shape == (len(PROGRAMS), 5)
    assert population.num_state == 4 and population.max_len == 24
    sgd = encode(get_program("sgd"), 4, num_state=2)
    assert list(sgd.outputs[1:]) == [2, 3]  # unused state slots keep their (zero) inputs


def test_alignment_shares_slots_between_related_bodies():
    add, mul, sign = (OPS[n].id for n in ("add", "mul", "sign"))
    slots = align([[mul, add, mul], [add, mul], [sign, mul]], max_len=4)
    assert slots == [[0, 1, 2], [1, 2], [0, 2]]
    for body, positions in zip(
        [[1, 2, 3, 4], [4, 3]], align([[1, 2, 3, 4], [4, 3]], 4), strict=True
    ):
        assert len(positions) == len(body) and positions == sorted(set(positions))
    programs = [get_program(n) for n in PROGRAMS]
    aligned = encode_population(programs, 24, 4)
    packed = encode_population(programs, 24, 4, aligned=False)
    distinct = [len(set(col) - {NOP_ID}) for col in aligned.body_ops.T]
    assert sum(distinct) < sum(len(set(col) - {NOP_ID}) for col in packed.body_ops.T)


def test_program_is_a_hashable_value():
    assert len({get_program("lion"), get_program("lion"), get_program("sgd")}) == 2
    assert jax.tree_util.tree_leaves(encode(get_program("sgd"), 4))  # arrays, a pytree
