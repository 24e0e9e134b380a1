"""One-file export of a meta-trained optimizer: theta, its architecture and config, and metadata,
in the safetensors layout (no pickle, nothing executed on load).

Layout: an 8-byte little-endian unsigned header length `n`; `n` bytes of UTF-8 JSON mapping each
theta leaf (`/`-joined dict path) to `{"dtype": "F32", "shape": [...], "data_offsets": [b, e]}`,
plus `"__metadata__"`, a dict of strings: `format` (`l2o-learned-optimizer`), `format_version`,
`architecture`, `config` (JSON), `metadata` (JSON) and `sha256`; then the leaves' raw
little-endian bytes, back to back (the safetensors format, so its tools can inspect the file).

`sha256` is the hex digest of everything but the metadata's `date`: the canonical JSON of the
format, version, architecture, config, metadata and leaf table, a newline, then the data. A file
whose content no longer matches it is refused; files written before it existed lack it and load.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import struct
import warnings
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from l2o.io import to_jsonable, write_bytes_atomic
from l2o.optimizers import registry

FORMAT = "l2o-learned-optimizer"
FORMAT_VERSION = "1"
MAX_HEADER_BYTES = 1 << 20
"""Headers are a few kilobytes; anything above this is rejected before it is read."""
LEAF_KEYS = {"dtype", "shape", "data_offsets"}
METADATA_KEYS = {"format", "format_version", "architecture", "config", "metadata"}
DIGEST_KEY = "sha256"
"""The one optional `__metadata__` key (absent in files written before it)."""
PACKAGES = ("l2o", "jax", "jaxlib", "optax", "numpy", "dm-haiku")


class OptimizerFileError(ValueError):
    """A learned-optimizer file that cannot be written or read; the message names the file."""


def _flatten(theta: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a/b": leaf}` for a (nested) dict of arrays."""
    out = {}
    for key, value in theta.items():
        if not isinstance(key, str) or not key or "/" in key:
            raise ValueError(f"theta key {key!r} must be a non-empty string without '/'")
        if isinstance(value, Mapping):
            out |= _flatten(value, f"{prefix}{key}/")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def expected_leaves(name: str, config: Any) -> dict[str, jax.ShapeDtypeStruct]:
    """Path -> shape and dtype of every theta leaf that `init_theta` makes for `config`."""
    init_theta, _ = registry.from_config(name, config)
    return _flatten(jax.eval_shape(init_theta, jax.random.key(0)))


def package_versions() -> dict[str, str]:
    """Python and installed package versions, for the metadata."""
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            pass
    return versions


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _signed(name: str, config_text: str, info: Mapping[str, Any], leaves: Mapping) -> bytes:
    """What the digest covers besides the data: everything but the wall-clock `date`."""
    return _dumps({
        "format": FORMAT, "format_version": FORMAT_VERSION, "architecture": name,
        "config": config_text, "metadata": {k: v for k, v in info.items() if k != "date"},
        "leaves": leaves,
    }).encode()  # fmt: skip


def _digest(signed: bytes, data: bytes) -> str:
    return hashlib.sha256(signed + b"\n" + data).hexdigest()


def encode(
    name: str, config: Any, theta: Mapping[str, Any], metadata: Mapping[str, Any] | None = None
) -> bytes:
    """The file's bytes; ValueError if theta does not match what `config` makes."""
    if not isinstance(config, Mapping):
        config = dataclasses.asdict(config)
    config_obj = registry.make_config(name, **config)
    expected = expected_leaves(name, config_obj)
    flat = _flatten(theta)
    _check_leaf_names(set(flat), set(expected))
    header: dict[str, Any] = {}
    chunks, offset = [], 0
    for path in sorted(expected):
        array = np.asarray(jax.device_get(flat[path]))
        if array.shape != tuple(expected[path].shape):
            raise ValueError(f"theta leaf {path!r} has shape {array.shape}, expected "
                             f"{tuple(expected[path].shape)}")  # fmt: skip
        array = array.astype("<f4")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"theta leaf {path!r} holds non-finite values")
        data = array.tobytes()
        header[path] = {
            "dtype": "F32", "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }  # fmt: skip
        chunks.append(data)
        offset += len(data)
    info = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": package_versions(),
        **to_jsonable(dict(metadata or {})),
    }
    config_text = _dumps(registry.config_to_dict(config_obj))
    data = b"".join(chunks)
    header["__metadata__"] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": name,
        "config": config_text,
        "metadata": _dumps(info),
        DIGEST_KEY: _digest(_signed(name, config_text, info, header), data),
    }
    text = _dumps(header).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header to 8 bytes
    return struct.pack("<Q", len(text)) + text + data


