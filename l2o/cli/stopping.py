"""Stopping on Ctrl-C (SIGINT) or SIGTERM within about a second, with exit code 130 or 143 and
no file half-written.

A signal only records the request; commands call `check` between compiled calls and stop there
by raising `Interrupted`. A compiled call can run for many seconds, and Python runs its signal
handlers only once it returns: so a watchdog thread, woken at once by the signal through
`signal.set_wakeup_fd`, ends the process itself when the command has not stopped within
`GRACE_S`, between two file writes (`l2o.io.WRITING`). An interrupted process ends with
`os._exit`, without the interpreter's teardown: tearing down while XLA's threads still run
could crash (a segfault instead of exit code 130).

The `l2o` console script (`l2o.cli.__main__.run`) sets the handlers before the command's modules
are imported (this module imports only the standard library), so a signal during the seconds of
imports is caught too; through `run_stoppable`, a signal that arrives after the command's last
`check`, even once it has finished, still ends the process with 130 or 143, and every exit skips
the interpreter's teardown (the exit handlers run first), so no signal meets the default handler
on the way out. A signal that was ignored when the command started (as SIGINT is for a job
started in the background by a script) stays ignored."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence

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


def _writing():
    """`l2o.io.WRITING`, held while a file is written; a no-op lock before `l2o.io` is imported
    (no file can be written before it is)."""
    return getattr(sys.modules.get("l2o.io"), "WRITING", None) or contextlib.nullcontext()


def exit_now(code: int) -> None:
    """End the process with `code` after flushing its output, without the interpreter's
    teardown, once no file is being written."""
    with _writing():
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
    previous = {s: signal.getsignal(s) for s in EXIT_CODES}
    for s, handler in previous.items():
        if handler is not signal.SIG_IGN:  # an ignored signal stays ignored (module docstring)
            signal.signal(s, lambda signum, frame: _requested.append(signum))
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


def run_stoppable(main: Callable[[], int], received: Sequence[int] = ()) -> None:
    """Run `main()` (it returns the exit code) under `stop_on_signals` and end the process: with
    exit code 130 or 143 if a signal asked to stop at any moment, even after the command's last
    `check`, or came before (`received`: then `main` does not start); otherwise with `main`'s
    code, after the exit handlers ran (see the module)."""
    with stop_on_signals():
        _requested.extend(received)
        code = 0 if _requested else main()  # a signal before the start: main does not start
        atexit._run_exitfuncs()  # e.g. JAX's clean-up, while signals are still caught
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        # the stop came before the start, or after the last check
        if _requested and code not in EXIT_CODES.values():
            code = Interrupted(_requested[0]).code
            print(interrupt_message(code), file=sys.stderr)
        exit_now(code)
