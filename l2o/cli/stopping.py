"""Stopping on Ctrl-C (SIGINT) or SIGTERM within about a second, with exit code 130 or 143 and
no file half-written.

A signal only records the request; commands call `check` between compiled calls and stop there
by raising `Interrupted`. A compiled call can run for many seconds, and Python runs its signal
handlers only once it returns: so a watchdog thread, woken at once by the signal through
`signal.set_wakeup_fd`, ends the process itself when the command has not stopped within
`GRACE_S`, between two file writes (`l2o.io.WRITING`). An interrupted process ends with
`os._exit`, without the interpreter's teardown: tearing down while XLA's threads still run
could crash (a segfault instead of exit code 130)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator

from l2o.io import WRITING

GRACE_S = 1.0
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
_requested: list[int] = []
"""The signals received while `stop_on_signals` is active."""


class Interrupted(KeyboardInterrupt):
    """A stop asked for by a signal; `code` is the exit code (128 + the signal number)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.code = EXIT_CODES.get(signum, 128 + signum)


def check() -> None:
    """Raise `Interrupted` if a signal asked the run to stop (call it between compiled calls)."""
    if _requested:
        raise Interrupted(_requested[0])


def interrupt_message(code: int) -> str:
    """The line said on stderr when a run stops early."""
    what = "terminated" if code == EXIT_CODES[signal.SIGTERM] else "interrupted"
    return f"l2o: {what}; no file was left half-written"


def exit_now(code: int) -> None:
    """End the process with `code` after flushing its output, without the interpreter's
    teardown, once no file is being written."""
    with WRITING:
        if sys.stderr.isatty():
            sys.stderr.write("\x1b[?25h")  # the progress bar may have hidden the cursor
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _watch(wakeup: socket.socket, finished: threading.Event) -> None:
    """End the process `GRACE_S` after the first SIGINT or SIGTERM unless the command has
    finished."""
    while True:
        received = wakeup.recv(1)
        if not received:  # closed: the command finished without a stop
            return
        if received[0] in EXIT_CODES:  # the wakeup fd also hears other handled signals
            break
    _requested.append(received[0])
    if finished.wait(GRACE_S):
        return
    code = Interrupted(received[0]).code
    print(interrupt_message(code), file=sys.stderr)
    exit_now(code)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM ask the run to stop (see the module); call in the
    main thread only."""
    _requested.clear()
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    finished = threading.Event()
    previous = {s: signal.signal(s, lambda signum, frame: _requested.append(signum))
                for s in EXIT_CODES}  # fmt: skip
    previous_fd = signal.set_wakeup_fd(ours.fileno(), warn_on_full_buffer=False)
    watchdog = threading.Thread(target=_watch, args=(theirs, finished), daemon=True)
    watchdog.start()
    try:
        yield
    finally:
        finished.set()
        signal.set_wakeup_fd(previous_fd)
        for s, handler in previous.items():
            signal.signal(s, handler)
        ours.close()
        watchdog.join()
        theirs.close()
