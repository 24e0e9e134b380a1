"""`python -m l2o.cli ARGS` runs the `l2o` command."""

from l2o.cli.main import run

run()
