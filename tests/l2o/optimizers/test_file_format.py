"""The one-file format of learned optimizers: round trips, use in a plain optax loop, files
written by hand, and hostile or mismatched files refused with a message naming the file."""

from __future__ import annotations

import functools
import json
import pickle
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import tasks
from l2o.optimizers.file_format import load_learned, save_learned
from l2o.optimizers.registry import LEARNED_OPTIMIZERS, get_learned, make_config

NAMES = sorted(LEARNED_OPTIMIZERS)


def small_task() -> tasks.Task:
    """A matrix pulled towards 1 and a param the loss ignores (zero gradient, zero value)."""

    def init(key):
        return {"w": jax.random.normal(key, (3, 2)), "unused": jnp.zeros((2,))}

    def loss(params, key, batch):
        return 0.5 * jnp.sum(jnp.square(params["w"] - 1)), {}

    return tasks.Task(name="small", init=init, loss=loss, sampler=lambda *_: ())


@functools.cache
def learned(name: str):
    """`(init_theta, transform, theta at key 0)` of the default config."""
    init_theta, transform = get_learned(name)
    return init_theta, transform, init_theta(jax.random.key(0))


@jax.jit
def perturbed(theta, key):
    """`theta` plus N(0, 0.1^2) noise, so zero-initialised output layers take part."""
    flat, unravel = ravel_pytree(theta)
    return unravel(flat + 0.1 * jax.random.normal(key, flat.shape, flat.dtype))


@pytest.mark.parametrize("name", NAMES)
def test_file_round_trip_gives_identical_updates(name, tmp_path):
    _, transform, theta = learned(name)
    theta = perturbed(theta, jax.random.key(9))
    path = tmp_path / f"{name}.safetensors"
    meta = {"command": "l2o meta-train --steps 3", "steps": 3}
    save_learned(path, name, make_config(name), theta, meta)
    loaded, info = load_learned(path)
    assert info["name"] == name and info["config"] == make_config(name)
    assert info["metadata"]["steps"] == 3 and "jax" in info["metadata"]["versions"]
    assert "date" in info["metadata"] and info["metadata"]["command"].startswith("l2o")
    for a, b in zip(jax.tree.leaves(info["theta"]), jax.tree.leaves(theta), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))

    task = small_task()

    def run(opt):
        return jax.jit(lambda k: tasks.train(task, opt, 5, k)[0].params)(jax.random.key(10))

    a, b = run(transform(theta)), run(loaded)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_loaded_optimizer_trains_in_a_plain_optax_loop(tmp_path):
    # Only jax, optax, numpy and l2o.load_optimizer below: no `tasks`.
    import l2o

    _, _, theta = learned("mlp")
    save_learned(tmp_path / "opt.safetensors", "mlp", make_config("mlp"), theta, {})
    optimizer = l2o.load_optimizer(tmp_path / "opt.safetensors")

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(256, 8)), jnp.float32)
    y = jnp.asarray(x @ rng.normal(size=(8,)) > 0, jnp.int32)

    def loss_fn(params):
        h = jnp.tanh(x @ params["w1"] + params["b1"][None])
        logits = h @ params["w2"] + params["b2"][None]
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    k1, k2 = jax.random.split(jax.random.key(0))
    params = {
        "w1": 0.3 * jax.random.normal(k1, (8, 16)), "b1": jnp.zeros(16),
        "w2": 0.3 * jax.random.normal(k2, (16, 2)), "b2": jnp.zeros(2),
    }  # fmt: skip
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(300):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])


def write_raw(path, header: dict, body: bytes = b"", length: int | None = None):
    """A file in the safetensors layout, written by hand."""
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + body)
    return path


