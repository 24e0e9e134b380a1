"""Sharded over 4 host CPU devices vs 1 device: a 64-particle meta-training step and a 256-program
search generation.

Run from the repository root: python -m bench.sharding [--outer-steps 5] [--devices 4]

The device count is fixed when JAX starts, so each configuration runs in its own subprocess
(`--xla_force_host_platform_device_count=N`); the parent prints both and their ratios.

1. Meta-training: PES with 64 tasks x 1 antithetic pair (64 particles, 128 inner runs of 50
   steps per outer step) of the per-parameter MLP learned optimizer on the digits MLP 64-32-10
   (batch 128), the workload of `bench/meta.py` scaled to 64 tasks; the particles are split
   over the devices. Seconds of the first step (compilation included) and the mean of
   `--outer-steps` steps after it.
2. Search: one generation of 256 mutants of the library programs (as `bench/search.py` makes
   them), 1 learning rate x 1 seed each, 100 steps of `logistic_regression(dim=159)`, through
   `search.interpreter.population_losses`; the programs are split over the devices. Seconds of
   the first call (compilation included) and the faster of two calls on new populations.

Host "devices" share the machine's cores: on 2 cores, 4 devices can at best keep both busy
when one device alone does not, so expect little gain here; on a GPU/TPU host or across hosts
the same code splits the work over real devices.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

MARK = "RESULT "


def worker(outer_steps: int) -> dict[str, float]:
    """The two measurements on this process's devices."""
    import jax

    from bench.search import MAX_LEN, NUM_STATE, population
    from l2o.meta.estimators import EstimatorConfig
    from l2o.meta.objective import MetaObjective
    from l2o.meta.trainer import make_meta_trainer
    from l2o.meta.types import OuterConfig
    from l2o.optimizers.registry import get_learned
    from search.encoding import encode_population
    from search.interpreter import population_losses
    from tasks import get_task

    out: dict[str, float] = {"devices": jax.device_count()}
    init_theta, transform = get_learned("mlp")
    trainer = make_meta_trainer(
        [get_task("digits_mlp", batch_size=128)],
        init_theta,
        transform,
        MetaObjective(horizon=200, truncation=50),
        EstimatorConfig("pes", num_tasks=64, num_pairs=1, sigma=0.01),
        OuterConfig(steps=outer_steps + 1),
    )
    t0 = time.perf_counter()
    state, _ = trainer.step(trainer.init())
    jax.block_until_ready(state.theta)
    out["meta_first_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(outer_steps):
        state, _ = trainer.step(state)
    jax.block_until_ready(state.theta)
    out["meta_step_s"] = (time.perf_counter() - t0) / outer_steps
    out["meta_inner_steps_per_s"] = 64 * 50 * 2 / out["meta_step_s"]

    task = get_task("logistic_regression", dim=159, batch_size=64)
    rng = np.random.default_rng(0)
    lrs, seeds = np.array([0.01], np.float32), np.array([0])
    pops = [encode_population(population("mutants", 256, rng), MAX_LEN, NUM_STATE) for _ in "abc"]
    times = []
    for pop in pops:
        t0 = time.perf_counter()
        population_losses(task, pop, lrs, seeds, 100)
        times.append(time.perf_counter() - t0)
    out["search_first_s"], out["search_s"] = times[0], min(times[1:])
    out["programs_per_s"] = 256 / out["search_s"]
    return out


def run_worker(devices: int, outer_steps: int) -> dict[str, float]:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    command = [sys.executable, "-m", "bench.sharding", "--worker", "--outer-steps",
               str(outer_steps)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"worker with {devices} devices failed:\n{done.stderr[-3000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith(MARK))
    return json.loads(line.removeprefix(MARK))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outer-steps", type=int, default=5)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(MARK + json.dumps(worker(args.outer_steps)), flush=True)
        return
    print(f"{os.cpu_count()} cpus; load average {os.getloadavg()[0]:.1f} at the start")
    one = run_worker(1, args.outer_steps)
    many = run_worker(args.devices, args.outer_steps)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    rows = [
        ("meta-training, first step (compile + run)", "meta_first_s"),
        ("meta-training, one outer step (64 particles)", "meta_step_s"),
        ("search, first generation (compile + run)", "search_first_s"),
        ("search, one generation (256 programs)", "search_s"),
    ]
    n = args.devices
    print(f"{'':46s} {'1 device':>10s} {f'{n} devices':>10s} {'speedup':>8s}")
    for label, key in rows:
        print(f"{label:46s} {one[key]:9.2f}s {many[key]:9.2f}s {one[key] / many[key]:7.2f}x")
    print(f"inner steps/s of meta-training: {one['meta_inner_steps_per_s']:,.0f} on 1 device, "
          f"{many['meta_inner_steps_per_s']:,.0f} on {n}")  # fmt: skip
    print(f"programs/s of search: {one['programs_per_s']:,.0f} on 1 device, "
          f"{many['programs_per_s']:,.0f} on {n}")  # fmt: skip


if __name__ == "__main__":
    main()
