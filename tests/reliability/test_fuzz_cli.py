"""Fuzzed `l2o` command lines, run in-process through `l2o.cli.main`, stdout and stderr captured.

Argument lists start from a valid command of each kind, with the real subcommand and flag names
read from the parser, and are mutated (tokens dropped, swapped, duplicated, replaced by junk
values, junk flags and files). The training itself is replaced by a stand-in that traces what
the real run would start with (keys from the seeds, one abstract training step of each optimizer
on each task, the int32 seed arrays) and then stops the command: so every case costs
milliseconds, and a command line that passes validation but would crash once the run starts still
fails the test. Every case must end with exit code 0 or 2 and at most one line on stderr without a
traceback, or reach the training with a well-formed setup; a failed case leaves no output folder
and no temporary file.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from l2o.cli.main import build_parser, main
from l2o.meta import checkpoint
from search.programs_library import get_program
from search.rule_file import save_rule
from tasks import init_state, train_step

REPO = Path(__file__).resolve().parents[2]

FUZZED = (
    "tasks",
    "optimizers",
    "train",
    "tune",
    "evaluate",
    "report",
    "meta-train",
    "export",
    "evolve",
    "distill",
    "export-rule",
    "calibrate-rule",
    "quickstart",
    "targets",
    "protocol",
)
# Commands with more flags get more cases.
WEIGHTED = FUZZED + ("train", "train", "tune", "evaluate", "meta-train")
# Flags that join other processes over the network: not fuzzed here (each would wait for peers).
NETWORK_FLAGS = ("--coordinator", "--num-processes", "--process-id", "--init-timeout")
CHEAP_TASKS = [
    "rosenbrock",
    "quadratic_k100",
    "linear_regression",
    "logistic_regression",
    "digits_mlp",
    "mnist1d_mlp",
]


class Reached(BaseException):
    """The command validated its input and started the (stand-in) training."""


def _one_step(task, optimizer_of, *args):
    """Trace (no compilation) one training step of `optimizer_of(*args)` on `task`."""

    def step(key, *args):
        optimizer = optimizer_of(*args)
        return train_step(task, optimizer, init_state(task, optimizer, key), key, total_steps=2)

    jax.eval_shape(step, jax.random.key(0), *args)


def stand_ins(monkeypatch) -> None:
    """Replace each command's training by a stand-in that checks its inputs and stops."""
    import l2o.cli.distill
    import l2o.cli.evaluate
    import l2o.cli.export
    import l2o.cli.meta_train
    import l2o.cli.protocol
    import l2o.cli.quickstart
    import l2o.cli.train
    import l2o.cli.tune
    import l2o.evaluation.protocol
    import search.evolution
    import search.lr_transfer
    from l2o.evaluation.harness import optimizer_factory
    from search.interpreter import program_transform
    from search.objective import with_fixed
    from tasks import get_task

    def train(task, optimizer, num_steps, seed, *, eval_every, grad_fn, on_chunk=None):
        jax.random.key(seed)
        assert 1 <= eval_every <= num_steps < 2**31
        jax.eval_shape(
            lambda key: train_step(
                task,
                optimizer,
                init_state(task, optimizer, key),
                key,
                total_steps=num_steps,
                grad_fn=grad_fn,
            ),
            jax.random.key(0),
        )
        raise Reached

    def evaluate(suite, on_pair=None, memo=None):
        jnp.asarray(np.arange(suite.seeds))
        for task_spec in suite.tasks:
            task = get_task(task_spec.name, **task_spec.options)
            for spec in suite.optimizers:
                make, lr = optimizer_factory(spec)
                for value in (*suite.learning_rates(), lr):
                    assert math.isfinite(value) and value > 0
                _one_step(task, make, jnp.float32(lr))
        raise Reached

    real_plan = l2o.cli.tune._plan

    def plan(method, space, *args):
        total, _ = real_plan(method, space, *args)

        def tune(task, make_optimizer, *, num_steps, seeds, seed, on_progress=None):
            jnp.asarray(seeds), jax.random.key(seed)
            centre = {d.name: jnp.float32((d.low + d.high) / 2) for d in space.dims}
            _one_step(task, with_fixed(make_optimizer, space), centre)
            raise Reached

        return total, tune

    def meta_trainer(tasks, init_theta, transform, objective, estimator, outer, **kw):
        for part in (objective, estimator, outer):
            for name, value in vars(part).items():
                assert not isinstance(value, float) or math.isfinite(value), (name, value)
        assert isinstance(objective.horizon, int) and isinstance(outer.steps, int)
        key = jax.random.key(outer.seed)
        for task in tasks:
            _one_step(task, lambda: transform(init_theta(key)))
        raise Reached

    def sweep(task, make_optimizer, learning_rates, seeds, num_steps, *, eval_every):
        jnp.asarray(seeds)
        assert 1 <= eval_every <= num_steps
        _one_step(task, make_optimizer, jnp.float32(learning_rates[0]))
        raise Reached

    def make_evolution(config, proxy, funnel=None):
        for suite in (proxy, funnel):
            jnp.asarray(suite.seeds)
            assert 1 <= suite.num_steps < 2**31 and suite.seeds and suite.learning_rates
            assert all(math.isfinite(lr) and lr > 0 for lr in suite.learning_rates), suite

        def init(key):  # one step of every starting program on every task
            for suite in (proxy, funnel):
                for task in suite.tasks:
                    for program in (*config.warm_starts, config.reference):
                        make = lambda lr, p=program: program_transform(p, lr)  # noqa: E731
                        _one_step(task, make, jnp.float32(suite.learning_rates[0]))
            raise Reached

        def step(state):
            raise Reached

        return types.SimpleNamespace(init=init, step=step, finish=step)

    def record_streams(streams, optimizer):
        assert 1 <= streams.steps < 2**31 and streams.seeds
        for task in streams.tasks.values():
            _one_step(task, lambda: optimizer)
        raise Reached

    def lr_ratio(program, suites, learning_rates, **kwargs):
        assert all(math.isfinite(lr) and lr > 0 for lr in learning_rates), learning_rates
        for suite in suites.values():
            jnp.asarray(suite.seeds)
            assert 1 <= suite.num_steps < 2**31 and suite.seeds
            for task in suite.tasks:
                make = lambda lr: program_transform(program, lr)  # noqa: E731
                _one_step(task, make, jnp.float32(learning_rates[0]))
        raise Reached

    def setter_score(task, name, space, num_steps, eval_every, *, num_trials, seeds, seed):
        jnp.asarray(seeds), jax.random.key(seed)
        assert 1 <= eval_every <= num_steps < 2**31 and 1 <= num_trials <= 1000
        trial = {d.name: jnp.float32((d.low + d.high) / 2) for d in space.dims}
        _one_step(task, l2o.evaluation.protocol.trial_optimizer(name, num_steps), trial)
        raise Reached

    def seconds_per_step(task, optimizer, num_steps):
        assert 1 <= num_steps <= 10_000
        _one_step(task, lambda: optimizer)
        raise Reached

    monkeypatch.setattr(l2o.evaluation.protocol, "setter_score", setter_score)
    monkeypatch.setattr(l2o.cli.protocol, "seconds_per_step", seconds_per_step)
    monkeypatch.setattr(l2o.cli.train, "train_in_chunks", train)
    monkeypatch.setattr(l2o.cli.evaluate, "evaluate_suite", evaluate)
    monkeypatch.setattr(l2o.cli.tune, "_plan", plan)
    monkeypatch.setattr(l2o.cli.meta_train, "make_meta_trainer", meta_trainer)
    monkeypatch.setattr(l2o.cli.export, "make_meta_trainer", meta_trainer)
    monkeypatch.setattr(l2o.cli.quickstart, "lr_seed_sweep", sweep)
    monkeypatch.setattr(search.evolution, "make_evolution", make_evolution)
    monkeypatch.setattr(l2o.cli.distill, "record_streams", record_streams)
    monkeypatch.setattr(search.lr_transfer, "lr_ratio", lr_ratio)


