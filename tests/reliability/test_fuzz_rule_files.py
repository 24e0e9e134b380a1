"""Fuzzed rule files through `search.rule_file.load_rule`: random bytes and JSON, mutated valid
files (every op, register numbers in and out of range, cycles through registers, NaN and huge
constants, code strings, unknown keys), huge and deeply nested files. Every case ends in a
transform that traces on a parameter tree, or a one-line ValueError naming the file; nothing in a
file is ever executed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from search.ops import OPS
from search.program import MAX_INSTRUCTIONS, MAX_REGISTERS, NUM_FIXED
from search.programs_library import PROGRAMS, get_program
from search.rule_file import MAX_FILE_BYTES, load_rule, save_rule

PARAMS = {"w": jnp.ones((3, 2)), "b": jnp.zeros(())}


def check_transform(transform) -> None:
    """A loaded rule is a working optax transform: init and update trace on a parameter tree."""

    def step(params):
        state = transform.init(params)
        updates, _ = transform.update(params, state, params, step=jnp.int32(1))
        return updates

    out = jax.eval_shape(step, PARAMS)
    assert jax.tree.structure(out) == jax.tree.structure(PARAMS)


def code_strings(canary: Path) -> list[str]:
    return [
        f"__import__('os').system('touch {canary}')",
        f"open('{canary}', 'w')",
        "lambda: 0",
        "eval('1')",
        "exec('x = 1')",
        "${HOME}",
        "$(touch x)",
        "`id`",
        "os.system",
        "line\nbreak",
        "__class__",
        "!!python/object/apply:os.system",
    ]


def program_strategy(canary: Path):
    """Programs as JSON data: valid ops or junk, registers in or out of range, any constants."""
    names = sorted(OPS)
    register = st.one_of(
        st.integers(0, 23),
        st.integers(-3, MAX_REGISTERS + 3),
        st.sampled_from([10**40, -(2**63)]),
        st.floats(0, 30),
        st.booleans(),
        st.none(),
        st.text(max_size=3),
    )
    const = st.one_of(
        st.floats(-2, 2),
        st.floats(),
        st.sampled_from([1e30, 1e39, 10**400, -(10**400)]),
        st.integers(),
        st.booleans(),
        st.text(max_size=4),
        st.none(),
    )
    op = st.one_of(
        st.sampled_from(names),
        st.sampled_from(names),
        st.sampled_from(code_strings(canary)),
        st.text(max_size=8),
        st.integers(),
        st.none(),
        st.lists(st.sampled_from(names), max_size=1),
    )
    good_args = st.lists(st.integers(0, 23), min_size=1, max_size=3)
    instruction = st.fixed_dictionaries(
        {
            "op": op,
            "out": st.one_of(st.integers(NUM_FIXED, 23), register),
            "args": st.one_of(good_args, st.lists(register, max_size=4), register),
        },
        optional={"const": const, "note": st.text(max_size=4)},
    )
    return st.fixed_dictionaries(
        {
            "instructions": st.lists(instruction, max_size=6) | st.just([]),
            "update": st.one_of(st.integers(NUM_FIXED, 23), register),
            "new_state": st.lists(st.integers(NUM_FIXED, 23), max_size=3) | st.lists(register),
            "num_registers": st.one_of(st.just(24), st.integers(0, 70), register),
        },
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def documents(canary: Path):
    """Whole rule files: valid library rules, mutated ones, random programs, junk."""
    valid = [
        {
            "format": "l2o-rule",
            "version": 1,
            "program": get_program(name).to_json(),
            "metadata": {"name": name, "learning_rate": 0.01},
        }
        for name in sorted(PROGRAMS)
    ]
    metadata = st.one_of(
        st.just({}),
        st.just({"learning_rate": 0.1}),
        st.dictionaries(
            st.sampled_from(["learning_rate", "name", "seed", "x.y", "bad key", ""]),
            json_values
            | st.sampled_from(code_strings(canary))
            | st.sampled_from([10**400, -1, 0, 1e308, "0.1"]),
            max_size=3,
        ),
    )
    random_program = st.builds(
        lambda p, m, fmt, version: {"format": fmt, "version": version, "program": p, "metadata": m},
        program_strategy(canary),
        metadata,
        st.sampled_from(["l2o-rule"] * 6 + ["pickle", ""]),
        st.sampled_from([1] * 6 + [1.0, True, "1", 2]),
    )

    def mutated(args):
        doc, key, value = args
        doc = json.loads(json.dumps(doc))
        target = (
            doc["program"]
            if key in ("instructions", "update", "new_state", "num_registers")
            else doc
        )
        if value == "<delete>":
            target.pop(key, None)
        else:
            target[key] = value
        return doc

    mutations = st.builds(
        lambda a: mutated(a),
        st.tuples(
            st.sampled_from(valid),
            st.sampled_from(
                [
                    "format",
                    "version",
                    "program",
                    "metadata",
                    "exec",
                    "instructions",
                    "update",
                    "new_state",
                    "num_registers",
                ]
            ),
            json_values | st.just("<delete>") | st.sampled_from(code_strings(canary)),
        ),
    )
    with_metadata = st.builds(lambda d, m: {**d, "metadata": m}, st.sampled_from(valid), metadata)
    as_json = st.one_of(
        with_metadata,
        with_metadata,
        random_program,
        random_program,
        mutations,
        mutations,
        json_values,
    )
    return st.one_of(
        as_json.map(lambda d: json.dumps(d)),  # NaN and Infinity appear as JSON constants
        as_json.map(lambda d: json.dumps(d)),
        as_json.map(lambda d: json.dumps(d)),
        st.binary(max_size=200),
        st.text(max_size=200),
        st.builds(
            lambda n: '{"format": "l2o-rule", "version": 1, "program": ' + "[" * n + "]" * n + "}",
            st.sampled_from([5, 9, 1000, 30_000]),
        ),
        st.builds(
            lambda n: json.dumps({**valid[0], "metadata": {"pad": "x" * n}}),
            st.sampled_from([200, MAX_FILE_BYTES]),
        ),
        st.just(
            json.dumps(
                {
                    **valid[0],
                    "program": {
                        **valid[0]["program"],
                        "instructions": [{"op": "neg", "out": 10, "args": [1]}]
                        * (MAX_INSTRUCTIONS + 1),
                        "update": 10,
                        "new_state": [],
                    },
                }
            )
        ),
    )


@pytest.mark.slow
def test_fuzzed_rule_files(tmp_path, fuzz):
    canary = tmp_path / "CANARY"
    path = tmp_path / "rule.json"
    outcomes = {"ok": 0, "error": 0}

    @fuzz
    @given(documents(canary))
    def case(document):
        path.write_bytes(document if isinstance(document, bytes) else document.encode())
        try:
            transform = load_rule(path)
        except ValueError as e:
            message = str(e)
            assert message.startswith(f"rule file {str(path)!r}: "), message
            assert "\n" not in message and len(message) < 1000, message
            outcomes["error"] += 1
        else:
            check_transform(transform)
            learning_rate = json.loads(document).get("metadata", {}).get("learning_rate", 1e-3)
            assert math.isfinite(learning_rate) and learning_rate > 0
            outcomes["ok"] += 1
        assert not canary.exists()

    case()
    assert sum(outcomes.values()) >= fuzz.max_examples, outcomes  # cases that ran to the end
    print(sum(outcomes.values()), "cases:", outcomes)
    assert min(outcomes.values()) >= 50, outcomes


def test_every_library_rule_round_trips_to_a_working_transform(tmp_path):
    """Every library program saves and loads back to a transform that traces."""
    for name in sorted(PROGRAMS):
        path = tmp_path / f"{name}.json"
        save_rule(path, get_program(name), {"learning_rate": 0.01})
        check_transform(load_rule(path))
