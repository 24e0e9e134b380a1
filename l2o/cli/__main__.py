"""`python -m l2o.cli ARGS` and the `l2o` console script (`run`): the command, with signals caught
from before its modules (JAX among them) are imported, see `l2o.cli.stopping`.

A first handler, set by this module's first statements through the interpreter's built-in
`_signal` module, only records SIGINT and SIGTERM: importing `l2o.cli.stopping` (sockets,
threads, enums) takes tens of milliseconds, and a signal in them would otherwise end the process
with a traceback. A signal ignored at the start stays ignored."""

import _signal

EARLY_SIGNALS: list[int] = []
"""SIGINT and SIGTERM received before `l2o.cli.stopping` took over."""

for _signum in (_signal.SIGINT, _signal.SIGTERM):
    if _signal.getsignal(_signum) is not _signal.SIG_IGN:
        _signal.signal(_signum, lambda signum, frame: EARLY_SIGNALS.append(signum))

from l2o.cli.stopping import run_stoppable  # noqa: E402


def run() -> None:
    """Run the `l2o` command on `sys.argv` and exit with its code (130 or 143 on a signal)."""

    def main() -> int:
        from l2o.cli.main import main

        return main()

    run_stoppable(main, received=EARLY_SIGNALS)


if __name__ == "__main__":
    run()
