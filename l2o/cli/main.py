"""The `l2o` command line: the only place that reads flags and writes files."""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from pathlib import Path

# One BLAS thread: LAPACK calls (Shampoo's eigendecompositions) otherwise spin threads of their
# own next to JAX's, which made them 10-50x slower on 2 cores. Set before NumPy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import yaml  # noqa: E402

from l2o.cli.distributed import add_distributed_flags, initialize  # noqa: E402
from l2o.cli.resources import add_memory_flag  # noqa: E402
from l2o.cli.run_folder import release_locks  # noqa: E402
from l2o.cli.stopping import interrupt_message, run_stoppable  # noqa: E402
from l2o.io import UserError  # noqa: E402


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line and exit code 2, shows every flag's default
    in `--help`, and gives each subcommand its one-line help as its description."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parse_assignments(items: list[str] | None, what: str) -> dict[str, object]:
    """`["a=1", "b=[2,3]"]` -> `{"a": 1, "b": [2, 3]}`, values parsed as YAML scalars/lists."""
    out = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise UserError(f"{what} {item!r} is not of the form NAME=VALUE")
        try:
            out[key] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise UserError(f"{what} {item!r}: cannot parse the value {text!r}") from None
    return out


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value < 2**31:  # step counts are int32 in JAX
        raise argparse.ArgumentTypeError(f"must be a positive integer below 2**31, got {value}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value < 2**31:  # seeds: JAX keeps them as int32 in vmapped runs
        raise argparse.ArgumentTypeError(f"must be in 0..2**31-1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def cmd_tasks(args) -> int:
    """List the registered tasks and task families."""
    from tasks import OFFLINE_TASKS, list_families, list_tasks
    from tasks.registry import describe

    for name in list_tasks():
        where = "offline" if name in OFFLINE_TASKS else "data"
        print(f"{name:22s} {where:8s} {describe(name)}")
    print()
    print("families: " + ", ".join(list_families()))
    return 0


def cmd_optimizers(args) -> int:
    """List the baseline optimizers with their hyperparameters and defaults."""
    from baselines import OPTIMIZERS, list_optimizers, optimizer_hparams

    width = max(map(len, list_optimizers()))
    for name in list_optimizers():
        doc = (OPTIMIZERS[name].__doc__ or "").strip().splitlines()
        hparams = ", ".join(f"{k}={v!r}" for k, v in optimizer_hparams(name).items())
        print(f"{name:{width}s} {doc[0] if doc else ''}")
        print(f"{'':{width}s} {hparams}")
    return 0


def cmd_train(args) -> int:
    """Train one optimizer on one task; write results.json and TensorBoard events."""
    from l2o.cli.train import run_train_command

    return run_train_command(
        task_name=args.task,
        task_options=parse_assignments(args.task_opt, "--task-opt"),
        optimizer_name=args.optimizer,
        hparams=parse_assignments(args.hparam, "--hparam"),
        learning_rate=args.lr,
        steps=args.steps,
        seed=args.seed,
        eval_every=args.eval_every,
        out=Path(args.out or f"runs/{args.task}_{args.optimizer}_s{args.seed}"),
        overwrite=args.overwrite,
        grad=args.grad,
        grad_options=parse_assignments(args.grad_opt, "--grad-opt"),
        max_memory=args.max_memory,
    )


def cmd_quickstart(args) -> int:
    """Compare a few baselines on offline tasks and write a short report."""
    from l2o.cli.quickstart import run_quickstart

    return run_quickstart(
        Path(args.out), steps=args.steps, seeds=args.seeds, resume=args.resume,
        overwrite=args.overwrite, max_memory=args.max_memory,
    )  # fmt: skip


def cmd_tune(args) -> int:
    """Tune an optimizer's hyperparameters on a task (grid, random, CMA-ES or TPE)."""
    from l2o.cli.tune import run_tune_command

    return run_tune_command(
        optimizer_name=args.optimizer,
        task_name=args.task,
        space_path=Path(args.space),
        method=args.method,
        trials=args.trials,
        steps=args.steps,
        seeds=args.seeds,
        seed=args.seed,
        out=Path(args.out or f"runs/tune_{args.task}_{args.optimizer}_{args.method}"),
        resume=args.resume,
        overwrite=args.overwrite,
        task_options=parse_assignments(args.task_opt, "--task-opt"),
        reports=args.reports,
        max_memory=args.max_memory,
    )


def cmd_evaluate(args) -> int:
    """Evaluate optimizers x tasks x seeds with tuned learning rates; write a report."""
    from l2o.cli.evaluate import run_evaluate_command, suite_from_flags

    overrides = {"steps": args.steps, "seeds": args.seeds, "reference": args.reference,
                 "reference_steps": args.reference_steps, "tune_on": args.tune_on}  # fmt: skip
    if args.lr_num is not None:
        overrides["lr_grid"] = {"low": args.lr_low, "high": args.lr_high, "num": args.lr_num}
    if args.lr_extensions is not None:
        overrides.setdefault("lr_grid", {})["extensions"] = args.lr_extensions
    suite = suite_from_flags(args.config, args.tasks, args.optimizers, overrides)
    initialize(args)  # joins the other processes, if any: before any JAX computation
    out = Path(args.out or f"runs/evaluate_{args.config.stem if args.config else 'flags'}")
    return run_evaluate_command(
        suite, out, resume=args.resume, overwrite=args.overwrite, max_memory=args.max_memory
    )


def cmd_targets(args) -> int:
    """Set the validation-loss targets of a protocol suite and write them."""
    from l2o.cli.protocol import protocol_from_flags, run_targets_command

    protocol = protocol_from_flags(args.config, None)
    out = Path(args.out or protocol.targets_file)
    return run_targets_command(
        protocol,
        out,
        resume=args.resume,
        overwrite=args.overwrite,
        argv=args.argv,
        max_memory=args.max_memory,
    )


def cmd_protocol(args) -> int:
    """Time to target of optimizers in the external- and self-tuning tracks."""
    from l2o.cli.protocol import TRACK_CHOICES, protocol_from_flags, run_protocol_command

    protocol = protocol_from_flags(args.config, args.optimizers)
    targets = Path(args.targets or protocol.targets_file)
    return run_protocol_command(
        protocol, targets, Path(args.out), tracks=TRACK_CHOICES[args.track], resume=args.resume,
        max_memory=args.max_memory,
        overwrite=args.overwrite,
    )  # fmt: skip


def cmd_report(args) -> int:
    """Re-render an evaluation's report from its results.json."""
    from l2o.cli.evaluate import run_report_command

    return run_report_command(Path(args.directory))


def cmd_meta_train(args) -> int:
    """Meta-train a learned optimizer from a YAML config."""
    from l2o.cli.meta_train import run_meta_train_command

    initialize(args)  # joins the other processes, if any: before any JAX computation
    return run_meta_train_command(
        args.config, Path(args.out), resume=args.resume, overwrite=args.overwrite, steps=args.steps,
        max_memory=args.max_memory,
    )  # fmt: skip


def cmd_export(args) -> int:
    """Export the learned optimizer of a meta-training run directory, or a learned-optimizer
    file as a PyTorch module."""
    from l2o.cli.export import run_export_command, run_export_torch_command

    out = Path(args.out) if args.out else None
    if args.format == "torch":
        return run_export_torch_command(Path(args.run_dir), out, args.name)
    return run_export_command(Path(args.run_dir), out)


def cmd_evolve(args) -> int:
    """Evolve a symbolic update rule from a YAML config."""
    from l2o.cli.evolve import run_evolve_command

    # Joins the other processes, if any, before any JAX computation (building the config's
    # tasks is one): each process then reports a bad config itself.
    initialize(args)
    return run_evolve_command(
        args.config, Path(args.out), resume=args.resume, overwrite=args.overwrite,
        generations=args.generations, max_memory=args.max_memory, seed=args.seed,
    )  # fmt: skip


def cmd_distill(args) -> int:
    """Distill an optimizer into a symbolic rule from a YAML config."""
    from l2o.cli.distill import run_distill_command

    return run_distill_command(
        args.optimizer, args.config, Path(args.out), resume=args.resume,
        overwrite=args.overwrite, generations=args.generations, max_memory=args.max_memory,
    )  # fmt: skip


def cmd_export_rule(args) -> int:
    """Write a rule file as an optax module, Markdown and LaTeX, or as a PyTorch module."""
    from l2o.cli.export import run_export_rule_command

    return run_export_rule_command(
        Path(args.rule), Path(args.out), args.name, args.format, adamw_lr=args.adamw_lr
    )


def cmd_calibrate_rule(args) -> int:
    """Measure a rule file's learning rate relative to AdamW's and write the calibrated file."""
    from l2o.cli.calibrate import run_calibrate_rule_command

    return run_calibrate_rule_command(
        Path(args.rule), args.config, Path(args.out), overwrite=args.overwrite,
        max_memory=args.max_memory,
    )  # fmt: skip


def _add_overwrite_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace the run in a non-empty --out (its files are deleted first); without it, "
        "or --resume where offered, a non-empty --out is refused",
    )  # fmt: skip


@functools.cache
def build_parser() -> argparse.ArgumentParser:
    """The `l2o` parser, built once per process (parsing leaves it unchanged)."""
    from importlib import metadata

    parser = _Parser(prog="l2o", description="Learning to optimize in JAX.")
    parser.add_argument("--version", action="version", version=f"l2o {metadata.version('l2o')}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("tasks", help="list tasks and task families")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("optimizers", help="list baseline optimizers and their hyperparameters")
    p.set_defaults(func=cmd_optimizers)

    p = sub.add_parser("train", help="train one optimizer on one task")
    p.add_argument("--task", required=True, help="task name (see `l2o tasks`)")
    p.add_argument("--optimizer", required=True, help="optimizer name, e.g. adam")
    p.add_argument("--lr", type=_positive_float, help="learning rate (default: the optimizer's)")
    p.add_argument("--steps", type=_positive_int, default=1000, help="training steps")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="random seed")
    p.add_argument("--out", help="output directory (default runs/TASK_OPTIMIZER_sSEED)")
    _add_overwrite_flag(p)
    p.add_argument("--eval-every", type=_positive_int, help="steps between evaluations")
    p.add_argument("--task-opt", action="append", metavar="NAME=VALUE", help="task option")
    p.add_argument("--hparam", action="append", metavar="NAME=VALUE", help="optimizer option")
    p.add_argument("--grad", default="backprop",
                   help="gradient estimator: backprop, forward or dfa")  # fmt: skip
    p.add_argument("--grad-opt", action="append", metavar="NAME=VALUE",
                   help="estimator option, e.g. num_tangents=4")  # fmt: skip
    add_memory_flag(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune", help="tune an optimizer's hyperparameters on a task")
    p.add_argument("--optimizer", required=True, help="baseline optimizer name")
    p.add_argument("--task", required=True, help="task name")
    p.add_argument("--space", required=True, help="YAML search space (configs/spaces/*.yaml)")
    p.add_argument("--method", default="tpe", help="tpe, random, grid or cmaes")
    p.add_argument("--trials", type=_positive_int, default=20, help="trials (grid: points)")
    p.add_argument("--steps", type=_positive_int, default=200, help="training steps per trial")
    p.add_argument("--seeds", type=_positive_int, default=1, help="training seeds per trial")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="seed of the tuner")
    p.add_argument("--reports", type=_positive_int, default=9,
                   help="TPE: validation reports per trial (Hyperband's resource)")  # fmt: skip
    p.add_argument("--out", help="output directory (default runs/tune_TASK_OPTIMIZER_METHOD)")
    p.add_argument("--resume", action="store_true", help="continue the TPE study in --out")
    _add_overwrite_flag(p)
    p.add_argument("--task-opt", action="append", metavar="NAME=VALUE", help="task option")
    add_memory_flag(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("evaluate", help="tuned optimizers x tasks x seeds, compared in a report")
    p.add_argument("--config", type=Path, help="YAML suite (e.g. configs/suite_small.yaml)")
    p.add_argument("--tasks", help="comma-separated task names (override the config)")
    p.add_argument("--optimizers", help="comma-separated optimizer names (override the config)")
    p.add_argument("--steps", type=_positive_int, help="training steps per run")
    p.add_argument("--seeds", type=_positive_int, help="seeds per configuration")
    p.add_argument("--reference", help="optimizer the speedups are measured against (adam)")
    p.add_argument("--reference-steps", type=_positive_int,
                   help="run the reference this long (>= steps): speedups above 1")  # fmt: skip
    p.add_argument("--tune-on", choices=("valid", "train"),
                   help="choose LRs by final validation (default) or training loss")  # fmt: skip
    p.add_argument("--lr-num", type=_positive_int, help="learning rates in the tuning grid")
    p.add_argument("--lr-low", type=_positive_float, default=1e-7, help="smallest grid LR")
    p.add_argument("--lr-high", type=_positive_float, default=1.0, help="largest grid LR")
    p.add_argument("--lr-extensions", type=int, choices=range(11), metavar="0..10",
                   help="times the LR grid grows past an edge holding the best LR (2)")  # fmt: skip
    p.add_argument("--out", help="output directory (default runs/evaluate_CONFIG, CONFIG the "
                   "config file's stem; without --config runs/evaluate_flags)")  # fmt: skip
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out (keeps finished pairs)")  # fmt: skip
    _add_overwrite_flag(p)
    add_distributed_flags(p)
    add_memory_flag(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("targets", help="set a protocol suite's validation-loss targets")
    p.add_argument("--config", type=Path, required=True,
                   help="YAML protocol suite (e.g. configs/protocol_cpu.yaml)")  # fmt: skip
    p.add_argument("--out", help="targets file to write (default: the config's targets.file)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing targets file (and its unfinished run)")  # fmt: skip
    add_memory_flag(p)
    p.set_defaults(func=cmd_targets)

    p = sub.add_parser("protocol", help="time to target in the external- and self-tuning tracks")
    p.add_argument("--config", type=Path, required=True,
                   help="YAML protocol suite (e.g. configs/protocol_cpu.yaml)")  # fmt: skip
    p.add_argument("--optimizers", help="comma-separated optimizers (override the config)")
    p.add_argument("--track", choices=("both", "external", "self"), default="both",
                   help="which track to run")  # fmt: skip
    p.add_argument("--targets", help="targets file (default: the config's targets.file)")
    p.add_argument("--out", default="runs/protocol", help="output directory")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    _add_overwrite_flag(p)
    add_memory_flag(p)
    p.set_defaults(func=cmd_protocol)

    p = sub.add_parser("report", help="re-render a report (evaluate, protocol) from results.json")
    p.add_argument("directory", help="output directory of `l2o evaluate` or `l2o protocol`")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("meta-train", help="meta-train a learned optimizer")
    p.add_argument("--config", type=Path, required=True, help="YAML run (configs/meta_*.yaml)")
    p.add_argument("--out", default="runs/meta", help="output directory")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    _add_overwrite_flag(p)
    p.add_argument("--steps", type=_positive_int, help="outer steps (override the config)")
    add_distributed_flags(p)
    add_memory_flag(p)
    p.set_defaults(func=cmd_meta_train)

    p = sub.add_parser("export", help="write a meta-training run's learned optimizer file")
    p.add_argument(
        "run_dir", help="output directory of `l2o meta-train` (--format torch: an optimizer file)"
    )
    p.add_argument(
        "--out",
        help="file to write (default RUN_DIR/optimizer.safetensors); --format torch: the output "
        "directory (default the file's)",
    )
    p.add_argument(
        "--format",
        choices=("safetensors", "torch"),
        default="safetensors",
        help="torch: NAME.py, the optimizer as a torch.optim.Optimizer, and NAME.safetensors",
    )
    p.add_argument("--name", default="learned_optimizer", help="--format torch: the file names")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evolve", help="evolve a symbolic update rule (regularized evolution)")
    p.add_argument("--config", type=Path, required=True, help="YAML run (configs/evolve_*.yaml)")
    p.add_argument("--out", default="runs/evolve", help="output directory")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    _add_overwrite_flag(p)
    p.add_argument("--generations", type=_positive_int, help="generations (override the config)")
    p.add_argument("--seed", type=_nonnegative_int, help="random seed (overrides the config's)")
    add_distributed_flags(p)
    add_memory_flag(p)
    p.set_defaults(func=cmd_evolve)

    p = sub.add_parser(
        "distill", help="distill an optimizer into a symbolic rule matching its update directions"
    )
    p.add_argument(
        "optimizer", help="optimizer to distill: a .safetensors or rule .json file, or a baseline"
    )
    p.add_argument("--config", type=Path, required=True, help="YAML run (configs/distill_*.yaml)")
    p.add_argument("--out", default="runs/distill", help="output directory")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    _add_overwrite_flag(p)
    p.add_argument("--generations", type=_positive_int, help="generations (override the config)")
    add_memory_flag(p)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser(
        "export-rule",
        help="write a rule file as optax Python, Markdown and LaTeX, or as PyTorch; a rule whose "
        "printed formula is not the rule is refused",
    )
    p.add_argument("rule", help="rule file (e.g. best_rule.json of `l2o evolve`)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--name", default="discovered", help="module and function name")
    p.add_argument(
        "--format",
        choices=("optax", "torch", "markdown", "latex"),
        default="optax",
        help="optax: NAME.py (jax and optax), NAME.md, NAME.tex; torch: NAME.py, a "
        "torch.optim.Optimizer class; markdown: NAME.md; latex: NAME.tex",
    )
    p.add_argument("--adamw-lr", type=_positive_float,
                   help="the modules' default learning rate is the rule's for this AdamW learning "
                   "rate (its file's ratio to AdamW's times it; default: the file's)")  # fmt: skip
    p.set_defaults(func=cmd_export_rule)

    p = sub.add_parser(
        "calibrate-rule",
        help="measure a rule file's learning rate relative to AdamW's (tuned on the proxy and "
        "funnel tasks of an evolve config) and write it with the default learning rate it gives",
    )
    p.add_argument("rule", help="rule file (e.g. best_rule.json of `l2o evolve`)")
    p.add_argument("--config", type=Path,
                   help="evolve config whose proxy, funnel and lr_transfer are used (default: "
                   "the config stored in the rule file)")  # fmt: skip
    p.add_argument("--out", required=True, help="rule file to write (may be RULE itself)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_memory_flag(p)
    p.set_defaults(func=cmd_calibrate_rule)

    p = sub.add_parser("quickstart", help="compare baselines on offline tasks; write a report")
    p.add_argument("--out", default="runs/quickstart", help="output directory")
    p.add_argument("--steps", type=_positive_int, default=1000, help="training steps per run")
    p.add_argument("--seeds", type=_positive_int, default=3, help="seeds per configuration")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out (keeps finished pairs)")  # fmt: skip
    _add_overwrite_flag(p)
    add_memory_flag(p)
    p.set_defaults(func=cmd_quickstart)
    for action in sub._choices_actions:  # each subcommand's help line is its description
        sub.choices[action.dest].description = action.help
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `l2o` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from tasks import DatasetError, UnknownNameError

    try:
        return args.func(args)
    except (UserError, UnknownNameError, DatasetError) as e:
        print(f"l2o: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or a signal seen by `stopping.check`
        code = getattr(e, "code", 130)
        print(interrupt_message(code), file=sys.stderr)
        return code
    except OSError as e:  # the disk is full, no permission: files already written are whole
        where = f": {e.filename}" if e.filename else ""
        print(f"l2o: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    finally:
        release_locks()


def run() -> None:
    """`main`, stopped within about a second by SIGINT (exit code 130) or SIGTERM (143), see
    `l2o.cli.stopping`: the console script of installs made before it became
    `l2o.cli.__main__:run`, which also catches signals while this module is imported."""
    run_stoppable(main)