def run_cli(argv: list[str]) -> tuple[int | str, str, str]:
    """`(exit code or "reached", stdout, stderr)` of `l2o.cli.main.main(argv)`."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse: --help, or a bad flag
            code = 0 if e.code is None else e.code
        except Reached:
            code = "reached"
    return code, out.getvalue(), err.getvalue()


def subcommands() -> dict:
    """Subcommand name -> its parser, as `l2o.cli.main.build_parser` defines them."""
    parser = build_parser()
    (action,) = [a for a in parser._actions if a.dest == "command"]
    return dict(action.choices)


def flags_of(parser) -> dict[str, bool]:
    """Option string -> whether it takes a value."""
    out = {}
    for action in parser._actions:
        for flag in action.option_strings:
            if flag not in ("-h", "--help") and flag not in NETWORK_FLAGS:
                out[flag] = action.nargs != 0
    return out


def test_every_command_is_fuzzed():
    assert set(subcommands()) <= set(FUZZED), "add new commands to this fuzzer"
    assert set(FUZZED) <= set(subcommands())


# --- files the fuzzed command lines point at ------------------------------------------------


@pytest.fixture
def files(tmp_path):
    """Valid and hostile inputs: spaces, suites, meta-training and evolution configs, rule files,
    run and report dirs."""
    root = tmp_path / "inputs"
    root.mkdir()
    meta = yaml.safe_load((REPO / "configs" / "meta_tiny.yaml").read_text())
    texts = {
        "sgd_space.yaml": "learning_rate: {type: log_uniform, low: 1.0e-3, high: 1.0}\n",
        "adam_space.yaml": (REPO / "configs" / "spaces" / "adam_full.yaml").read_text(),
        "fixed_space.yaml": "learning_rate: {type: log_uniform, low: 1.0e-3, high: 1.0}\n"
        "eps: 1e-8\nb1: 0.5\n",
        "suite.yaml": "tasks: [rosenbrock, {name: quadratic_k100, options: {dim: 4}}]\n"
        "optimizers: [adam, {name: sgd, hparams: {learning_rate: 0.1}, tune_lr: false}]\n"
        "steps: 5\nseeds: 1\nlr_grid: {low: 1.0e-3, high: 1.0, num: 2}\n",
        "meta.yaml": yaml.safe_dump({**meta, "tasks": ["rosenbrock"]}),
        "meta_mlp.yaml": "optimizer: {name: mlp, config: {hidden_sizes: [4]}}\n"
        "tasks: [{name: quadratic_k100, options: {dim: 3}}]\nestimator: {name: tbptt}\n"
        "objective: {horizon: 4, truncation: 2}\nouter: {steps: 2}\n",
        "evolve.yaml": "warm_starts: [sgd, lion]\n"
        "proxy: {tasks: [rosenbrock], steps: 5, seeds: 1}\n"
        "population_size: 4\ntournament_size: 2\nbatch_size: 2\ngenerations: 2\n"
        "funnel: {tasks: [{name: quadratic_k100, options: {dim: 3}}], every: 1, top_k: 2}\n",
        "distill.yaml": "warm_starts: [sgd]\nfit: {tasks: [rosenbrock], steps: 5}\n"
        "heldout: {tasks: [{name: quadratic_k100, options: {dim: 3}}], steps: 5}\n"
        "population_size: 4\ntournament_size: 2\nbatch_size: 2\ngenerations: 2\n",
        "protocol.yaml": "tasks: [rosenbrock, {name: quadratic_k100, options: {dim: 4}}]\n"
        "optimizers: [adamw, {name: sgd, hparams: {learning_rate: 0.1}}]\n"
        "steps: 6\neval_every: 2\nseeds: 1\ntiming_steps: 2\n"
        f"targets: {{file: {root / 'targets.json'}, trials: 2, steps: 4}}\n"
        "tuning: {trials: 1, studies: 2}\n",
        "targets.json": json.dumps(
            {
                "command": "l2o targets",
                "steps": 6,
                "target_steps": 4,
                "eval_every": 2,
                "tasks": {"rosenbrock": {"target": 1.0}, "quadratic_k100": {"target": 1.0}},
            }
        ),  # fmt: skip
        "bad_options.yaml": "tasks: [{name: rosenbrock, options: {dim: banana}}]\n"
        "optimizers: [adam]\n",
        "bad_hparams.yaml": "tasks: [rosenbrock]\noptimizers: [{name: adam, hparams: "
        "{b1: [1, 2]}}]\n",
        "tag.yaml": f"tasks: !!python/object/apply:os.system ['touch {tmp_path / 'CANARY'}']\n",
        "bomb.yaml": "a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c]\n"
        "e: &e [*d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e]\n",
        "empty.yaml": "",
        "list.yaml": "- 1\n- 2\n",
        "deep.yaml": "a: " + "[" * 3000 + "]" * 3000 + "\n",
        "huge_int.yaml": "learning_rate: {type: uniform, low: 0, high: 1" + "0" * 400 + "}\n",
        "junk.json": '{"command": "evaluate", "tasks": {}, "suite": {}}',
    }
    for name, text in texts.items():
        (root / name).write_text(text)
    (root / "binary.yaml").write_bytes(b"\xff\xfe\x00\x01tasks")
    save_rule(root / "rule.json", get_program("lion"), {"learning_rate": 0.01, "fitness": -0.5})
    # Run directories for `export`: a good one, one whose newest checkpoint is torn, junk.
    tree = {"x": np.zeros(2, np.float32)}
    for name in ("run", "torn_run"):
        checkpoint.save(root / name, 2, tree, {"config": {**meta, "tasks": ["rosenbrock"]}})
    newest = checkpoint.save(root / "torn_run", 4, tree, {"config": meta})
    newest.write_bytes(newest.read_bytes()[:100])
    (root / "junk_run").mkdir()
    (root / "junk_run" / "ckpt_00000001.npz").write_bytes(b"PK\x03\x04 not a zip")
    checkpoint.save(root / "list_config_run", 1, tree, {"config": [1, 2]})
    # Directories for `report`.
    for name, content in (
        ("report_junk", "{not json"),
        ("report_list", "[1]"),
        ("report_empty_tasks", texts["junk.json"]),
        ("report_other", '{"command": "train"}'),
        ("report_protocol", '{"command": "protocol", "tracks": {"self": 3}}'),
    ):
        (root / name).mkdir()
        (root / name / "results.json").write_text(content)
    (root / "report_none").mkdir()
    return root


def _value_pools(files: Path, fresh: Path) -> dict[str, list[str]]:
    spaces = [str(files / n) for n in ("sgd_space.yaml", "adam_space.yaml", "fixed_space.yaml")]
    configs = [
        str(files / n)
        for n in (
            "suite.yaml",
            "meta.yaml",
            "meta_mlp.yaml",
            "evolve.yaml",
            "distill.yaml",
            "protocol.yaml",
        )
    ]
    return {
        "--task": CHEAP_TASKS,
        "--optimizer": ["adam", "sgd", "momentum", "lion", "adamw", "rmsprop"],
        "--lr": ["0.01", "1e-3", "1"],
        "--adamw-lr": ["3e-3"],
        "--steps": ["1", "2", "5"],
        "--seed": ["0", "3"],
        "--seeds": ["1", "2"],
        "--eval-every": ["1", "2"],
        "--task-opt": [
            "dim=3",
            "hidden=[8]",
            "batch_size=8",
            "activation=tanh",
            "init_noise=0.5",
            "seed=1",
            "num_examples=64",
        ],
        "--hparam": [
            "b1=0.8",
            "eps=1e-8",
            "learning_rate=0.1",
            "nesterov=true",
            "momentum=0.5",
            "weight_decay=0.0",
        ],
        "--grad": ["backprop", "forward", "dfa"],
        "--grad-opt": ["num_tangents=2"],
        "--space": spaces,
        "--method": ["tpe", "random", "grid", "cmaes"],
        "--trials": ["1", "3"],
        "--reports": ["1", "2"],
        "--config": configs,
        "--tasks": ["rosenbrock", "rosenbrock,quadratic_k100", "digits_mlp"],
        "--optimizers": ["adam", "adam,sgd", "lion"],
        "--reference": ["adam", "sgd"],
        "--lr-num": ["1", "2"],
        "--lr-low": ["1e-4"],
        "--lr-high": ["1", "0.5"],
        "--out": [str(fresh)],
        "--generations": ["1", "2"],
        "--name": ["rule"],
        "--targets": [str(files / "targets.json")],
        "--track": ["both", "self", "external"],
    }


ASSIGNMENT_FLAGS = ("--task-opt", "--hparam", "--grad-opt")
NUMBER_FLAGS = (
    "--lr",
    "--adamw-lr",
    "--steps",
    "--seed",
    "--seeds",
    "--eval-every",
    "--trials",
    "--reports",
    "--lr-num",
    "--lr-low",
    "--lr-high",
    "--generations",
)
NAME_FLAGS = (
    "--task",
    "--optimizer",
    "--method",
    "--grad",
    "--reference",
    "--tasks",
    "--optimizers",
    "--name",
)


def junk_values(files: Path, canary: Path) -> dict[str, list[str]]:
    """Values no flag should accept, or should accept only with care, by kind of flag."""
    hostile = [
        "tag.yaml",
        "bomb.yaml",
        "empty.yaml",
        "list.yaml",
        "deep.yaml",
        "huge_int.yaml",
        "binary.yaml",
        "bad_options.yaml",
        "bad_hparams.yaml",
        "junk.json",
    ]
    junk = {
        "assignment": [
            "x",
            "=1",
            "dim=",
            "b1=[1,2]",
            "b1=abc",
            "b1=.nan",
            "b1=true",
            "b3=1",
            "b1=1" + "0" * 400,
            "eps=-1",
            "learning_rate=-1",
            "learning_rate=1e-8",
            "momentum=[0.9]",
            "nesterov=3",
            "dim=1e400",
            "dim=2.5",
            f"dim={2**40}",
            "dim=0",
            "dim=-3",
            "hidden=[2.5]",
            "hidden=banana",
            "hidden=[0]",
            "hidden=[]",
            "activation=nope",
            "initializer=[1]",
            "init_noise=1e400",
            "noise=.nan",
            "batch_size=0",
            "num_examples=0",
            "seed=-1",
            "num_tangents=abc",
            "num_tangents=1e400",
            f"b1=!!python/object/apply:os.system ['touch {canary}']",
            "dim=!!python/name:os.system",
            "hidden=&a [*a]",
        ],
        "number": [
            "",
            "-1",
            "0",
            "1e400",
            "nan",
            "inf",
            "-inf",
            "1" * 60,
            "abc",
            "1.5",
            "0x10",
            str(2**31),
            str(2**63),
            "1e-7",
            "1e-300",
            "-0",
            " 3",
        ],
        "name": [
            "",
            "nope",
            "mnist8_mlp",
            "fmnist_mlp",
            "nqm",
            "cifar10_cnn",
            "shakespeare_lm",
            "learnable_adam",
            "lbfgs",
            "adahessian",
            "newton",
            "a,b",
            ",",
            "adam,,sgd",
            "rosenbrock,nope",
            "rosenbrock,rosenbrock",
            "hyperopt",
            "dfa",
            "forward",
            "ADAM",
            "adam ",
            "é",
        ],
        "path": [
            "",
            ".",
            "..",
            "../x",
            "/dev/null",
            "/dev/null/x",
            "\x00",
            *[str(files / name) for name in hostile],
            str(files / "missing.yaml"),
            str(files),
            str(files / "run"),
            str(files / "torn_run"),
            str(files / "junk_run"),
            str(files / "list_config_run"),
            str(files / "rule.json"),
            *[str(p) for p in sorted(files.glob("report_*"))],
        ],
    }
    junk["any"] = [v for values in junk.values() for v in values] + ["--", "-", "="]
    return junk


def junk_kind(flag: str) -> str:
    if flag in ASSIGNMENT_FLAGS:
        return "assignment"
    if flag in NUMBER_FLAGS:
        return "number"
    if flag in NAME_FLAGS:
        return "name"
    return "path" if flag in ("--space", "--config", "--out", "--targets") else "any"


def templates(files: Path, fresh: Path) -> dict[str, list[list[str]]]:
    """Valid command lines of each fuzzed command (all tiny)."""
    out = str(fresh)
    space = str(files / "sgd_space.yaml")
    return {
        "tasks": [["tasks"]],
        "optimizers": [["optimizers"]],
        "train": [
            ["train", "--task", "rosenbrock", "--optimizer", "adam", "--steps", "5", "--out", out],
            [
                "train",
                "--task",
                "digits_mlp",
                "--optimizer",
                "sgd",
                "--lr",
                "0.1",
                "--steps",
                "4",
                "--eval-every",
                "2",
                "--task-opt",
                "hidden=[8]",
                "--out",
                out,
                "--hparam",
                "learning_rate=0.2",
                "--seed",
                "3",
            ],
        ],
        "tune": [
            [
                "tune",
                "--optimizer",
                "sgd",
                "--task",
                "rosenbrock",
                "--space",
                space,
                "--method",
                method,
                "--trials",
                "2",
                "--steps",
                "4",
                "--reports",
                "2",
                "--out",
                out,
            ]
            for method in ("tpe", "random", "grid", "cmaes")
        ],
        "evaluate": [
            [
                "evaluate",
                "--tasks",
                "rosenbrock",
                "--optimizers",
                "adam,sgd",
                "--steps",
                "4",
                "--seeds",
                "1",
                "--lr-num",
                "2",
                "--out",
                out,
            ],
            ["evaluate", "--config", str(files / "suite.yaml"), "--out", out],
        ],
        "report": [["report", str(files / "report_junk")]],
        "meta-train": [
            ["meta-train", "--config", str(files / "meta.yaml"), "--steps", "2", "--out", out],
            ["meta-train", "--config", str(files / "meta_mlp.yaml"), "--out", out],
        ],
        "export": [
            ["export", str(files / "run"), "--out", str(fresh / "opt.safetensors")],
            ["export", str(files / "torn_run"), "--out", str(fresh / "o.safetensors")],
        ],
        "evolve": [
            ["evolve", "--config", str(files / "evolve.yaml"), "--out", out],
            ["evolve", "--config", str(files / "evolve.yaml"), "--generations", "1", "--out", out],
        ],
        "distill": [
            ["distill", "adam", "--config", str(files / "distill.yaml"), "--out", out],
            [
                "distill",
                str(files / "rule.json"),
                "--config",
                str(files / "distill.yaml"),
                "--generations",
                "1",
                "--out",
                out,
            ],
        ],  # fmt: skip
        "export-rule": [["export-rule", str(files / "rule.json"), "--out", out, "--name", "rule"]],
        "calibrate-rule": [
            [
                "calibrate-rule",
                str(files / "rule.json"),
                "--config",
                str(files / "evolve.yaml"),
                "--out",
                str(fresh / "rule.json"),
            ]
        ],
        "quickstart": [["quickstart", "--out", out, "--steps", "2", "--seeds", "1"]],
        "targets": [
            ["targets", "--config", str(files / "protocol.yaml"), "--out", str(fresh / "t.json")]
        ],
        "protocol": [
            ["protocol", "--config", str(files / "protocol.yaml"), "--out", out],
            [
                "protocol",
                "--config",
                str(files / "protocol.yaml"),
                "--track",
                "self",
                "--targets",
                str(files / "targets.json"),
                "--optimizers",
                "adam,lion",
                "--out",
                out,
            ],
        ],  # fmt: skip
    }


def mutate(data, argv: list[str], flags: dict[str, bool], all_flags: list[str], pools, junk):
    """`argv` with one flag set to a good or bad value, or 0-3 token-level mutations."""
    argv = list(argv)

    def value_for(flag: str) -> str:
        source = data.draw(st.sampled_from(["good", "junk", "junk", "any"]))
        if source == "good" and flag in pools:
            return data.draw(st.sampled_from(pools[flag]))
        return data.draw(st.sampled_from(junk[junk_kind(flag) if source == "junk" else "any"]))

    if data.draw(st.booleans()) and flags:  # one flag of this command set to a good or bad value
        flag = data.draw(st.sampled_from(sorted(flags)))
        if not flags[flag]:
            return argv + [flag]
        value = value_for(flag)
        if flag in argv[:-1] and flag not in ASSIGNMENT_FLAGS:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
        return argv
    for _ in range(data.draw(st.integers(0, 3))):
        kind = data.draw(
            st.sampled_from(
                ["junk"] * 4
                + ["flag"] * 4
                + ["drop", "foreign", "dup", "swap", "insert", "command", "help"]
            )
        )
        i = data.draw(st.integers(0, max(0, len(argv) - 1)))
        if kind == "drop" and len(argv) > 1:
            del argv[i]
        elif kind == "junk" and len(argv) > 1:
            i = max(1, i)
            argv[i] = value_for(argv[i - 1]) if argv[i - 1].startswith("--") else value_for("")
        elif kind == "flag" and flags:
            flag = data.draw(st.sampled_from(sorted(flags)))
            argv += [flag, value_for(flag)] if flags[flag] else [flag]
        elif kind == "foreign":
            flag = data.draw(st.sampled_from(all_flags + ["--stepz", "-x", "--lr=0.1", "--"]))
            argv += [flag, value_for(flag)]
        elif kind == "dup" and i + 1 < len(argv) and argv[i].startswith("--"):
            argv += argv[i : i + 2]
        elif kind == "swap" and len(argv) > 2:
            j = data.draw(st.integers(1, len(argv) - 1))
            argv[max(1, i)], argv[j] = argv[j], argv[max(1, i)]
        elif kind == "insert":
            argv.insert(i, data.draw(st.sampled_from(junk["any"])))
        elif kind == "command":
            argv[0] = data.draw(st.sampled_from([*FUZZED, "trian", "", "-h"]))
        elif kind == "help":
            argv.append("--help")
    return argv


def _snapshot(root: Path) -> dict[Path, tuple[int, int] | None]:
    """Size and modification time of every file under `root` (None for folders)."""
    return {
        p: (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
        for p in root.rglob("*")
    }


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_fuzzed_command_lines(tmp_path, files, monkeypatch, fuzz):
    stand_ins(monkeypatch)
    work = tmp_path / "cwd" / "here"  # default output folders land here, and `--out ..` too
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    canary = tmp_path / "CANARY"
    parsers = subcommands()
    flags = {name: flags_of(parsers[name]) for name in FUZZED}
    all_flags = sorted({f for per in flags.values() for f in per})
    junk = junk_values(files, canary)
    for task in CHEAP_TASKS:  # build the tasks once, outside the timed cases
        run_cli(
            [
                "train",
                "--task",
                task,
                "--optimizer",
                "sgd",
                "--steps",
                "1",
                "--out",
                str(tmp_path / "warm"),
            ]
        )
    shutil.rmtree(tmp_path / "warm", ignore_errors=True)
    count, outcomes, timings = [0], {}, {}

    @fuzz
    @given(st.data(), st.sampled_from(WEIGHTED))
    def case(data, command):
        count[0] += 1
        fresh = tmp_path / "cases" / f"{count[0]}" / "out"
        fresh.parent.mkdir(parents=True)
        pools = _value_pools(files, fresh)
        template = data.draw(st.sampled_from(templates(files, fresh)[command]))
        argv = mutate(data, template, flags[command], all_flags, pools, junk)
        inputs = _snapshot(files)

        t0 = time.perf_counter()
        code, stdout, stderr = run_cli(argv)
        timings[command] = timings.get(command, 0) + time.perf_counter() - t0

        outcomes[code] = outcomes.get(code, 0) + 1
        assert "Traceback" not in stderr + stdout, (argv, stderr)
        assert code in (0, 2, "reached"), (argv, code, stderr)
        assert stderr.count("\n") <= 1, (argv, stderr)  # one line at most
        if code == 2:
            assert stderr.endswith("\n") and "error" in stderr, (argv, stderr)
            assert not fresh.exists() or not any(fresh.iterdir()), (argv, list(fresh.iterdir()))
        if code == "reached":  # validated; nothing written before the training
            assert not fresh.exists() or not [p for p in fresh.iterdir() if p.is_file()], argv
        assert not _temp_files(tmp_path), (argv, _temp_files(tmp_path))
        assert not canary.exists(), argv
        after = _snapshot(files)
        assert {p: after.get(p) for p in inputs} == inputs, argv  # inputs are left alone
        for path in sorted(set(after) - set(inputs), reverse=True):  # e.g. --out inputs/x
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        shutil.rmtree(fresh.parent)

    case()
    print(sum(outcomes.values()), "cases:", outcomes, "seconds per command:", timings)
    assert sum(outcomes.values()) >= fuzz.max_examples, outcomes  # cases that ran to the end
    assert outcomes.get(2, 0) > 100 and outcomes.get("reached", 0) > 50, outcomes


# Command lines that crashed with a traceback before (found by the fuzzer), each now either
# refused in one line or validated.
REGRESSIONS = [
    (["train", "--hparam", "eps=1e-8"], "reached", ""),  # YAML 1.1 reads 1e-8 as a string
    (["train", "--hparam", "b1=[1,2]"], 2, "b1 must be a number"),
    (["train", "--hparam", "b1=abc"], 2, "b1 must be a number"),
    (["train", "--hparam", "b1=.nan"], 2, "b1 must be a finite number"),
    (["train", "--task-opt", f"dim={2**40}"], 2, "cannot build task"),
    (["train", "--seed", str(2**63)], 2, "--seed"),
    (["train", "--steps", str(2**40)], 2, "--steps"),
    (["evaluate", "--lr-high", "1e60", "--lr-num", "2"], 2, "lr_grid"),
    (["evaluate", "--config", "\x00"], 2, "cannot read"),
    (["evaluate", "--tasks", "rosenbrock", "--optimizers", "adam", "--task-opt"], 2, ""),
]


@pytest.mark.parametrize("extra, code, message", REGRESSIONS)
def test_former_crashes(tmp_path, monkeypatch, extra, code, message):
    stand_ins(monkeypatch)
    command = extra[0]
    base = {
        "train": ["train", "--task", "rosenbrock", "--optimizer", "adam", "--steps", "4"],
        "evaluate": ["evaluate", "--tasks", "rosenbrock", "--optimizers", "adam"],
    }[command]
    out = tmp_path / "out"
    got, _, err = run_cli([*base, *extra[1:], "--out", str(out)])
    assert got == code, (got, err)
    assert message in err and err.count("\n") == (1 if code == 2 else 0), err
    if code == 2:
        assert not out.exists()


@pytest.mark.parametrize(
    "run, code, message",
    [
        ("torn_run", "reached", ""),
        ("list_config_run", 2, "must be a mapping"),
        ("junk_run", 2, "no checkpoint holds a readable run config"),
    ],
)
def test_export_reads_the_newest_readable_checkpoint(
    tmp_path, files, monkeypatch, run, code, message
):
    stand_ins(monkeypatch)
    got, _, err = run_cli(["export", str(files / run), "--out", str(tmp_path / "o.safetensors")])
    assert got == code and message in err, (got, err)


@pytest.mark.parametrize(
    "name",
    [
        "report_junk",
        "report_list",
        "report_empty_tasks",
        "report_other",
        "report_protocol",
        "report_none",
    ],
)
def test_report_of_a_bad_results_file_is_one_line(files, name):
    before = sorted(p.name for p in (files / name).iterdir())
    code, _, err = run_cli(["report", str(files / name)])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in (files / name).iterdir()) == before  # nothing half-rendered
