"""Rule files: exact round trips, atomic writes, and hostile files rejected with one-line errors."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

import search
from search.interpreter import program_transform
from search.programs_library import PROGRAMS, get_program
from search.rule_file import (
    ADAMW_RATIO,
    MAX_FILE_BYTES,
    load_program,
    load_rule,
    read_rule,
    save_rule,
)


def rule_document(**program_changes) -> dict:
    """A valid rule file's JSON (Lion), with some program fields replaced."""
    program = {**get_program("lion").to_json(), **program_changes}
    return {"format": "l2o-rule", "version": 1, "program": program, "metadata": {"task": "x"}}


def write(path, content) -> str:
    if isinstance(content, dict):
        content = json.dumps(content)
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(path, mode) as f:
        f.write(content)
    return str(path)


def test_round_trip_of_every_warm_start(tmp_path):
    for name in PROGRAMS:
        path = tmp_path / f"{name}.json"
        save_rule(path, get_program(name), {"name": name, "learning_rate": 0.01, "seeds": [0, 1]})
        program, metadata = read_rule(path)
        assert program == get_program(name)
        assert metadata == {"name": name, "learning_rate": 0.01, "seeds": [0, 1]}
        assert load_program(path) == program
    assert sorted(os.listdir(tmp_path)) == sorted(f"{n}.json" for n in PROGRAMS)  # no temp files


def test_load_rule_is_the_programs_transform(tmp_path):
    path = tmp_path / "adam.json"
    save_rule(path, get_program("adam"), {"learning_rate": 0.1})
    assert search.load_rule is load_rule
    params = {"x": jnp.array([1.0, -2.0])}
    grads = {"x": jnp.array([0.5, 0.25])}
    for transform, lr in ((load_rule(path), 0.1), (load_rule(path, learning_rate=0.2), 0.2)):
        want = program_transform(get_program("adam"), lr)
        got = transform.update(grads, transform.init(params), params)[0]["x"]
        np.testing.assert_allclose(got, want.update(grads, want.init(params), params)[0]["x"])


def _first_update(transform) -> np.ndarray:
    params, grads = {"x": jnp.array([1.0, -2.0])}, {"x": jnp.array([0.5, 0.25])}
    return np.asarray(transform.update(grads, transform.init(params), params)[0]["x"])


def test_load_rule_converts_an_adamw_learning_rate_by_the_files_ratio(tmp_path):
    path = tmp_path / "sgd.json"
    save_rule(path, get_program("sgd"), {"learning_rate": 0.1, ADAMW_RATIO: {"median": 4.0}})
    want = _first_update(load_rule(path, learning_rate=0.012))
    np.testing.assert_allclose(_first_update(load_rule(path, adamw_lr=0.003)), want, rtol=1e-6)
    schedule = load_rule(path, adamw_lr=lambda step: 0.003)  # an optax schedule
    np.testing.assert_allclose(_first_update(schedule), want, rtol=1e-6)
    with pytest.raises(ValueError, match="learning_rate or adamw_lr, not both"):
        load_rule(path, learning_rate=0.01, adamw_lr=0.003)


@pytest.mark.parametrize(
    "metadata, message",
    [({"learning_rate": 0.1}, "records no learning-rate ratio to AdamW"),
     ({ADAMW_RATIO: {"median": -1.0}}, "adamw_lr_ratio.median must be a positive number"),
     ({ADAMW_RATIO: 4.0}, "adamw_lr_ratio.median must be a positive number")],
)  # fmt: skip
def test_adamw_lr_needs_a_ratio_in_the_file(tmp_path, metadata, message):
    path = tmp_path / "rule.json"
    save_rule(path, get_program("sgd"), metadata)
    with pytest.raises(ValueError, match=message):
        load_rule(path, adamw_lr=1e-3)
    load_rule(path)  # the file itself loads


def test_a_tampered_ratio_is_refused_by_the_sha256(tmp_path):
    save_rule(tmp_path / "rule.json", get_program("sgd"), {ADAMW_RATIO: {"median": 4.0}})
    text = (tmp_path / "rule.json").read_text()
    path = write(tmp_path / "edited.json", text.replace('"median": 4.0', '"median": 40.0'))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        load_rule(path, adamw_lr=1e-3)


def test_save_replaces_atomically(tmp_path):
    path = tmp_path / "rule.json"
    save_rule(path, get_program("sgd"))
    save_rule(path, get_program("lion"))
    assert load_program(path) == get_program("lion")
    with pytest.raises(ValueError, match="looks like code"):
        save_rule(path, get_program("sgd"), {"note": "__import__('os')"})
    assert load_program(path) == get_program("lion")  # the failed save left the file alone
    assert os.listdir(tmp_path) == ["rule.json"]


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