def save_learned(
    path: str | os.PathLike,
    name: str,
    config: Any,
    theta: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a learned optimizer to `path` atomically (temp file + rename).

    Args:
      path: the output file (conventionally `*.safetensors`).
      name: architecture name, a key of `LEARNED_OPTIMIZERS`.
      config: the architecture's config dataclass or a dict of its values.
      theta: the meta-parameters; every leaf must have the shape `init_theta` makes.
      metadata: JSON-compatible provenance (meta-training command, steps, ...); the date (UTC) and
        package versions are added unless given.

    Returns:
      The path written. Raises ValueError (naming the file) if theta or config do not fit.
    """
    try:
        data = encode(name, config, theta, metadata)
    except (ValueError, TypeError) as e:
        raise OptimizerFileError(f"cannot save {path}: {_one_line(e)}") from None
    return write_bytes_atomic(path, data)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _check_leaf_names(found: set[str], expected: set[str]) -> None:
    missing, extra = sorted(expected - found), sorted(found - expected)
    if missing:
        raise ValueError(f"theta leaf missing: {', '.join(missing)}")
    if extra:
        raise ValueError(f"unexpected theta leaf: {', '.join(extra)}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("header JSON has duplicate keys")
    return dict(pairs)


def _reject_constant(name: str) -> None:
    raise ValueError(f"header JSON holds {name}")


def _parse_json(text: str | bytes, what: str) -> Any:
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{what} is not valid JSON ({_one_line(e)})") from None


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class Header(NamedTuple):
    """A validated header: architecture, config, metadata, leaf entries, data size in bytes, and
    the stored digest (None in older files) with the header bytes it covers."""

    name: str
    config: Any
    metadata: dict[str, Any]
    leaves: dict[str, tuple[tuple[int, ...], int, int]]
    data_bytes: int
    sha256: str | None = None
    signed: bytes = b""


def header_length(prefix: bytes) -> int:
    """The header length from the first 8 bytes, checked against `MAX_HEADER_BYTES`."""
    if len(prefix) < 8:
        raise ValueError(f"too short ({len(prefix)} bytes) for a header length")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER_BYTES:
        raise ValueError(f"header length {n} exceeds the limit of {MAX_HEADER_BYTES} bytes")
    return n


def parse_header(text: bytes) -> Header:
    """Validate the JSON header against the architecture it names; ValueError otherwise."""
    header = _parse_json(text, "header")
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("header has no __metadata__ dict of strings")
    if meta.get("format") != FORMAT:
        raise ValueError(f"not a learned-optimizer file (format {meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"unsupported format_version {meta.get('format_version')!r}")
    if not METADATA_KEYS <= set(meta) <= METADATA_KEYS | {DIGEST_KEY}:
        raise ValueError(
            f"__metadata__ keys must be {', '.join(sorted(METADATA_KEYS))} (and {DIGEST_KEY})"
        )
    name = meta["architecture"]
    config_dict = _parse_json(meta["config"], "config")
    info = _parse_json(meta["metadata"], "metadata")
    if not isinstance(config_dict, dict) or not isinstance(info, dict):
        raise ValueError("config and metadata must be JSON objects")
    config = registry.make_config(name, **config_dict)
    expected = expected_leaves(name, config)
    _check_leaf_names(set(header), set(expected))

    leaves, data_bytes = {}, 4 * sum(math.prod(want.shape) for want in expected.values())
    for path, entry in header.items():
        want = expected[path]
        if not isinstance(entry, dict) or set(entry) != LEAF_KEYS:
            raise ValueError(f"leaf {path!r} must have exactly the keys {sorted(LEAF_KEYS)}")
        if entry["dtype"] != "F32" or want.dtype != jnp.float32:
            raise ValueError(f"leaf {path!r} has dtype {entry['dtype']!r}, expected 'F32'")
        shape = entry["shape"]
        if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
            raise ValueError(f"leaf {path!r} has a malformed shape {shape!r}")
        if tuple(shape) != tuple(want.shape):
            raise ValueError(f"leaf {path!r} has shape {tuple(shape)}, expected {want.shape}")
        offsets = entry["data_offsets"]
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))):
            raise ValueError(f"leaf {path!r} has malformed data_offsets {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_bytes or end - begin != 4 * math.prod(shape):
            raise ValueError(f"leaf {path!r} has data_offsets {offsets} outside its data")
        leaves[path] = (tuple(shape), begin, end)
    position = 0
    for _, begin, end in sorted(leaves.values(), key=lambda leaf: leaf[1:]):
        if begin != position:
            raise ValueError("leaf data overlaps or leaves gaps")
        position = end
    signed = _signed(name, meta["config"], info, header)
    return Header(name, config, info, leaves, data_bytes, meta.get(DIGEST_KEY), signed)


def parse_data(header: Header, data: bytes) -> dict[str, Any]:
    """Theta (float32 arrays) from the data section; ValueError for non-finite values or a file
    whose content does not match its sha256."""
    if len(data) != header.data_bytes:
        raise ValueError(f"data section has {len(data)} bytes, expected {header.data_bytes}")
    flat = {}
    for path, (shape, begin, end) in header.leaves.items():
        array = np.frombuffer(data[begin:end], dtype="<f4").reshape(shape)
        if not np.all(np.isfinite(array)):
            raise ValueError(f"leaf {path!r} holds non-finite values")
        flat[path] = jnp.asarray(array.astype(np.float32))
    if header.sha256 is not None and header.sha256 != _digest(header.signed, data):
        raise ValueError(
            f"{DIGEST_KEY} mismatch: theta, config or metadata changed after the file was written"
        )
    return _unflatten(flat)


def decode(data: bytes) -> tuple[Header, dict[str, Any]]:
    """`(header, theta)` from a whole file's bytes, validated; ValueError otherwise."""
    n = header_length(data[:8])
    if n > len(data) - 8:
        raise ValueError(f"header length {n} exceeds the file size (truncated file?)")
    header = parse_header(data[8 : 8 + n])
    return header, parse_data(header, data[8 + n :])


def load_learned(
    path: str | os.PathLike,
) -> tuple[optax.GradientTransformationExtraArgs, dict[str, Any]]:
    """`(optimizer, info)` from a file written by `save_learned`.

    `optimizer` is `transform(theta)`; `info` holds `name`, `config` (the dataclass), `theta`,
    `metadata` and `path`. Everything is validated before use (header size before it is read,
    JSON structure, format, architecture, config keys and types, every leaf's presence, shape,
    dtype and offsets, the file's size before the data is read, finite values, the sha256 of
    its content when it has one); any problem raises a ValueError with a one-line message naming
    the file. Nothing is unpickled or evaluated.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            n = header_length(f.read(8))
            if n > size - 8:
                raise ValueError(f"header length {n} exceeds the file size (truncated file?)")
            header = parse_header(f.read(n))
            if size != 8 + n + header.data_bytes:
                raise ValueError(
                    f"file holds {size - 8 - n} bytes of data, its architecture needs "
                    f"{header.data_bytes} (truncated or padded file?)"
                )
            theta = parse_data(header, f.read(header.data_bytes))
    except OSError as e:
        raise OptimizerFileError(f"cannot read learned optimizer {path}: {e.strerror}") from None
    except (ValueError, TypeError, RecursionError) as e:
        raise OptimizerFileError(f"invalid learned optimizer {path}: {_one_line(e)}") from None
    _, transform = registry.from_config(header.name, header.config)
    info = {
        "name": header.name,
        "config": header.config,
        "theta": theta,
        "metadata": header.metadata,
        "path": path,
    }
    return transform(theta), info


def external_learning_rate(path: str | os.PathLike) -> float | None:
    """The default learning rate of the optimizer file at `path` if its learning rate is
    external (set by the user or a tuner, `celo`), else None (it learned its step size)."""
    _, info = load_learned(path)
    if not registry.architecture(info["name"]).external_learning_rate:
        return None
    return float(info["config"].learning_rate)


def at_learning_rate(
    optimizer: optax.GradientTransformationExtraArgs, default: float, learning_rate
) -> optax.GradientTransformationExtraArgs:
    """An external-learning-rate optimizer built at `default`, moved to `learning_rate` (a
    number, a traced value or a schedule `step -> rate`): its updates are linear in it."""
    if callable(learning_rate):
        factor = optax.scale_by_schedule(lambda step: learning_rate(step) / default)
    else:
        factor = optax.scale(learning_rate / default)
    return optax.chain(optimizer, factor)


class HorizonWarning(UserWarning):
    """A learned optimizer that reads the training fraction was given no training length."""


def _with_horizon(
    optimizer: optax.GradientTransformationExtraArgs, num_steps: int | None, path, horizon: int
) -> optax.GradientTransformationExtraArgs:
    """`optimizer` whose `update` defaults its `num_steps` extra to `num_steps`; without one, a
    call that gives none warns (once per trace) that the config's `horizon` is assumed."""

    def update_fn(updates, state, params=None, **extra_args):
        if extra_args.get("num_steps") is None:
            if num_steps is None:
                warnings.warn(
                    f"{path}: no num_steps given (to load_optimizer or to update); the learned "
                    f"optimizer assumes a {horizon}-step run, which sets its schedule",
                    HorizonWarning,
                    stacklevel=2,
                )
            else:
                extra_args["num_steps"] = num_steps
        return optimizer.update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(optimizer.init, update_fn)


def load_optimizer(
    path: str | os.PathLike, num_steps: int | None = None, learning_rate: float | None = None
) -> optax.GradientTransformationExtraArgs:
    """The meta-trained optimizer stored at `path`, ready for `optimizer.init` / `update`.

    `num_steps` is the length of the training run, which optimizers that read the training
    fraction need (an `update` given a `num_steps` extra uses that instead); without either,
    they warn (`HorizonWarning`) and assume the `horizon` of their config. `learning_rate`
    replaces the stored default of an optimizer whose learning rate is external (`celo`);
    a ValueError for one that has none.
    """
    optimizer, info = load_learned(path)
    config = info["config"]
    if learning_rate is not None:
        if not registry.architecture(info["name"]).external_learning_rate:
            raise OptimizerFileError(
                f"{path}: a {info['name']!r} optimizer learned its step size; it takes no "
                "learning_rate"
            )
        if not (isinstance(learning_rate, int | float) and learning_rate > 0):
            raise OptimizerFileError(f"learning_rate must be a positive number: {learning_rate!r}")
        config = dataclasses.replace(config, learning_rate=float(learning_rate))
        optimizer = registry.from_config(info["name"], config)[1](info["theta"])
    if num_steps is not None and not (isinstance(num_steps, int) and num_steps >= 1):
        raise OptimizerFileError(f"num_steps must be a positive integer, got {num_steps!r}")
    if not hasattr(config, "horizon"):
        return optimizer
    return _with_horizon(optimizer, num_steps, path, config.horizon)
