"""Fuzzed learned-optimizer files through `l2o.optimizers.file_format.load_learned`: random bytes,
and valid files of every architecture, with their sha256 and without it (as written before it
existed), mutated (truncated, a header length that lies, wrong dtypes, shapes and offsets, unknown
architectures and config values, NaN or inf in theta, flipped and appended bytes). Every case ends
in an optimizer whose update traces and whose theta is finite, or in a one-line ValueError naming
the file, quickly (no config can make the loader build a huge network)."""

from __future__ import annotations

import functools
import json
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l2o.optimizers.file_format import OptimizerFileError, load_learned, save_learned
from l2o.optimizers.registry import get_learned, make_config

SMALL = {
    "learnable_adam": {},
    "mlp": {"hidden_sizes": [3]},
    "lstm": {"hidden_size": 2, "num_layers": 1},
    "hyper": {"lstm_size": 2, "num_mlps": 2, "mlp_hidden_sizes": [2]},
}
PARAMS = {"w": jnp.ones((3, 2)), "b": jnp.zeros(())}


@functools.cache
def valid_files() -> dict[str, bytes]:
    """The bytes of one small valid file per architecture, theta perturbed off its init (made
    once for the tests of this file)."""
    out = {}
    for name, config in SMALL.items():
        init_theta, _ = get_learned(name, **config)
        theta = jax.tree.map(lambda x: x + 0.01, init_theta(jax.random.key(0)))
        path = Path(f"/dev/shm/l2o_fuzz_{name}.safetensors")
        if not path.parent.is_dir():
            path = Path(f"/tmp/l2o_fuzz_{name}.safetensors")
        save_learned(path, name, make_config(name, **config), theta, {"steps": 3})
        out[name] = path.read_bytes()
        path.unlink()
    return out


def without_digest(data: bytes) -> bytes:
    """The file as written before files carried a sha256."""
    header, body = split(data)
    del header["__metadata__"]["sha256"]
    return join(header, body)


def split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict, body: bytes, length_delta: int = 0) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", max(0, len(text) + length_delta)) + text + body


junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=6),
    st.sampled_from(
        [
            10**400,
            2**63,
            -1,
            0,
            1e308,
            "F64",
            "F16",
            "I32",
            "BF16",
            [],
            {},
            [[1]],
            [0, 10**12],
            [-4, 0],
            [4, 0],
        ]
    ),
    st.lists(st.integers(-2, 10), max_size=3),
)
config_junk = st.one_of(
    junk,
    st.sampled_from([10**5, 2**31, 2**30, 1e-300, 64, 65, [1] * 65, [2] * 10, [10**9], [0.5]]),
)


def mutations(valid: dict[str, bytes]):
    """Files derived from the valid ones."""
    names = sorted(valid)

    def header_mutation(args):
        name, where, key, value, delta = args
        header, body = split(valid[name])
        meta = header["__metadata__"]
        leaves = sorted(k for k in header if k != "__metadata__")
        if where == "leaf":
            entry = header[leaves[hash(key) % len(leaves)]]
            field = ["dtype", "shape", "data_offsets", "extra"][hash(str(value)) % 4]
            entry[field] = value
        elif where == "meta":
            meta[key if key in meta else "architecture"] = value
        elif where == "config":
            config = json.loads(meta["config"])
            config[key if key in config or not config else sorted(config)[0]] = value
            meta["config"] = json.dumps(config)
        elif where == "drop_leaf":
            header.pop(leaves[0])
        elif where == "architecture":
            meta["architecture"] = value if isinstance(value, str) else "velo"
        elif where == "metadata":
            meta["metadata"] = json.dumps({"x": value}) if value != 0 else "[1]"
        return join(header, body, delta)

    def body_mutation(args):
        name, kind, index, value = args
        data = bytearray(valid[name])
        header, body = split(bytes(data))
        start = len(data) - len(body)
        if kind == "nan" and body:
            i = start + 4 * (index % (len(body) // 4))
            data[i : i + 4] = struct.pack("<f", float(value))
        elif kind == "flip":
            i = index % len(data)
            data[i] ^= 1 << (index % 8)
        elif kind == "truncate":
            data = data[: index % len(data)]
        elif kind == "append":
            data += b"\x00" * (index % 9 + 1)
        elif kind == "length":
            length = value if isinstance(value, int) else index  # a lie, or the truth
            data[:8] = struct.pack("<Q", (length or len(data) - 8 - len(body)) % 2**64)
        return bytes(data)

    return st.one_of(
        st.builds(
            header_mutation,
            st.tuples(
                st.sampled_from(names),
                st.sampled_from(
                    [
                        "leaf",
                        "meta",
                        "config",
                        "config",
                        "config",
                        "drop_leaf",
                        "architecture",
                        "metadata",
                    ]
                ),
                st.text(max_size=12)
                | st.sampled_from(
                    [
                        "hidden_size",
                        "num_layers",
                        "hidden_sizes",
                        "learning_rate",
                        "format_version",
                        "format",
                    ]
                ),
                config_junk,
                st.sampled_from([0, 0, 0, 1, -1, 8, 10**6]),
            ),
        ),
        st.builds(
            body_mutation,
            st.tuples(
                st.sampled_from(names),
                st.sampled_from(["nan", "flip", "truncate", "append", "length"]),
                st.integers(0, 10**6),
                st.sampled_from(
                    [float("nan"), float("inf"), -float("inf"), 3e38, 2**40, 2**63 + 5, 0]
                ),
            ),
        ),
    )


def check_loaded(optimizer, info) -> None:
    """A loaded optimizer has finite float32 theta and its update traces."""
    for leaf in jax.tree.leaves(info["theta"]):
        assert leaf.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(leaf)))

    def step(params):
        state = optimizer.init(params)
        return optimizer.update(params, state, params, loss=jnp.float32(1.0), step=1, num_steps=10)[
            0
        ]

    jax.eval_shape(step, PARAMS)


