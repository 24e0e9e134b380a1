"""`python -m l2o.cli ARGS` and the `l2o` console script (`run`): the command, with signals caught
from before its modules (JAX among them) are imported, see `l2o.cli.stopping`."""

from l2o.cli.stopping import run_stoppable


def run() -> None:
    """Run the `l2o` command on `sys.argv` and exit with its code (130 or 143 on a signal)."""

    def main() -> int:
        from l2o.cli.main import main

        return main()

    run_stoppable(main)


if __name__ == "__main__":
    run()
