"""SIGINT at random moments of `l2o train`, `l2o evaluate` and `l2o meta-train`: the exit code
and how long the process took to stop.

Run from the repository root: python -m bench.sigint_storm [--trials 20] [--seed 0]
[--commands train,evaluate,meta-train] [--json runs/sigint_storm.json] [--script PATH]

Each command runs as `python -m l2o.cli ...` in a fresh process (no compilation cache: it
compiles as a user's run does) in a fresh output folder; with `--script`, through that `l2o`
launcher instead (e.g. the one `pip install .` writes into a fresh environment, as a user runs
it). One uninterrupted run first measures how
long the command takes from start to exit (T). Each trial then starts the command again, sends
SIGINT after a delay drawn uniformly from [0, T) by a seeded generator, and records the exit
code, the seconds from the signal to the exit, whether stderr holds a traceback, and whether a
temporary file was left. A trial whose process ended before the delay ran out (runs vary in
length) is drawn again, so that every counted trial hit a live process. Every counted trial
should end with exit code 130, or be killed by the signal itself (a SIGINT before the
interpreter sets its handler: a shell reports that as 130 too; counted apart). A signal that
reaches a run in its last moments, after its results were written, may end it with exit 0:
counted apart as finished when its `results.json` is there and it exited within 2 s of the
signal, as another exit otherwise.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EVALUATE = """tasks: [rosenbrock, quadratic_k100]
optimizers: [adam, sgd]
steps: 60
seeds: 2
lr_grid: {low: 1.0e-3, high: 0.1, num: 3, extensions: 0}
timing_steps: 0
"""
COMMANDS = {
    "train": ["train", "--task", "digits_mlp", "--optimizer", "adam", "--lr", "3e-3",
              "--steps", "100000", "--eval-every", "500", "--seed", "0"],
    "evaluate": ["evaluate", "--config", "{folder}/evaluate.yaml"],
    "meta-train": ["meta-train", "--config", str(REPO / "configs" / "meta_tiny.yaml"),
                   "--steps", "20"],
}  # fmt: skip
MAX_REDRAWS = 20


LAUNCHER = [sys.executable, "-m", "l2o.cli"]


def start(command: str, folder: Path, out: Path) -> subprocess.Popen:
    argv = [a.format(folder=folder) for a in COMMANDS[command]]
    return subprocess.Popen([*LAUNCHER, *argv, "--out", str(out)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def reference_seconds(command: str, folder: Path) -> float:
    """Wall time of an uninterrupted run, from the start of the process to its exit."""
    t0 = time.perf_counter()
    proc = start(command, folder, folder / f"{command}_reference")
    _, err = proc.communicate()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{command}: the uninterrupted run exited {proc.returncode}: {err[-999:]}")
    return seconds


def trial(command: str, folder: Path, out: Path, delay: float) -> dict | None:
    """One run stopped by SIGINT after `delay` seconds; None if it ended before."""
    proc = start(command, folder, out)
    deadline = time.perf_counter() + delay
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            proc.communicate()
            return None
        time.sleep(min(0.005, max(0.0, deadline - time.perf_counter())))
    if proc.poll() is not None:
        proc.communicate()
        return None
    sent = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        err += "\n(killed: no exit 120 s after SIGINT)"
    latency = time.perf_counter() - sent
    lines = err.strip().splitlines()
    return {
        "delay_s": round(delay, 3),
        "exit_code": proc.returncode,
        "stop_s": round(latency, 3),
        "traceback": "Traceback" in err,
        "last_line": lines[-1] if lines else "",
        "temp_files": sorted(p.name for p in out.rglob("*.tmp")) if out.exists() else [],
        "results_written": (out / "results.json").is_file(),
    }


def storm(command: str, trials: int, rng: random.Random, folder: Path) -> dict:
    total = reference_seconds(command, folder)
    print(f"{command}: uninterrupted run {total:.1f} s", flush=True)
    results, redraws = [], 0
    while len(results) < trials:
        delay = rng.uniform(0.0, total)
        result = trial(command, folder, folder / f"{command}_{len(results)}_{redraws}", delay)
        if result is None:
            redraws += 1
            print(f"  (ended before the signal at {delay:.2f} s: drawn again)", flush=True)
            if redraws > MAX_REDRAWS:
                raise SystemExit(f"{command}: {redraws} runs ended before their signal")
            continue
        results.append(result)
        print(f"  trial {len(results):2d}: SIGINT at {delay:6.2f} s -> exit "
              f"{result['exit_code']} in {result['stop_s']:.2f} s", flush=True)  # fmt: skip
    codes = [r["exit_code"] for r in results]
    finished = [
        r["exit_code"] == 0 and r["results_written"] and r["stop_s"] <= 2.0 for r in results
    ]
    stops = sorted(r["stop_s"] for r in results)
    return {
        "uninterrupted_s": round(total, 2),
        "trials": results,
        "redrawn": redraws,
        "exit_130": codes.count(130),
        "killed_by_sigint": codes.count(-signal.SIGINT),
        "finished": sum(finished),
        "other_exits": sorted(
            c
            for c, f in zip(codes, finished, strict=True)
            if not f and c not in (130, -signal.SIGINT)
        ),  # fmt: skip
        "tracebacks": sum(r["traceback"] for r in results),
        "temp_files_left": sum(bool(r["temp_files"]) for r in results),
        "stop_s": {"median": stops[len(stops) // 2], "max": stops[-1]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="SIGINTs per command")
    parser.add_argument("--seed", type=int, default=0, help="seed of the signal moments")
    parser.add_argument("--commands", default=",".join(COMMANDS), help="comma-separated")
    parser.add_argument("--json", type=Path, help="also write every trial to this file")
    parser.add_argument("--script", type=Path, help="an `l2o` launcher to run the commands with")
    args = parser.parse_args()
    if args.script:
        LAUNCHER[:] = [str(args.script.resolve())]
    # The commands get SIGINT as from a terminal, even when this script runs as a background
    # job (which starts with SIGINT ignored: a command keeps an ignored signal ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rng = random.Random(args.seed)
    summary = {}
    with tempfile.TemporaryDirectory(prefix="sigint_storm_") as tmp:
        folder = Path(tmp)
        (folder / "evaluate.yaml").write_text(EVALUATE)
        for command in args.commands.split(","):
            summary[command] = storm(command, args.trials, rng, folder)
    print()
    print(
        "| command | uninterrupted run | trials | exit 130 | killed by SIGINT | finished | "
        "other exits | tracebacks | temp files left | stop after SIGINT (median, max) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for command, s in summary.items():
        print(f"| `l2o {command}` | {s['uninterrupted_s']:.1f} s | {len(s['trials'])} | "
              f"{s['exit_130']} | {s['killed_by_sigint']} | {s['finished']} | "
              f"{s['other_exits'] or 'none'} | {s['tracebacks']} | "
              f"{s['temp_files_left']} | {s['stop_s']['median']:.2f} s, "
              f"{s['stop_s']['max']:.2f} s |")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1))
    failed = sum(len(s["other_exits"]) for s in summary.values())
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
