"""Progress on stderr: a rich progress bar on a terminal, periodic plain lines otherwise."""

from __future__ import annotations

import sys
import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class LogProgress:
    """The progress-bar interface of `rich.progress.Progress` for a stderr that is not a terminal
    (a log file, CI): one plain line per task at most every `interval` seconds, and at the end."""

    def __init__(self, interval: float = 30.0):
        self.interval = interval
        self.tasks: dict[int, dict] = {}

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            for job in self.tasks:
                self._print(job)

    def add_task(self, description: str, total: float | None = None, completed: float = 0) -> int:
        job = len(self.tasks)
        self.tasks[job] = {"description": description, "total": total, "completed": completed,
                           "start": time.monotonic(), "printed": time.monotonic()}  # fmt: skip
        return job

    def update(self, job: int, *, advance: float = 0, **fields) -> None:
        task = self.tasks[job]
        task.update({k: v for k, v in fields.items() if v is not None})
        task["completed"] += advance
        if time.monotonic() - task["printed"] >= self.interval:
            self._print(job)

    def advance(self, job: int, advance: float = 1) -> None:
        self.update(job, advance=advance)

    def _print(self, job: int) -> None:
        task = self.tasks[job]
        task["printed"] = time.monotonic()
        elapsed = task["printed"] - task["start"]
        total = "?" if task["total"] is None else f"{task['total']:g}"
        print(f"{task['description']}: {task['completed']:g}/{total} ({elapsed:.0f} s)",
              file=sys.stderr, flush=True)  # fmt: skip


def progress_bar() -> Progress | LogProgress:
    """A rich progress bar on stderr, or periodic plain lines when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return LogProgress()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
        console=None,
    )
