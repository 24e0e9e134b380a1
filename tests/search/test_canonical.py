"""Canonical forms compute the same updates; equivalent programs share a form, a structural hash
and a behaviour fingerprint, different ones do not."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from search.canonical import (
    behaviour_fingerprints,
    canonicalize,
    fingerprint_stream,
    probe_updates,
    structural_hash,
)
from search.interpreter import program_transform
from search.ops import ANY, OPS, SCALAR, TENSOR, apply, result_kind
from search.program import (
    CONSTANTS,
    HALF,
    INPUTS,
    LR,
    MAX_REGISTERS,
    NUM_FIXED,
    ONE,
    TWO,
    G,
    Instruction,
    Program,
    T,
    W,
)
from search.programs_library import PROGRAMS, adam, get_program

S1, S2 = NUM_FIXED, NUM_FIXED + 1
R = NUM_FIXED + 2  # scratch registers of programs with up to two state slots
CONSTS = (0.0, 1.0, -1.0, 2.0, 0.5, 0.9, 0.1, 1e-3, 3.0)


def random_program(rng: np.random.Generator, length: int, num_state: int) -> Program:
    """A random well-typed program over every op, its operands mostly recent values, so that
    most instructions are live; constants drawn from a few round values."""
    num_registers = NUM_FIXED + num_state + 8
    kinds = [k for _, k in INPUTS] + [SCALAR] * len(CONSTANTS) + [TENSOR] * num_state
    kinds += [None] * (num_registers - len(kinds))
    recent = list(range(NUM_FIXED + num_state))
    names = sorted(OPS)
    insts = []
    while len(insts) < length:
        op = OPS[names[rng.integers(len(names))]]
        args = []
        for want in op.operands:
            pool = [r for r in recent if want == ANY or kinds[r] == want]
            near = pool[-1 - min(int(rng.geometric(0.5)) - 1, len(pool) - 1)]
            args.append(int(near if rng.random() < 0.7 else rng.choice(pool)))
        out = int(rng.integers(NUM_FIXED, num_registers))
        c = float(CONSTS[rng.integers(len(CONSTS))]) if rng.random() < 0.7 else rng.normal()
        insts.append(Instruction(op.name, out, tuple(args), c))
        kinds[out] = result_kind(op, tuple(kinds[a] for a in args))
        recent = [r for r in recent if r != out] + [out]
    written = {inst.out for inst in insts}
    tensors = [r for r in recent if kinds[r] == TENSOR and r in written]
    if len(tensors) < 2:  # too few tensor results: draw again
        return random_program(rng, length, num_state)
    new_state = tuple(int(rng.choice(tensors[-4:])) for _ in range(num_state))
    return Program(tuple(insts), tensors[-1], new_state, num_registers)


def random_programs(seed: int, count: int) -> list[Program]:
    rng = np.random.default_rng(seed)
    return [random_program(rng, int(rng.integers(4, 16)), int(rng.integers(0, 3)))
            for _ in range(count)]  # fmt: skip


def params_of(key) -> dict[str, jax.Array]:
    """Two tensors of one shape (op-by-op runs compile each op once per shape)."""
    k1, k2 = jax.random.split(key)
    return {"a": jax.random.normal(k1, (6,)), "b": 0.1 * jax.random.normal(k2, (6,))}


def update_stream(program: Program, steps: int = 6, lr: float = 0.05) -> list[np.ndarray]:
    """`program_transform`'s updates, op by op (no compilation), on noisy gradients of a
    parabola along its own trajectory; one flat vector per step."""
    transform = program_transform(program, lr)
    params = params_of(jax.random.key(0))
    state = transform.init(params)
    out = []
    for t in range(steps):
        noise = params_of(jax.random.key(t + 1))
        grads = jax.tree.map(lambda p, n: p + 0.5 * n, params, noise)
        updates, state = transform.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append(np.concatenate([np.ravel(x) for x in jax.tree.leaves(updates)]))
    return out


def same_rule(a: Program, b: Program) -> bool:
    """Equal canonical programs, ignoring the register file size."""
    ca, cb = canonicalize(a), canonicalize(b)
    return ca.replace(num_registers=64) == cb.replace(num_registers=64)


def i(op: str, out: int, *args: int, c: float = 0.0) -> Instruction:
    return Instruction(op, out, args, c)


def test_canonical_programs_compute_the_same_updates(padded_adam):
    programs = [f() for f in PROGRAMS.values()] + [padded_adam] + random_programs(0, 12)
    for program in programs:
        canonical = canonicalize(program)
        assert len(canonical.instructions) <= len(program.live_instructions())
        for want, got in zip(update_stream(program), update_stream(canonical), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-30, equal_nan=True)


def test_canonical_form_is_idempotent_ssa_and_without_dead_code():
    for program in [f() for f in PROGRAMS.values()] + random_programs(1, 40):
        canonical = canonicalize(program)
        assert canonicalize(canonical) == canonical
        assert canonical.live_instructions() == canonical.instructions
        outs = [inst.out for inst in canonical.instructions]
        first = NUM_FIXED + canonical.num_state
        assert outs == list(range(first, first + len(outs)))  # numbered in order of first write
        assert canonical.num_registers >= program.num_registers
        assert structural_hash(canonical) == structural_hash(program)


def test_equivalent_spellings_share_a_canonical_form_and_hash():
    def rule(*body: Instruction, update: int = R, num_registers: int = 24) -> Program:
        return Program(tuple(body), update, num_registers=num_registers)

    twice = [
        rule(i("add", R, G, G), i("mul", R, LR, R)),  # lr (g + g)
        rule(i("scale_c", R, G, c=2.0), i("mul", R, R, LR)),  # (2 g) lr
        rule(i("mul", R, TWO, G), i("scale", R, LR, R)),
        rule(i("mul", R, ONE, ONE), i("add", R, R, R), i("mul", R, R, G), i("mul", R, LR, R)),
        rule(
            i("mul", R, HALF, TWO),
            i("sqrt_abs", R, R),
            i("add", R + 3, G, G),
            i("neg", R + 3, R + 3),
            i("scale_c", R + 3, R + 3, c=-1.0),
            i("mul", R, R + 3, R),
            i("mul", R + 1, R, LR),
            update=R + 1,
            num_registers=40,
        ),  # (-(g + g)) * -1 * sqrt(1/2 * 2) * lr
        rule(i("sub", R, LR, LR), i("add", R + 1, G, G), i("mul", R, R + 1, LR)),  # dead sub
    ]
    assert len({structural_hash(p) for p in twice}) == 1
    assert all(same_rule(twice[0], p) for p in twice)
    canonical = canonicalize(twice[0])
    assert [(x.op, x.const) for x in canonical.instructions] == [("scale_c", 2.0), ("mul", 0.0)]
    assert sorted(canonical.instructions[1].args) == [LR, canonical.instructions[0].out]


def test_commutative_flags_match_the_ops():
    x, y = 3 * np.random.default_rng(0).normal(size=(2, 64)).astype(np.float32)
    binary = [op for op in OPS.values() if op.arity == 2 and len(set(op.operands)) == 1]
    commutative = {op.name for op in binary if op.commutative}
    assert commutative == {"add", "mul", "max", "min", "dot", "cosine"}
    for op in binary:
        ab = apply(op, [jnp.asarray(x), jnp.asarray(y)], np.float32(0.3))
        ba = apply(op, [jnp.asarray(y), jnp.asarray(x)], np.float32(0.3))
        assert np.array_equal(ab, ba) == op.commutative, op.name


def test_register_names_instruction_order_and_state_order_do_not_matter():
    base = adam()
    # The same rule with other scratch registers, independent instructions swapped and the two
    # state slots exchanged (s1 holds v, s2 holds m).
    swap = {S1: S2, S2: S1}
    rename = {r: r + 5 for r in range(NUM_FIXED + 2, NUM_FIXED + 6)}

    def move(r: int) -> int:
        return swap.get(r, rename.get(r, r))

    insts = [Instruction(x.op, move(x.out), tuple(map(move, x.args)), x.const)
             for x in base.instructions]  # fmt: skip
    insts[0], insts[1], insts[2] = insts[1], insts[2], insts[0]  # g^2 and v before m
    insts[3:6], insts[7:10] = insts[7:10], insts[3:6]  # the bias corrections swapped
    insts[6], insts[10] = insts[10], insts[6]
    other = Program(tuple(insts), move(base.update), (S1, S2), num_registers=NUM_FIXED + 12)
    assert other != base
    np.testing.assert_allclose(update_stream(other)[-1], update_stream(base)[-1], rtol=1e-6)
    assert same_rule(base, other) and structural_hash(base) == structural_hash(other)


def test_useless_state_is_dropped_and_constants_fold_but_not_lr_or_t():
    # s2 is carried along but never read by the update: dropped; s1 stays.
    program = Program(
        (
            i("interp_c", S1, S1, G, c=0.1),
            i("add", S2, S2, G),
            i("const", R, c=0.25),
            i("sqrt_abs", R, R),  # folds to 0.5
            i("mul", R + 1, T, R),  # t is an input: t 0.5 stays
            i("mul", R + 1, R + 1, LR),
            i("scale", R + 1, R + 1, S1),
        ),
        update=R + 1,
        new_state=(S1, S2),
    )
    canonical = canonicalize(program)
    assert canonical.num_state == 1
    ops = [inst.op for inst in canonical.instructions]
    assert "const" not in ops and "sqrt_abs" not in ops
    assert ("scale_c", (T,), 0.5) in [(x.op, x.args, x.const) for x in canonical.instructions]
    assert sum(LR in inst.args for inst in canonical.instructions) == 1
    np.testing.assert_allclose(update_stream(canonical), update_stream(program), rtol=1e-6)


def test_different_rules_differ():
    programs = [f() for f in PROGRAMS.values()]
    programs += [adam(b1=0.8), adam(eps=1e-6), get_program("momentum", beta=0.5)]
    programs += [
        Program((i("sub", R, G, W), i("mul", R, LR, R)), R),
        Program((i("sub", R, W, G), i("mul", R, LR, R)), R),
        Program((i("scale_c", R, G, c=0.01),), R),  # sgd at lr = 0.01, but without lr
    ]
    assert len({structural_hash(p) for p in programs}) == len(programs)


def test_long_programs_reuse_registers():
    """60 live instructions and 8 state slots do not fit one register each."""
    body = [i("add", NUM_FIXED + k, NUM_FIXED + k, G) for k in range(8)]
    r = NUM_FIXED + 8
    body.append(i("add", r, NUM_FIXED, NUM_FIXED + 1))
    for k in range(2, 8):
        body.append(i("add", r, r, NUM_FIXED + k))
    while len(body) < 60:
        body.append(i("tanh" if len(body) % 2 else "softsign", r, r))
    program = Program(tuple(body), r, tuple(range(NUM_FIXED, NUM_FIXED + 8)), MAX_REGISTERS)
    canonical = canonicalize(program)
    assert len(canonical.instructions) == 60 and canonical.num_registers <= MAX_REGISTERS
    assert canonicalize(canonical) == canonical
    np.testing.assert_allclose(
        update_stream(canonical, steps=3), update_stream(program, steps=3), rtol=1e-6
    )


def test_fingerprints_equal_for_equivalent_programs_and_differ_otherwise(padded_adam):
    names = list(PROGRAMS)
    programs = [get_program(name) for name in names]
    n = len(programs)
    prints = behaviour_fingerprints([*programs, padded_adam, adam(b1=0.8)])
    adam_print = prints[names.index("adam")]
    assert len(set(prints[:n])) == n
    assert prints[n] == adam_print  # padded adam behaves as adam
    assert prints[n + 1] != adam_print
    # Alone or in another population, deterministic.
    assert behaviour_fingerprints([padded_adam]) == [adam_print]
    assert behaviour_fingerprints(programs[::-1]) == prints[:n][::-1]
    # Another stream sees other numbers.
    assert behaviour_fingerprints(programs[:1], seed=1) != prints[:1]


def test_fingerprints_tokenize_nan_and_inf():
    def blow_up(*tail: Instruction) -> Program:
        head = (i("const", R, c=1e30), i("scale", R, R, G), i("cube", R, R))
        return Program((*head, *tail), R + 1)

    nan_a = blow_up(i("sub", R + 1, R, R))  # inf - inf
    nan_b = blow_up(i("scale_c", R + 1, R, c=0.0))  # 0 inf
    inf = blow_up(i("copy", R + 1, R))
    prints = behaviour_fingerprints([nan_a, nan_b, inf, get_program("sgd")])
    assert prints[0] == prints[1] and len(set(prints[1:])) == 3
    ws, gs = fingerprint_stream(8, 32, 0)
    u = probe_updates([nan_a, inf], ws, gs, 1e-2)
    assert np.isnan(u[0]).any() and np.isinf(u[1]).all()


def test_probe_updates_equal_program_transform():
    """Across chunks of steps (state carried over) and in a padded tile."""
    programs = [get_program("lion"), adam(b1=0.5)]
    ws, gs = fingerprint_stream(11, 32, 0)
    got = probe_updates(programs, ws, gs, 0.05)
    assert got.shape == (2, 11, 32)

    for program, updates in zip(programs, got, strict=True):
        transform = program_transform(program, 0.05)

        def step(state, wg, transform=transform):
            updates, state = transform.update(wg[1], state, wg[0])
            return state, -jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(updates)])

        state = transform.init(jax.tree.map(lambda x: x[0], ws))
        want = jax.jit(lambda s, wg, step=step: jax.lax.scan(step, s, wg)[1])(state, (ws, gs))
        np.testing.assert_allclose(updates, want, rtol=1e-5, atol=1e-30)


@pytest.mark.parametrize("digits", [2, 6])
def test_fingerprint_digits_decide_what_counts_as_equal(digits):
    near = [Program((i("scale_c", R, G, c=c),), R) for c in (0.5, 0.50001)]
    prints = behaviour_fingerprints(near, digits=digits)
    assert (prints[0] == prints[1]) == (digits == 2)


def test_a_rule_reading_lr_and_its_twin_with_a_constant_fingerprint_apart():
    with_lr = get_program("sgd")
    twins = [Program((i("scale_c", R, G, c=lr),), R) for lr in (1e-2, 3e-3)]
    prints = behaviour_fingerprints([with_lr, *twins])
    assert len(set(prints)) == 3
