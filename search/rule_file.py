"""Rule files: a discovered update rule as checked JSON data, never code (Chen et al. 2023,
"Symbolic Discovery of Optimization Algorithms", ship their rule as a program).

A rule file is `{"format": "l2o-rule", "version": 1, "program": Program.to_json(), "metadata":
{...}, "sha256": "..."}`. Reading one parses JSON only and checks it against the op table and the
limits below; every failure is a ValueError whose one-line message names the file.

`sha256` binds the program to its metadata (fitness, learning rate, ...): the hex digest of the
canonical JSON of the other four keys, so the layout of the file does not matter. A file whose
content no longer matches it is refused; files written before it existed lack it and load.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from typing import Any

import optax

from search.program import Program

FORMAT = "l2o-rule"
VERSION = 1
MAX_FILE_BYTES = 64 * 1024
MAX_DEPTH = 8
MAX_STRING = 256
MAX_METADATA_ITEMS = 256
DEFAULT_LEARNING_RATE = 1e-3
MAX_LEARNING_RATE = 1e30  # float32 on the device, like the constants
ADAMW_RATIO = "adamw_lr_ratio"
"""The metadata entry of the rule's tuned learning rate relative to AdamW's (`search.lr_transfer`);
its `median` converts an AdamW learning rate into the rule's."""
TOP_KEYS = ("format", "version", "program", "metadata", "sha256")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")
_CODE = re.compile(
    r"__\w+__|\b(import|lambda|eval|exec|compile|getattr|globals|subprocess)\b|\bos\.|[`\n\r]|\$\(",
)


def _reject_constant(name: str):
    raise ValueError(f"non-finite number {name}")


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError(f"duplicate keys {sorted({k for k in keys if keys.count(k) > 1})}")
    return dict(pairs)


def _max_depth(text: str) -> int:
    """Deepest nesting of JSON arrays and objects, strings skipped (checked before parsing)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def check_metadata(metadata: Any, depth: int = 0) -> None:
    """Raise ValueError unless `metadata` is small plain JSON: identifier keys, finite numbers,
    short strings that do not look like code."""
    if depth > MAX_DEPTH:
        raise ValueError(f"metadata nested deeper than {MAX_DEPTH}")
    if isinstance(metadata, dict):
        items = metadata.items()
        for key in metadata:
            if not isinstance(key, str) or not _KEY.fullmatch(key):
                raise ValueError(f"metadata key {key!r} is not a plain name")
    elif isinstance(metadata, list):
        items = enumerate(metadata)
    elif isinstance(metadata, str):
        if len(metadata) > MAX_STRING:
            raise ValueError(f"metadata string longer than {MAX_STRING} characters")
        if _CODE.search(metadata):
            raise ValueError(f"metadata string {metadata[:40]!r} looks like code")
        return
    elif isinstance(metadata, bool) or metadata is None:
        return
    elif isinstance(metadata, int | float):
        try:
            finite = math.isfinite(metadata)
        except OverflowError:  # an int beyond the float range
            finite = False
        if not finite:
            raise ValueError(f"metadata number {metadata!r:.40} is not finite")
        return
    else:
        raise ValueError(f"metadata value of type {type(metadata).__name__} is not plain JSON")
    if len(metadata) > MAX_METADATA_ITEMS:
        raise ValueError(f"metadata container with more than {MAX_METADATA_ITEMS} items")
    for _, value in items:
        check_metadata(value, depth + 1)


def _digest(document: dict[str, Any]) -> str:
    """The sha256 of a (parsed) rule document's canonical JSON, its own digest left out."""
    signed = {"format": document["format"], "version": document["version"],
              "program": document["program"], "metadata": document.get("metadata", {})}  # fmt: skip
    text = json.dumps(signed, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _parse(text: str) -> tuple[Program, dict[str, Any]]:
    if _max_depth(text) > MAX_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_DEPTH}")
    try:
        data = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"not valid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ValueError("top level must be a JSON object")
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown or "program" not in data:
        raise ValueError(
            f"keys must be {list(TOP_KEYS)} ('metadata' and 'sha256' optional); got {sorted(data)}"
        )
    version = data.get("version")
    if data.get("format") != FORMAT or type(version) is not int or version != VERSION:
        raise ValueError(f"format must be {FORMAT!r} version {VERSION}")
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ValueError("metadata must be a JSON object")
    check_metadata(metadata)
    program = Program.from_json(data["program"])
    if "sha256" in data and data["sha256"] != _digest(data):
        raise ValueError(
            "sha256 mismatch: the program or its metadata changed after the file was written"
        )
    return program, metadata


