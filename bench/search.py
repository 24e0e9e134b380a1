"""Programs evaluated per second: a whole encoded population in one call vs one program at a time.

Run from the repository root: python -m bench.search [--task logreg|digits] [--sizes 256 1024]

The proxy task is `logistic_regression(dim=159, batch_size=64)` (159 weights + 1 bias = 160
parameters) or `digits_mlp(hidden=(2,))` (64*2+2+2*10+10 = 160 parameters); each run is
`tasks.train` for `--steps` steps, then the final train and valid losses, 1 learning rate x 1
seed per program. Times are the faster of two calls on new populations of the same shape (no
recompilation); "per cpu-s" divides by this process's CPU time instead of wall time, which is
steadier on a shared machine.

1. Vectorized: `search.interpreter.population_losses` on populations of P programs of three kinds:
   * warm starts: the six library programs, repeated;
   * mutants: warm starts after 1-3 random edits (insert / replace op / change constant / delete),
     as an evolutionary search makes them;
   * random: chains of 12 random ops (each reading the one before), so nearly every op occurs at
     every slot.
   Default: tiles of 128 sorted programs, and per slot a loop over the ops present when at most
   `LOOP_MAX_OPS` differ, else all ops and a select. At the largest P also: always select
   ("select all"), always loop ("loop only"), and one tile for the whole population.
2. One at a time: each program as its own `program_transform` in a jitted `tasks.train`, what a
   naive search does (compilation included; also its run time alone once compiled), and each
   program through one `encoded_transform` compiled once (no population vmap).
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

from search import interpreter
from search.encoding import encode, encode_population, encoded_length
from search.interpreter import encoded_transform, population_losses, program_transform, slot_ops
from search.ops import OPS
from search.program import NUM_FIXED, Instruction, Program
from search.programs_library import PROGRAMS, get_program
from tasks import get_task, num_params, train

MAX_LEN = 16
NUM_STATE = 2
TILE = 128


def random_edit(program: Program, rng: np.random.Generator) -> Program:
    """One random edit that gives a valid program of at most MAX_LEN encoded instructions."""
    ops = sorted(OPS)
    while True:
        insts = list(program.instructions)
        kind = rng.choice(["insert", "insert", "replace", "constant", "delete"])
        i = int(rng.integers(len(insts) + (kind == "insert")))
        try:
            if kind == "insert" or not insts:
                op = OPS[ops[rng.integers(len(ops))]]
                args = tuple(int(a) for a in rng.integers(0, NUM_FIXED + 6, op.arity))
                out = int(rng.integers(NUM_FIXED, NUM_FIXED + 6))
                insts.insert(i, Instruction(op.name, out, args, float(rng.uniform(-1, 1))))
            elif kind == "replace":
                same = [n for n in ops if OPS[n].arity == OPS[insts[i].op].arity]
                insts[i] = insts[i].replace(op=same[rng.integers(len(same))])
            elif kind == "constant":
                insts[i] = insts[i].replace(const=insts[i].const * float(rng.lognormal(0, 0.5)))
            else:
                del insts[i]
            edited = program.replace(instructions=tuple(insts))
        except ValueError:
            continue
        if encoded_length(edited) <= MAX_LEN and edited.num_state <= NUM_STATE:
            return edited


def population(kind: str, size: int, rng: np.random.Generator) -> list[Program]:
    warm = [get_program(name) for name in PROGRAMS]
    if kind == "warm starts":
        return [warm[i % len(warm)] for i in range(size)]
    programs = []
    for i in range(size):
        if kind == "mutants":
            program = warm[i % len(warm)]
            for _ in range(int(rng.integers(1, 4))):
                program = random_edit(program, rng)
        else:
            program = random_chain(12, rng)
        programs.append(program)
    return programs


def random_chain(length: int, rng: np.random.Generator) -> Program:
    """`length` random ops, each reading the previous result (so all are live), then `lr *`."""
    ops, out = sorted(OPS), NUM_FIXED + 2
    insts, prev, defined = [], 1, list(range(NUM_FIXED))  # starts from g
    while len(insts) < length:
        op = OPS[ops[rng.integers(len(ops))]]
        args = [prev, *(int(a) for a in rng.choice(defined, 2))][: op.arity]
        target = NUM_FIXED + len(insts) % 6
        inst = Instruction(op.name, target, tuple(rng.permutation(args)), float(rng.normal()))
        try:
            Program((*insts, inst, Instruction("mul", out, (2, target))), update=out)
        except ValueError:
            try:  # a scalar result: scale g by it
                tail = (Instruction("scale", out, (target, 1)), Instruction("mul", out, (2, out)))
                Program((*insts, inst, *tail), update=out)
            except ValueError:
                continue
        insts.append(inst)
        prev = target
        defined.append(target)
    try:
        return Program((*insts, Instruction("mul", out, (2, prev))), update=out)
    except ValueError:
        tail = (Instruction("scale", out, (prev, 1)), Instruction("mul", out, (2, out)))
        return Program((*insts, *tail), update=out)


def timed(fn):
    """(result, wall seconds, CPU seconds of this process) of `fn()`."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t0, time.process_time() - c0


