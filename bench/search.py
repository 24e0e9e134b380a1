"""Programs evaluated per second: a whole encoded population in one call vs one program at a time.

Run: python bench/search.py [--task logreg|digits] [--steps 100] [--sizes 256 1024]
(this file drops its own folder from `sys.path`, where its name would shadow the `search` package;
other bench scripts importing `search` need `python -P` while this file exists).

The proxy task is `logistic_regression(dim=159, batch_size=64)` (159 weights + 1 bias = 160
parameters) or `digits_mlp(hidden=(2,))` (64*2+2+2*10+10 = 160 parameters); each run is
`tasks.train` for `--steps` steps, then the final train and valid losses, 1 learning rate x 1
seed per program.

1. Vectorized: `search.interpreter.population_losses` on populations of P programs of three kinds,
   each measured on a second population of the same shape (compiled once, reused):
   * warm starts: the six library programs, repeated;
   * mutants: warm starts after 1-3 random edits (insert / replace op / change constant / delete),
     as an evolutionary search makes them;
   * random: chains of 12 random ops (each reading the one before), so nearly every op occurs
     at every slot.
   The body dispatch runs only the ops present at a slot when there are at most
   `LOOP_MAX_OPS` of them, else all ops and a select; the table shows both pure strategies too.
2. One at a time: each program as its own `program_transform`, jitted `tasks.train`: what a naive
   search does (compilation included), and its run time alone once compiled.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import jax  # noqa: E402
import numpy as np  # noqa: E402

from search import interpreter  # noqa: E402
from search.encoding import encode_population, encoded_length  # noqa: E402
from search.interpreter import population_losses, program_transform, slot_ops  # noqa: E402
from search.ops import OPS  # noqa: E402
from search.program import NUM_FIXED, Instruction, Program  # noqa: E402
from search.programs_library import PROGRAMS, get_program  # noqa: E402
from tasks import get_task, num_params, train  # noqa: E402

MAX_LEN = 16
NUM_STATE = 2


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
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t0


def vectorized(task, kind: str, size: int, steps: int, rng, loop_max_ops: int | None = None):
    """(compile+run seconds of the first call, best run seconds over two new populations,
    mean distinct ops per body slot)."""
    if loop_max_ops is not None:
        interpreter.LOOP_MAX_OPS = loop_max_ops
        jax.clear_caches()
    lrs, seeds = np.array([0.01], np.float32), np.array([0])
    pops = [encode_population(population(kind, size, rng), MAX_LEN, NUM_STATE) for _ in range(3)]
    _, first = timed(lambda: population_losses(task, pops[0], lrs, seeds, steps))
    best = min(
        timed(lambda p=p: population_losses(task, p, lrs, seeds, steps))[1] for p in pops[1:]
    )
    distinct = float(np.mean(np.asarray(slot_ops(pops[1].body_ops).counts)))
    return first, best, distinct


def one_at_a_time(task, programs: list[Program], steps: int):
    """(seconds for all programs, compilation included; seconds of their runs alone)."""
    total = runs = 0.0
    for program in programs:
        t0 = time.perf_counter()

        @jax.jit
        def run(lr, seed, program=program):
            optimizer = program_transform(program, lr)
            metrics = train(task, optimizer, steps, jax.random.key(seed), eval_every=steps,
                            eval_splits=("train", "valid"))[1]  # fmt: skip
            return metrics["valid_loss"][-1]

        jax.block_until_ready(run(0.01, 0))
        total += time.perf_counter() - t0
        runs += timed(lambda run=run: run(0.01, 1))[1]
    return total, runs


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
    print(f"{'population':12s} {'P':>5s} {'ops/slot':>8s} {'dispatch':>10s} {'compile+run':>11s} "
          f"{'run':>7s} {'programs/s':>10s}")  # fmt: skip
    rates = {}
    for kind in ("warm starts", "mutants", "random"):
        for size in args.sizes:
            modes = [("hybrid", default)]
            if size == max(args.sizes):
                modes += [("select all", 0), ("loop only", 10**6)]
            for mode, loop_max in modes:
                first, best, distinct = vectorized(task, kind, size, args.steps, rng, loop_max)
                rates[kind, size, mode] = size / best
                print(f"{kind:12s} {size:5d} {distinct:8.1f} {mode:>10s} {first:10.2f}s "
                      f"{best:6.3f}s {size / best:10.0f}")  # fmt: skip
    interpreter.LOOP_MAX_OPS = default
    programs = population("mutants", args.one_at_a_time, rng)
    total, runs = one_at_a_time(task, programs, args.steps)
    single = len(programs) / total
    print(f"one at a time, {len(programs)} mutants: {total:.1f} s with compilation -> "
          f"{single:.2f} programs/s; runs alone {len(programs) / runs:.0f} programs/s")  # fmt: skip
    size = max(args.sizes)
    for kind in ("warm starts", "mutants", "random"):
        rate = rates[kind, size, "hybrid"]
        print(f"speed-up of one vectorized call ({kind}, P={size}) over one at a time: "
              f"{rate / single:.0f}x")  # fmt: skip


if __name__ == "__main__":
    main()