def read_rule(path: str | os.PathLike) -> tuple[Program, dict[str, Any]]:
    """`(program, metadata)` of a rule file, fully checked (its sha256 too, when it has one);
    never executes anything."""
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise ValueError(f"file is {size} bytes; at most {MAX_FILE_BYTES}")
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise ValueError(f"file is larger than {MAX_FILE_BYTES} bytes")
        return _parse(raw.decode("utf-8"))
    except (ValueError, OSError, UnicodeDecodeError) as e:
        message = " ".join(str(e).split())
        raise ValueError(f"rule file {os.fspath(path)!r}: {message}") from None


def load_program(path: str | os.PathLike) -> Program:
    """The program of a rule file (see `read_rule`)."""
    return read_rule(path)[0]


def default_learning_rate(path: str | os.PathLike, metadata: dict[str, Any]) -> float:
    """The metadata's `learning_rate` (else 1e-3); ValueError unless a number in (0, max]."""
    learning_rate = metadata.get("learning_rate", DEFAULT_LEARNING_RATE)
    if (
        isinstance(learning_rate, bool)
        or not isinstance(learning_rate, int | float)
        or not 0 < learning_rate <= MAX_LEARNING_RATE
    ):
        raise ValueError(
            f"rule file {os.fspath(path)!r}: learning_rate must be a number in "
            f"(0, {MAX_LEARNING_RATE:g}]"
        )
    return float(learning_rate)


def adamw_ratio(path: str | os.PathLike, metadata: dict[str, Any]) -> float:
    """The median of the metadata's `adamw_lr_ratio` (the rule's tuned learning rate over AdamW's);
    ValueError if the file records none or it is not a number in (0, max]."""
    entry = metadata.get(ADAMW_RATIO)
    if entry is None:
        raise ValueError(
            f"rule file {os.fspath(path)!r} records no learning-rate ratio to AdamW "
            f"(metadata {ADAMW_RATIO!r}); measure it with `l2o calibrate-rule`, or pass the "
            "rule's own learning rate"
        )
    ratio = entry.get("median") if isinstance(entry, dict) else None
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio <= 1e30:
        raise ValueError(
            f"rule file {os.fspath(path)!r}: {ADAMW_RATIO}.median must be a positive number"
        )
    return float(ratio)


def load_rule(
    path: str | os.PathLike,
    learning_rate: optax.ScalarOrSchedule | None = None,
    *,
    adamw_lr: optax.ScalarOrSchedule | None = None,
) -> optax.GradientTransformationExtraArgs:
    """A rule file as an optax transform.

    Args:
      path: the rule file.
      learning_rate: the program's `lr`; by default the metadata's `learning_rate`, else 1e-3.
      adamw_lr: instead of `learning_rate`, a learning rate that suits AdamW on the task: the
        rule then runs at `ratio * adamw_lr`, `ratio` the file's `adamw_lr_ratio` median
        (`search.lr_transfer`). A float or an optax schedule.

    Returns:
      `search.interpreter.program_transform` of the file's program.
    """
    # The interpreter imports `tasks` (for population runs); importing it here, on use, keeps
    # `import search` light.
    from search.interpreter import program_transform

    if learning_rate is not None and adamw_lr is not None:
        raise ValueError("pass learning_rate or adamw_lr, not both")
    program, metadata = read_rule(path)
    if adamw_lr is not None:
        ratio = adamw_ratio(path, metadata)
        learning_rate = (
            (lambda step: ratio * adamw_lr(step)) if callable(adamw_lr) else (ratio * adamw_lr)
        )
    elif learning_rate is None:
        learning_rate = default_learning_rate(path, metadata)
    return program_transform(program, learning_rate)


def save_rule(
    path: str | os.PathLike, program: Program, metadata: dict[str, Any] | None = None
) -> None:
    """Write `program` and `metadata` as a rule file with their sha256, atomically (temporary
    file, `os.replace`)."""
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise ValueError("metadata must be a dict")
    check_metadata(metadata)
    document = {"format": FORMAT, "version": VERSION, "program": program.to_json(),
                "metadata": metadata}  # fmt: skip
    # The digest of the document as it reads back (JSON turns tuples into lists, and so on).
    document["sha256"] = _digest(json.loads(json.dumps(document, allow_nan=False)))
    text = json.dumps(document, indent=1, allow_nan=False) + "\n"
    if len(text.encode()) > MAX_FILE_BYTES:
        raise ValueError(f"rule file would exceed {MAX_FILE_BYTES} bytes")
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".rule-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 -> the mode of any new file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
