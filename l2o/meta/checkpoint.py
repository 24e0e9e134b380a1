"""Checkpoints of pytrees: atomic `.npz` files with a sha256 of their contents, no pickle.

The tree structure is not stored: a checkpoint is loaded into a template of the same structure
(rebuilt from the run's config), and every leaf's shape and dtype must match it. Typed PRNG keys
are stored as their key data. `config_changes` says what differs between the config stored with a
checkpoint and the one a resumed run was given.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Collection
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from l2o.io import write_bytes_atomic

PyTree = Any
PATTERN = re.compile(r"ckpt_(\d{8})\.npz$")


class CheckpointError(ValueError):
    """A checkpoint that is torn, corrupt or does not fit the run."""


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _host_leaves(tree: PyTree) -> list[np.ndarray]:
    return [np.asarray(jax.random.key_data(x) if _is_key(x) else x) for x in jax.tree.leaves(tree)]


def _digest(leaves: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for x in leaves:
        h.update(f"{x.dtype.str}{x.shape}".encode())
        h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


def save(directory: str | Path, step: int, tree: PyTree, metadata: dict, keep: int = 3) -> Path:
    """Write `tree` as `directory/ckpt_<step>.npz` atomically; keep the newest `keep` files."""
    leaves = _host_leaves(tree)
    meta = {**metadata, "step": int(step), "num_leaves": len(leaves), "sha256": _digest(leaves)}
    buffer = io.BytesIO()
    arrays = {f"leaf_{i:05d}": x for i, x in enumerate(leaves)}
    np.savez(buffer, __metadata__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    path = write_bytes_atomic(Path(directory) / f"ckpt_{step:08d}.npz", buffer.getvalue())
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint files in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if PATTERN.search(p.name))


class Stored(NamedTuple):
    """A checkpoint read and checked against its sha256, not yet fitted to a template."""

    path: Path
    leaves: list[np.ndarray]
    meta: dict


def read(path: str | Path) -> Stored:
    """The arrays and metadata stored at `path`; CheckpointError if torn or corrupt."""
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(bytes(f["__metadata__"]).decode())
            leaves = [f[f"leaf_{i:05d}"] for i in range(int(meta["num_leaves"]))]
    except (
        OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, json.JSONDecodeError,
        EOFError,
    ) as e:  # fmt: skip
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__})") from None
    if _digest(leaves) != meta.get("sha256"):
        raise CheckpointError(f"{path}: checksum mismatch (torn or corrupt file)")
    return Stored(Path(path), leaves, meta)


def read_latest(directory: str | Path) -> tuple[Stored, list[str]]:
    """The newest checkpoint that reads; also the reasons newer ones were skipped."""
    skipped = []
    for path in reversed(list_checkpoints(directory)):
        try:
            return read(path), skipped
        except CheckpointError as e:
            skipped.append(str(e))
    raise CheckpointError(
        f"no usable checkpoint in {directory}" + (f" ({'; '.join(skipped)})" if skipped else "")
    )


def fit(stored: Stored, template: PyTree) -> PyTree:
    """The stored arrays as a tree shaped like `template`; CheckpointError if they do not fit."""
    path, leaves = stored.path, stored.leaves
    template_leaves, treedef = jax.tree.flatten(template)
    if len(template_leaves) != len(leaves):
        raise CheckpointError(
            f"{path}: holds {len(leaves)} arrays, the run needs {len(template_leaves)}"
        )
    out = []
    for i, (x, t) in enumerate(zip(leaves, template_leaves, strict=True)):
        ref = np.asarray(jax.random.key_data(t) if _is_key(t) else t)
        if x.shape != ref.shape or x.dtype != ref.dtype:
            raise CheckpointError(
                f"{path}: array {i} is {x.dtype}{list(x.shape)}, "
                f"the run needs {ref.dtype}{list(ref.shape)}"
            )
        if _is_key(t):
            x = jax.random.wrap_key_data(x, impl=jax.random.key_impl(t))
        out.append(x)
    return jax.tree.unflatten(treedef, out)


def load(path: str | Path, template: PyTree) -> tuple[PyTree, dict]:
    """The tree stored at `path`, shaped like `template`; CheckpointError if it does not fit."""
    stored = read(path)
    return fit(stored, template), stored.meta


def load_latest(directory: str | Path, template: PyTree) -> tuple[PyTree, dict, list[str]]:
    """The newest checkpoint that loads; also the reasons newer ones were skipped."""
    skipped = []
    for path in reversed(list_checkpoints(directory)):
        try:
            tree, meta = load(path, template)
            return tree, meta, skipped
        except CheckpointError as e:
            skipped.append(str(e))
    raise CheckpointError(
        f"no usable checkpoint in {directory}" + (f" ({'; '.join(skipped)})" if skipped else "")
    )


_UNSET = object()


def _same(a: Any, b: Any) -> bool:
    if a is _UNSET or b is _UNSET:
        return a is b
    numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b))
    if numbers and a == b:  # 1 and 1.0
        return True
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _show(value: Any, width: int = 60) -> str:
    text = "unset" if value is _UNSET else json.dumps(value, sort_keys=True)
    return text if len(text) <= width else text[: width - 3] + "..."


def _changes(old: Any, new: Any, ignore: Collection[str], path: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [*old, *(k for k in new if k not in old)]
        pairs = [(k, old.get(k, _UNSET), new.get(k, _UNSET)) for k in keys]
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        pairs = list(zip(range(len(old)), old, new, strict=True))
    else:
        return [] if _same(old, new) else [f"{path or 'the config'}: {_show(old)} -> {_show(new)}"]
    out = []
    for key, a, b in pairs:
        where = f"{path}.{key}" if path else str(key)
        if where not in ignore:
            out += _changes(a, b, ignore, where)
    return out


def config_changes(old: Any, new: Any, ignore: Collection[str] = ()) -> list[str]:
    """`["outer.learning_rate: 0.003 -> 0.01", ...]`: each value (dotted path) that differs
    between two JSON-like configs, except the paths in `ignore`; [] if they are the same."""

    def plain(x):
        return json.loads(json.dumps(x, default=str))

    return _changes(plain(old), plain(new), ignore, "")