@pytest.mark.slow
def test_fuzzed_optimizer_files(tmp_path, fuzz, time_limit):
    valid = valid_files()
    old = {name: without_digest(data) for name, data in valid.items()}
    path = tmp_path / "opt.safetensors"
    outcomes = {"ok": 0, "error": 0}
    files = st.one_of(
        st.sampled_from(sorted([*valid.values(), *old.values()])),
        mutations(valid),
        mutations(old),
        mutations(old),
        st.binary(max_size=300),
    )

    @fuzz
    @given(files)
    def case(data):
        path.write_bytes(data)
        with time_limit():
            try:
                optimizer, info = load_learned(path)
            except OptimizerFileError as e:
                message = str(e)
                assert str(path) in message and "\n" not in message, message
                outcomes["error"] += 1
            else:
                check_loaded(optimizer, info)
                outcomes["ok"] += 1

    case()
    assert sum(outcomes.values()) >= fuzz.max_examples, outcomes  # cases that ran to the end
    print(sum(outcomes.values()), "cases:", outcomes)
    assert min(outcomes.values()) >= 50, outcomes


@pytest.mark.parametrize(
    "name, config",
    [
        ("lstm", {"num_layers": 100_000}),
        ("mlp", {"hidden_sizes": [1] * 100_000}),
        ("hyper", {"mlp_hidden_sizes": [1] * 100_000}),
        ("lstm", {"hidden_size": 10**400}),
    ],
)
def test_configs_that_would_build_huge_networks_are_refused_quickly(
    tmp_path, time_limit, name, config
):
    header = {
        "__metadata__": {
            "format": "l2o-learned-optimizer",
            "format_version": "1",
            "architecture": name,
            "config": json.dumps(config),
            "metadata": "{}",
        }
    }
    path = tmp_path / "big.safetensors"
    path.write_bytes(join(header, b""))
    with time_limit(), pytest.raises(OptimizerFileError, match="big.safetensors"):
        load_learned(path)


def test_nan_theta_is_refused_by_name(tmp_path):
    data = valid_files()["learnable_adam"]
    header, body = split(data)
    leaf = sorted(k for k in header if k != "__metadata__")[0]
    begin = header[leaf]["data_offsets"][0]
    body = body[:begin] + struct.pack("<f", np.nan) + body[begin + 4 :]
    path = tmp_path / "nan.safetensors"
    path.write_bytes(join(header, body))
    with pytest.raises(OptimizerFileError, match=f"nan.safetensors.*{leaf}.*non-finite"):
        load_learned(path)


@pytest.mark.slow
def test_fuzzed_optimizer_files_through_the_torch_reader(tmp_path, fuzz, time_limit):
    """The reader of `l2o export --format torch` (`torch_learned.read_learned`), which repeats
    the file format's checks without jax: each fuzzed file loads into an optimizer that takes a
    step, or is refused in one line naming the file; every file `load_learned` accepts loads.
    300 cases (a third of the other fuzz tests': the mutations are the same)."""
    torch = pytest.importorskip("torch")
    from l2o.optimizers import torch_learned

    valid = valid_files()
    old = {name: without_digest(data) for name, data in valid.items()}
    path = tmp_path / "opt.safetensors"
    outcomes = {"ok": 0, "error": 0}
    files = st.one_of(mutations(valid), mutations(old), st.binary(max_size=300))

    cases = settings(fuzz, max_examples=300)

    @cases
    @given(files)
    def case(data):
        path.write_bytes(data)
        with time_limit():
            try:
                load_learned(path)
                accepted = True
            except OptimizerFileError:
                accepted = False
            params = [torch.ones(3, 2, requires_grad=True), torch.zeros((), requires_grad=True)]
            try:
                optimizer = torch_learned.load(path, params, num_steps=10)
            except torch_learned.OptimizerFileError as e:
                message = str(e)
                assert not accepted, message
                assert str(path) in message and "\n" not in message, message
                outcomes["error"] += 1
            else:
                for p in params:
                    p.grad = torch.ones_like(p)
                optimizer.step(loss=1.0)
                outcomes["ok"] += 1

    case()
    assert sum(outcomes.values()) >= cases.max_examples, outcomes
    print(sum(outcomes.values()), "cases:", outcomes)
    assert min(outcomes.values()) >= 15, outcomes