def vectorized(task, kind: str, size: int, steps: int, rng, loop_max_ops: int, tile: int):
    """(compile+run seconds of the first call, (wall, CPU) seconds of the faster of two calls on
    new populations of the same shape, mean distinct ops per body slot)."""
    interpreter.LOOP_MAX_OPS = loop_max_ops
    jax.clear_caches()
    lrs, seeds = np.array([0.01], np.float32), np.array([0])
    pops = [encode_population(population(kind, size, rng), MAX_LEN, NUM_STATE) for _ in range(3)]

    def call(pop):
        return population_losses(task, pop, lrs, seeds, steps, tile=tile)

    first = timed(lambda: call(pops[0]))[1]
    runs = [timed(lambda p=p: call(p))[1:] for p in pops[1:]]
    distinct = float(np.mean(np.asarray(slot_ops(pops[1].body_ops).counts)))
    return first, min(runs), distinct


def run_fn(task, steps: int, make_optimizer):
    """`(arg, lr, seed) -> final valid loss` of `tasks.train` with `make_optimizer(arg, lr)`."""

    def run(arg, lr, seed):
        evaluate = {"eval_every": steps, "eval_splits": ("train", "valid")}
        metrics = train(task, make_optimizer(arg, lr), steps, jax.random.key(seed), **evaluate)[1]
        return metrics["valid_loss"][-1]

    return run


def one_at_a_time(task, programs: list[Program], steps: int):
    """(seconds for all programs, compilation included; seconds of their runs alone)."""
    total = runs = 0.0
    for program in programs:
        t0 = time.perf_counter()
        run = jax.jit(
            run_fn(task, steps, lambda p, lr, program=program: program_transform(program, lr))
        )
        jax.block_until_ready(run(None, 0.01, 0))
        total += time.perf_counter() - t0
        runs += timed(lambda run=run: run(None, 0.01, 1))[1]
    return total, runs


def one_at_a_time_encoded(task, programs: list[Program], steps: int) -> float:
    """Seconds for the programs run singly through one compiled `encoded_transform`."""
    run = jax.jit(run_fn(task, steps, encoded_transform))
    encoded = [encode(p, MAX_LEN, NUM_STATE) for p in programs]
    jax.block_until_ready(run(encoded[0], 0.01, 0))  # compile
    return timed(lambda: [run(e, 0.01, 0) for e in encoded])[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("logreg", "digits"), default="logreg")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--one-at-a-time", type=int, default=8, help="programs timed singly")
    args = parser.parse_args()
    if args.task == "logreg":
        task = get_task("logistic_regression", dim=159, batch_size=64)
    else:
        task = get_task("digits_mlp", hidden=(2,))
    n = num_params(task.init(jax.random.key(0)))
    rng = np.random.default_rng(0)
    default = interpreter.LOOP_MAX_OPS
    print(f"jax {jax.__version__}, {os.cpu_count()} cpus; {task.name}, {n} parameters, "
          f"{args.steps} steps, max_len {MAX_LEN}, 1 lr x 1 seed per program")  # fmt: skip
    print(f"{'population':12s} {'P':>5s} {'ops/slot':>8s} {'variant':>10s} {'compile+run':>11s} "
          f"{'run':>7s} {'programs/s':>10s} {'per cpu-s':>9s}")  # fmt: skip
    rates, largest = {}, max(args.sizes)
    for kind in ("warm starts", "mutants", "random"):
        for size in args.sizes:
            modes = [("default", default, TILE)]
            if size == largest:
                modes += [("select all", 0, TILE), ("loop only", 10**6, TILE)]
                modes += [("one tile", default, size)]
            for mode, loop_max, tile in modes:
                first, (wall, cpu), distinct = vectorized(
                    task, kind, size, args.steps, rng, loop_max, tile
                )
                rates[kind, size, mode] = size / wall
                print(f"{kind:12s} {size:5d} {distinct:8.1f} {mode:>10s} {first:10.2f}s "
                      f"{wall:6.3f}s {size / wall:10.0f} {size / cpu:9.0f}")  # fmt: skip
    interpreter.LOOP_MAX_OPS = default
    programs = population("mutants", args.one_at_a_time, rng)
    total, runs = one_at_a_time(task, programs, args.steps)
    single = len(programs) / total
    print(f"one at a time, {len(programs)} mutants, one program_transform each: {total:.1f} s "
          f"with compilation -> {single:.2f} programs/s (runs alone: "
          f"{len(programs) / runs:.0f} programs/s)")  # fmt: skip
    programs = population("mutants", 64, rng)
    seconds = one_at_a_time_encoded(task, programs, args.steps)
    print(f"one at a time, 64 mutants through one compiled encoded_transform: "
          f"{len(programs) / seconds:.0f} programs/s")  # fmt: skip
    for kind in ("warm starts", "mutants", "random"):
        rate = rates[kind, largest, "default"]
        print(f"vectorized ({kind}, P={largest}) over one program_transform each: "
              f"{rate / single:.0f}x")  # fmt: skip


if __name__ == "__main__":
    main()
