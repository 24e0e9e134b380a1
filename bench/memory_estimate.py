"""The memory estimate of `l2o.cli.resources` against the measured peak of the run it describes.

Run from the repository root: python -m bench.memory_estimate

For an MLP on the digits task trained 20 Adam steps in a fresh process, prints the estimate
divided by the peak resident memory the run added (compilation included).
"""

from __future__ import annotations

import subprocess
import sys

MEASURE = """
import resource, sys, jax
from baselines import get_optimizer
from l2o.cli.resources import Call, estimate, run_bytes, run_values
from tasks import get_task, train
task, optimizer = get_task("digits_mlp", hidden=[{h}, {h}]), get_optimizer("adam")
call = Call(run_bytes(task, [optimizer])[0], 1, run_values(20, 0), 0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
run = jax.jit(lambda key: train(task, optimizer, 20, key)[1]["train_loss"])
jax.block_until_ready(run(jax.random.key(0)))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
print(estimate([call]).total / 2**20, peak / 2**20)
"""


def main() -> None:
    for hidden in (3000, 4000):
        done = subprocess.run([sys.executable, "-c", MEASURE.format(h=hidden)],
                              capture_output=True, text=True, check=True)  # fmt: skip
        estimate, peak = map(float, done.stdout.split()[-2:])
        print(f"hidden [{hidden}, {hidden}]: estimate {estimate:.0f} MB, measured peak "
              f"{peak:.0f} MB, ratio {estimate / peak:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
