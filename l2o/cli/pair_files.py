"""The finished (optimizer, task) pairs of a comparison run, each saved atomically as it completes:
one JSON file per pair in the run's `pairs/` folder, beside the configuration they were computed
under. A resumed run takes the saved pairs and computes only the others; a resume under another
configuration is refused with the changed keys named."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from l2o.io import UserError, read_json, to_jsonable, write_json_atomic
from l2o.meta.checkpoint import config_changes

FOLDER = "pairs"
CONFIG = "config.json"


class PairFiles:
    """Pair results saved in `directory/pairs`; `resume` keeps those of an earlier run (read when
    made, so every process of a multi-process run sees the same ones); only `writer` writes."""

    def __init__(self, directory: Path, config: Any, *, resume: bool, writer: bool = True):
        self.folder, self.writer = Path(directory) / FOLDER, writer
        self.config = to_jsonable(config)
        self.saved: dict[str, Any] = {}
        if resume and (self.folder / CONFIG).exists():
            changes = config_changes(read_json(self.folder / CONFIG), self.config)
            if changes:
                raise UserError(
                    f"--resume: the configuration differs from the one the run in {directory} "
                    f"was started with: {'; '.join(changes)}; run it with that configuration, or "
                    "pass --overwrite, or choose another --out"
                )
            for path in sorted(self.folder.glob("pair_*.json")):
                entry = read_json(path)
                if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                    self.saved[entry["key"]] = entry.get("result")
        if writer:
            write_json_atomic(self.folder / CONFIG, self.config)

    def run(self, key: str, compute: Callable[[], Any]) -> Any:
        """The saved result of pair `key` (e.g. "task/optimizer"), or `compute()` saved now; in
        both cases as JSON holds it (lists, Python numbers, None for NaN), so that a resumed run
        ends with the very values of an uninterrupted one."""
        if key not in self.saved:
            self.saved[key] = to_jsonable(compute())
            if self.writer:
                name = f"pair_{len(list(self.folder.glob('pair_*.json'))):04d}.json"
                write_json_atomic(self.folder / name, {"key": key, "result": self.saved[key]})
        return self.saved[key]
