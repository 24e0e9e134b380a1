"""Checkpoints of pytrees: atomic `.npz` files with a sha256 of their contents, no pickle.

The tree structure is not stored: a checkpoint is loaded into a template of the same structure
(rebuilt from the run's config), and every leaf's shape and dtype must match it. Typed PRNG keys
are stored as their key data.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

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


def load(path: str | Path, template: PyTree) -> tuple[PyTree, dict]:
    """The tree stored at `path`, shaped like `template`; CheckpointError if it does not fit."""
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(bytes(f["__metadata__"]).decode())
            leaves = [f[f"leaf_{i:05d}"] for i in range(int(meta["num_leaves"]))]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, EOFError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__})") from None
    if _digest(leaves) != meta.get("sha256"):
        raise CheckpointError(f"{path}: checksum mismatch (torn or corrupt file)")
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
    return jax.tree.unflatten(treedef, out), meta


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
