"""Who may write in an output folder. One policy for every command: a folder that already holds
files is refused unless the run resumes it (`--resume`) or replaces it (`--overwrite`, which first
deletes the files an earlier run wrote there). And one run at a time: a run holds an exclusive
advisory lock (`fcntl.flock`) on a lock file in its folder, with its pid written in it, for its
whole life; the operating system releases it when the process ends, however it ends. A run that
ends normally deletes its lock file (still holding the lock, so that a process that opened the
file meanwhile sees it gone and tries again); a killed run leaves it, unlocked."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from pathlib import Path

from l2o.io import UserError, check_writable_dir, remove_stale_temp_files

LOCK_FILE = ".l2o.lock"
RUN_FILES = re.compile(
    r"results\.json|report\.md|.*\.png|events\.out\.tfevents\..*|meta_metrics\.json"
    r"|ckpt_\d{8}\.npz|optimizer\.safetensors|study\.json|study\.journal.*|evolution\.json"
    r"|best_rule\.json|evolve_\d{8}\.json|journal\.json|distill\.json|pairs|\..*\.tmp"
)
"""Every name an l2o command writes in its output folder (`pairs` is a folder)."""

_held: dict[Path, int] = {}
"""Lock file -> open descriptor, for each lock this process holds."""


def folder_contents(directory: Path) -> list[str]:
    """The names in `directory` besides its lock file; [] if it is missing or cannot be read
    (`check_writable_dir` then says what is wrong with it)."""
    try:
        return sorted(p.name for p in Path(directory).expanduser().iterdir() if p.name != LOCK_FILE)
    except (OSError, ValueError, RuntimeError):
        return []


def refusal(directory: Path, can_resume: bool) -> str:
    """The one-line error for a folder that already holds a run."""
    resume = "--resume to continue the run in it or " if can_resume else ""
    return (f"{directory} is not empty: pass {resume}--overwrite to replace its run, or choose "
            "another --out")  # fmt: skip


def lock(directory: Path, name: str = LOCK_FILE) -> Path:
    """Take the exclusive lock `directory/name` for this process (kept until `release_locks` or
    the process ends); UserError naming the holder's pid if another process has it."""
    path = Path(directory) / name
    if path in _held:
        return path
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise UserError(f"cannot create the lock file {path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{directory} is in use by another l2o run (pid {holder}); wait for "
                            "it to end or choose another --out") from None  # fmt: skip
        if _same_file(path, fd):
            break
        os.close(fd)  # its holder deleted it on release: lock the file now at `path`
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[path] = fd
    return path


def _same_file(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def release_locks() -> None:
    """Delete the lock files of this process and release their locks."""
    while _held:
        path, fd = _held.popitem()
        path.unlink(missing_ok=True)
        os.close(fd)


def clear_run_files(directory: Path) -> None:
    """Delete what an earlier run wrote in `directory`; UserError, deleting nothing, if it also
    holds files no l2o command writes."""
    names = folder_contents(directory)
    foreign = [n for n in names if not RUN_FILES.fullmatch(n)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise UserError(f"--overwrite: {directory} holds files no l2o run writes ({shown}); "
                        "move them or choose another --out")  # fmt: skip
    for name in names:
        path = directory / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def claim(
    out: Path, *, resume: bool = False, overwrite: bool = False, can_resume: bool = True
) -> Path:
    """The output folder of a run, created, locked for this process and checked against the
    policy: non-empty only with `resume` (kept; dead runs' temp files removed) or `overwrite`
    (emptied of the earlier run's files)."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    if not (resume or overwrite) and folder_contents(out):  # before the folder is touched
        raise UserError(refusal(out, can_resume))
    directory = check_writable_dir(out)
    lock(directory)
    if overwrite:
        clear_run_files(directory)
    elif resume:
        remove_stale_temp_files(directory)  # the lock is ours: no live run writes them
    elif folder_contents(directory):  # a run that started and ended since the first check
        raise UserError(refusal(directory, can_resume))
    return directory