HOSTILE = {
    "code string as op": rule_document(
        instructions=[{"op": "__import__('os').system('true')", "out": 10, "args": [1]}]
    ),
    "code string as constant": rule_document(
        instructions=[{"op": "scale_c", "out": 10, "args": [1], "const": "0.1; import os"}]
    ),
    "code string in metadata": {**rule_document(), "metadata": {"hook": "lambda: os.system('x')"}},
    "code in an unknown field": {**rule_document(), "exec": "print('owned')"},
    "unknown program field": rule_document(on_load="os.remove('x')"),
    "unknown op": rule_document(instructions=[{"op": "adam_step", "out": 10, "args": [1]}]),
    "wrong arity": rule_document(instructions=[{"op": "add", "out": 10, "args": [1]}]),
    "wrong kinds": rule_document(instructions=[{"op": "scale", "out": 10, "args": [1, 1]}]),
    "read before write": rule_document(
        instructions=[
            {"op": "add", "out": 10, "args": [1, 11]},
            {"op": "copy", "out": 11, "args": [10]},
        ],
        update=11,
    ),
    "missing outputs": {**rule_document(), "program": {
        k: v for k, v in get_program("lion").to_json().items() if k != "update"}},
    "output never written": rule_document(update=20),
    "too many instructions": rule_document(
        instructions=[{"op": "neg", "out": 10, "args": [1]}] * 65, update=10, new_state=[]
    ),
    "huge register file": rule_document(num_registers=10**9),
    "huge register number": rule_document(update=10**40),
    "NaN constant": '{"format": "l2o-rule", "version": 1, "program": {"instructions": '
    '[{"op": "scale_c", "out": 10, "args": [1], "const": NaN}], "update": 10, '
    '"new_state": [], "num_registers": 24}}',
    "overflowing constant": rule_document(
        instructions=[{"op": "scale_c", "out": 10, "args": [1], "const": 1e39}], update=10,
        new_state=[],
    ),
    "deeply nested JSON": '{"format": "l2o-rule", "version": 1, "program": ' + _nested(30_000),
    "deeply nested metadata": {**rule_document(), "metadata": {"a": json.loads(_nested(12))}},
    "duplicate keys": '{"format": "l2o-rule", "format": "l2o-rule", "version": 1}',
    "huge file": " " * (MAX_FILE_BYTES + 1) + "{}",
    "not UTF-8": b"\xff\xfe{}",
    "not JSON": "format = 'l2o-rule'",
    "wrong format": {**rule_document(), "format": "pickle"},
    "top-level list": "[1, 2, 3]",
    "boolean register": rule_document(update=True),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_rule_files_are_rejected(tmp_path, case):
    path = write(tmp_path / "rule.json", HOSTILE[case])
    with pytest.raises(ValueError) as info:
        load_program(path)
    message = str(info.value)
    assert message.startswith(f"rule file {path!r}: ") and "\n" not in message
    assert len(message) < 1000  # hostile strings are not echoed whole


def test_missing_file_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="rule file .*missing.json"):
        load_rule(tmp_path / "missing.json")


def test_saved_rule_files_get_the_mode_of_any_new_file(tmp_path):
    import os

    from search.programs_library import sgd

    umask = os.umask(0o022)
    try:
        save_rule(tmp_path / "r.json", sgd())
    finally:
        os.umask(umask)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644


def saved_rule(path) -> str:
    """A rule file `save_rule` wrote (Lion, with a fitness); its text."""
    save_rule(path, get_program("lion"), {"learning_rate": 0.01, "fitness": -0.4375})
    return path.read_text()


@pytest.mark.parametrize(
    "old, new",
    [('"op": "mul"', '"op": "add"'), ('"fitness": -0.4375', '"fitness": -0.5'),
     ('"learning_rate": 0.01', '"learning_rate": 0.02'), ('"const": 0.1', '"const": 0.2')],
)  # fmt: skip
def test_an_edited_op_or_metadata_is_refused_by_the_sha256(tmp_path, old, new):
    text = saved_rule(tmp_path / "rule.json")
    assert old in text
    path = write(tmp_path / "edited.json", text.replace(old, new, 1))
    with pytest.raises(ValueError, match=r"edited.json'?: sha256 mismatch"):
        read_rule(path)
    path = write(tmp_path / "edited.json", json.dumps(json.loads(text.replace(old, new, 1))))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        read_rule(path)  # re-indented: the digest is of the content, not of the layout


def test_every_flipped_bit_is_refused_or_changes_nothing(tmp_path):
    """Bits 0 and 1 of every byte: the file is refused, or it reads back as the same rule (a
    digit past a float's precision)."""
    text = saved_rule(tmp_path / "rule.json").encode()
    want = read_rule(tmp_path / "rule.json")
    path = tmp_path / "flipped.json"
    refused = 0
    for i in range(len(text)):
        for bit in (0, 1):
            flipped = bytearray(text)
            flipped[i] ^= 1 << bit
            path.write_bytes(bytes(flipped))
            try:
                got = read_rule(path)
            except ValueError:
                refused += 1
            else:
                assert got == want, (i, bit, bytes(flipped[i - 20 : i + 20]))
    assert refused > 1.9 * len(text)


def test_reindented_and_older_files_load(tmp_path):
    text = saved_rule(tmp_path / "rule.json")
    document = json.loads(text)
    want = read_rule(tmp_path / "rule.json")
    assert len(document["sha256"]) == 64 and want[1] == {"learning_rate": 0.01, "fitness": -0.4375}
    assert read_rule(write(tmp_path / "compact.json", json.dumps(document))) == want
    del document["sha256"]  # as written before the digest existed
    assert read_rule(write(tmp_path / "old.json", document)) == want
    shipped = os.path.join(os.path.dirname(search.__file__), "..", "l2o", "pretrained")
    for name in ("evolved_adamw.json", "evolved_sgd_seed1.json"):  # calibrated: with a digest
        path = os.path.join(shipped, name)
        with open(path) as f:
            assert len(json.load(f)["sha256"]) == 64
        assert read_rule(path)[1][ADAMW_RATIO]["median"] > 0
        program, metadata = read_rule(os.path.join(shipped, name))
        assert metadata["passed_funnel"] and program.instructions