def valid_header(name="learnable_adam", theta=None, **meta_changes):
    """Header and body of a valid learnable_adam file, with optional changes."""
    theta = dict(learned("learnable_adam")[2] if theta is None else theta)
    header, body = {}, b""
    for key, value in theta.items():
        data = np.asarray(value, "<f4").tobytes()
        header[key] = {
            "dtype": "F32", "shape": list(np.shape(value)),
            "data_offsets": [len(body), len(body) + len(data)],
        }  # fmt: skip
        body += data
    header["__metadata__"] = {
        "format": "l2o-learned-optimizer", "format_version": "1", "architecture": name,
        "config": json.dumps({"learning_rate": 0.003}), "metadata": "{}",
    } | meta_changes  # fmt: skip
    return header, body


def test_hand_written_file_loads(tmp_path):
    header, body = valid_header()
    _, info = load_learned(write_raw(tmp_path / "ok.safetensors", header, body))
    assert info["name"] == "learnable_adam"


def hostile_files(tmp_path):
    """(description, path) of malformed files, each to be rejected."""
    theta = {k: np.asarray(v) for k, v in learned("learnable_adam")[2].items()}
    out = []

    def add(label, header=None, body=None, length=None, raw=None, **kw):
        path = tmp_path / f"{label.replace(' ', '_')}.safetensors"
        if raw is not None:
            path.write_bytes(raw)
        else:
            h, b = valid_header(**kw) if header is None else (header, b"")
            write_raw(path, h, b if body is None else body, length)
        out.append((label, path))

    header, body = valid_header()
    good = tmp_path / "good.safetensors"
    write_raw(good, header, body)
    add("truncated", raw=good.read_bytes()[:-5])
    add("truncated header", raw=good.read_bytes()[:40])
    add("tiny", raw=b"\x01\x02")
    add("wrong magic", **{"format": "safetensors-something-else"})
    add("huge header length", header=header, body=body, length=10**12)
    add("header not json", raw=struct.pack("<Q", 12) + b"{not json!!}" + body)
    add("header not utf8", raw=struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc" + body)
    add("header a list", raw=struct.pack("<Q", 2) + b"[]")
    add("unknown architecture", name="velo")
    add("unknown config key", config=json.dumps({"learning_rat": 0.1}))
    add("config wrong type", config=json.dumps({"learning_rate": "fast"}))
    add("missing leaf", theta={k: v for k, v in theta.items() if k != "log_eps"})
    add("extra leaf", theta={**theta, "bonus": np.zeros(())})
    add("wrong shape", theta={**theta, "log_lr": np.zeros((2,))})
    add("nan value", theta={**theta, "log_lr": np.float32(np.nan)})
    add("inf value", theta={**theta, "log_eps": np.float32(-np.inf)})
    bad_dtype, _ = valid_header()
    bad_dtype["log_lr"]["dtype"] = "F64"
    add("wrong dtype", header=bad_dtype, body=body)
    overlap, _ = valid_header()
    overlap["log_eps"]["data_offsets"] = [0, 4]
    add("overlapping offsets", header=overlap, body=body)
    add("trailing bytes", header=header, body=body + b"\x00" * 4)
    add("pickle renamed", raw=pickle.dumps({"theta": theta, "name": "mlp"}))
    add("empty", raw=b"")
    return out


def test_hostile_files_are_rejected_naming_the_file(tmp_path):
    for label, path in hostile_files(tmp_path):
        with pytest.raises(ValueError) as excinfo:
            load_learned(path)
        message = str(excinfo.value)
        assert str(path) in message and "\n" not in message, (label, message)
    with pytest.raises(ValueError, match="missing.safetensors"):
        load_learned(tmp_path / "missing.safetensors")


def test_save_rejects_a_theta_that_does_not_fit(tmp_path):
    theta = dict(learned("mlp")[2])
    path = tmp_path / "bad.safetensors"
    with pytest.raises(ValueError, match="bad.safetensors"):
        save_learned(path, "mlp", make_config("mlp"), {**theta, "w0": jnp.zeros((3, 3))})
    with pytest.raises(ValueError, match="non-finite"):
        save_learned(path, "mlp", make_config("mlp"), {**theta, "log_lr": jnp.float32(jnp.nan)})
    with pytest.raises(ValueError, match="unexpected theta leaf: b2, w2"):
        save_learned(path, "mlp", make_config("mlp", hidden_sizes=(8,)), theta)
    with pytest.raises(ValueError, match="theta leaf missing: log_lr"):
        save_learned(
            path, "mlp", make_config("mlp"), {k: v for k, v in theta.items() if k != "log_lr"}
        )
    assert not path.exists()


def split_file(data: bytes) -> tuple[dict, bytes]:
    """`(header, data section)` of a file's bytes."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def saved(tmp_path, name="learnable_adam") -> bytes:
    """The bytes of a file `save_learned` wrote (theta perturbed off its init)."""
    path = tmp_path / f"{name}_saved.safetensors"
    theta = perturbed(learned(name)[2], jax.random.key(3))
    save_learned(path, name, make_config(name), theta, {"outer_steps": 7})
    return path.read_bytes()


@pytest.mark.parametrize("name", ["learnable_adam", "mlp"])
def test_a_flipped_bit_in_theta_is_refused_by_the_sha256(tmp_path, name):
    data = saved(tmp_path, name)
    header, body = split_file(data)
    assert len(header["__metadata__"]["sha256"]) == 64
    start = len(data) - len(body)
    for leaf in sorted(k for k in header if k != "__metadata__"):
        begin = start + header[leaf]["data_offsets"][0]
        for bit in (0, 7, 20):  # mantissa bits: a finite theta that differs in one value
            flipped = bytearray(data)
            flipped[begin + bit // 8] ^= 1 << (bit % 8)
            path = tmp_path / "flipped.safetensors"
            path.write_bytes(bytes(flipped))
            with pytest.raises(ValueError, match="flipped.safetensors.*sha256 mismatch"):
                load_learned(path)


@pytest.mark.parametrize(
    "old, new",
    [('\\"learning_rate\\":0.003', '\\"learning_rate\\":0.004'),
     ('\\"outer_steps\\":7', '\\"outer_steps\\":9')],
)  # fmt: skip
def test_an_edited_config_or_metadata_is_refused_by_the_sha256(tmp_path, old, new):
    data = saved(tmp_path, "mlp")
    n = struct.unpack("<Q", data[:8])[0]
    text = data[8 : 8 + n].decode()
    assert text.count(old) == 1
    text = text.replace(old, new)  # a valid file still: only the digest tells
    path = tmp_path / "edited.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text.encode() + data[8 + n :])
    with pytest.raises(ValueError, match="edited.safetensors.*sha256 mismatch"):
        load_learned(path)


def test_the_sha256_leaves_out_the_date_only(tmp_path):
    """Two saves of one theta have one digest (no clock inside it); a changed date loads."""
    first = split_file(saved(tmp_path))[0]["__metadata__"]
    header, body = split_file(saved(tmp_path))
    assert header["__metadata__"]["sha256"] == first["sha256"]
    meta = header["__metadata__"]
    meta["metadata"] = json.dumps({**json.loads(meta["metadata"]), "date": "1999-12-31"})
    _, info = load_learned(write_raw(tmp_path / "redated.safetensors", header, body))
    assert info["metadata"]["date"] == "1999-12-31" and info["metadata"]["outer_steps"] == 7


def test_a_file_without_a_sha256_still_loads(tmp_path):
    """Files written before the digest existed (the shipped one among them) load unchanged."""
    header, body = split_file(saved(tmp_path, "mlp"))
    del header["__metadata__"]["sha256"]
    _, old = load_learned(write_raw(tmp_path / "old.safetensors", header, body))
    _, new = load_learned(tmp_path / "mlp_saved.safetensors")
    for a, b in zip(jax.tree.leaves(old["theta"]), jax.tree.leaves(new["theta"]), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    import l2o

    shipped = Path(l2o.__file__).parent / "pretrained" / "mlp_digits.safetensors"
    assert "sha256" not in split_file(shipped.read_bytes())[0]["__metadata__"]
    load_learned(shipped)
