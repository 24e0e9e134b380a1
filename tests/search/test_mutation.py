"""Mutations and random programs: always valid, within limits, deterministic, and each kind
changes what it says it changes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from search.interpreter import run_program
from search.mutation import (
    KINDS,
    MutationConfig,
    fit_to_limits,
    mutate,
    mutate_many,
    random_program,
    within_limits,
)
from search.ops import OPS
from search.program import NUM_FIXED, Program
from search.programs_library import PROGRAMS, get_program

CONFIG = MutationConfig(max_instructions=24, max_state=2)
WIDE = MutationConfig(max_instructions=32, max_state=4)  # room for orthogonal_adam_hd
ONE_SLOT = MutationConfig(max_instructions=16, max_state=1)


def _valid(program: Program, config: MutationConfig) -> bool:
    """Rebuilt from JSON (so checked from scratch) and within the limits."""
    return Program.from_json(program.to_json()) == program and within_limits(program, config)


@pytest.mark.parametrize("config", [CONFIG, ONE_SLOT], ids=["2 slots", "1 slot"])
def test_thousands_of_mutations_are_all_valid(config):
    rng = np.random.default_rng(0)
    starts = []
    for name, factory in PROGRAMS.items():
        try:
            starts.append(fit_to_limits(rng, factory(), config))
        except ValueError:
            assert config.max_instructions < len(factory().instructions), name
    starts += [random_program(rng, config) for _ in range(10)]
    seen_kinds, states = set(), set()
    for start in starts:
        program = start
        for i in range(150):
            mutation = mutate(rng, program, config)
            assert _valid(mutation.program, config), (mutation.kind, mutation.program.format())
            assert mutation.kind == "none" or mutation.program != program
            seen_kinds.add(mutation.kind)
            states.add(mutation.program.num_state)
            program = mutation.program if i % 30 else start  # long chains, restarted now and then
    assert seen_kinds >= set(KINDS)
    assert states == set(range(config.max_state + 1)), "mutations change the number of slots"


def test_random_programs_are_valid_deterministic_and_varied():
    programs = [random_program(jax.random.key(i), ONE_SLOT) for i in range(200)]
    assert all(_valid(p, ONE_SLOT) for p in programs)
    assert programs[:5] == [random_program(jax.random.key(i), ONE_SLOT) for i in range(5)]
    assert len({json_key(p) for p in programs}) > 190
    assert {p.num_state for p in programs} == {0, 1}
    assert random_program(jax.random.key(0), ONE_SLOT, num_instructions=0).instructions == ()


def json_key(program: Program) -> str:
    return str(program.to_json())


def test_same_key_same_mutant_and_keys_matter():
    adam = get_program("adam")
    a = [mutate(jax.random.key(i), adam, CONFIG) for i in range(20)]
    b = [mutate(jax.random.key(i), adam, CONFIG) for i in range(20)]
    assert a == b
    assert len({json_key(m.program) for m in a}) > 10
    assert mutate_many(jax.random.key(3), adam, CONFIG, 5) == mutate_many(
        jax.random.key(3), adam, CONFIG, 5
    )


def _diff(a: Program, b: Program) -> list[int]:
    pairs = zip(a.instructions, b.instructions, strict=True)
    return [i for i, (x, y) in enumerate(pairs) if x != y]


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_each_kind_changes_what_it_says(name):
    parent = get_program(name)
    fits = (
        len(parent.instructions) < CONFIG.max_instructions and parent.num_state <= CONFIG.max_state
    )
    config = CONFIG if fits else WIDE
    for seed in range(5):
        for kind in KINDS:
            if kind == "constant" and not any(OPS[i.op].uses_const for i in parent.instructions):
                continue
            if kind == "remove_state" and parent.num_state == 0:
                continue
            if kind == "add_state" and parent.num_state == config.max_state:
                continue
            m = mutate(jax.random.key(seed), parent, config, kind=kind)
            child, n = m.program, len(parent.instructions)
            if kind == "delete" and n == 1:  # sgd needs its one instruction: another kind runs
                assert m.kind not in ("delete", "none") and child != parent
                continue
            assert m.kind == kind and child != parent, (kind, seed)
            if kind == "insert":
                assert len(child.instructions) == n + 1
            elif kind == "delete":
                assert len(child.instructions) == n - 1
            elif kind == "modify":
                (i,) = _diff(parent, child)
                old, new = parent.instructions[i], child.instructions[i]
                assert new.op != old.op and new.args == old.args
                assert OPS[new.op].arity == OPS[old.op].arity
            elif kind == "operand":
                changed = _diff(parent, child)
                if changed:
                    (i,) = changed
                    assert child.instructions[i].op == parent.instructions[i].op
                    assert child.instructions[i].args != parent.instructions[i].args
                else:  # an output was re-pointed
                    assert (child.update, child.new_state) != (parent.update, parent.new_state)
            elif kind == "constant":
                (i,) = _diff(parent, child)
                old, new = parent.instructions[i], child.instructions[i]
                assert (new.op, new.args) == (old.op, old.args) and new.const != old.const
            elif kind == "add_state":
                assert child.num_state == parent.num_state + 1
                assert len(child.instructions) == n + 1
            elif kind == "remove_state":
                assert child.num_state == parent.num_state - 1


def test_limits_are_respected_even_at_the_limit():
    config = MutationConfig(max_instructions=3, max_state=1)
    full = get_program("momentum")  # 3 instructions, 1 slot: cannot grow
    for seed in range(50):
        m = mutate(jax.random.key(seed), full, config)
        assert _valid(m.program, config) and m.kind not in ("insert", "add_state")
    with pytest.raises(ValueError, match="max_instructions"):
        fit_to_limits(jax.random.key(0), get_program("adam"), config)


def _run(program: Program, grads, lr=0.1):
    slots = [jnp.zeros(3)] * program.num_state
    updates = []
    for t, g in enumerate(grads, 1):
        u, slots = run_program(program, jnp.zeros(3), g, lr, t, slots)
        updates.append(np.asarray(u))
    return updates


def test_add_state_on_sgd_is_momentum_and_remove_state_undoes_it():
    grads = [jnp.array([1.0, -2.0, 3.0]), jnp.array([0.5, 0.5, -1.0]), jnp.array([2.0, 0.0, 1.0])]
    sgd = get_program("sgd")
    for seed in range(10):
        child = mutate(jax.random.key(seed), sgd, CONFIG, kind="add_state").program
        (ema,) = [i for i in child.instructions if i.out == NUM_FIXED]
        c = np.float32(ema.const)
        m, want = np.zeros(3, np.float32), []
        for g in grads:  # s <- (1 - c) s + c g, u = 0.1 s: momentum in EMA form
            m = (1 - c) * m + c * np.asarray(g)
            want.append(0.1 * m)
        np.testing.assert_allclose(_run(child, grads), want, rtol=1e-5, atol=1e-7)
        back = mutate(jax.random.key(seed), child, CONFIG, kind="remove_state").program
        assert back.num_state == 0
        np.testing.assert_allclose(_run(back, grads), _run(sgd, grads), rtol=1e-6)


def test_fit_to_limits_drops_slots_of_adamw():
    config = MutationConfig(max_instructions=24, max_state=1)
    fitted = {fit_to_limits(jax.random.key(s), get_program("adamw"), config) for s in range(8)}
    assert all(p.num_state == 1 and _valid(p, config) for p in fitted)
    assert len(fitted) == 2, "either moment can be dropped"


@pytest.mark.parametrize(
    "changes, message",
    [({"max_state": 9}, "max_state"), ({"ops": ["nope"]}, "unknown ops"),
     ({"weights": {"grow": 1.0}}, "unknown mutation kinds"),
     ({"weights": dict.fromkeys(KINDS, 0.0)}, "positive"), ({"const_sigma": -1.0}, "const_sigma"),
     ({"max_instructions": 0}, "max_instructions")],
)  # fmt: skip
def test_bad_mutation_configs_raise(changes, message):
    with pytest.raises(ValueError, match=message):
        MutationConfig(**changes)
