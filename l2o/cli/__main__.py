"""`python -m l2o.cli ARGS` runs the `l2o` command."""

import sys

from l2o.cli.main import main

sys.exit(main())
