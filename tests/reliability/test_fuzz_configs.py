"""Fuzzed YAML run files: evaluation suites (`l2o.cli.config.parse_suite`), meta-training runs
(`parse_meta_run`) and search spaces (`search.spaces.parse_space`), each from random YAML text and
bytes and from structured mutations of the shipped configs. Every case either parses into a
well-typed config or raises the error the `l2o` command reports in one line; no YAML tag ever
constructs an object, and aliases cannot blow a small file up into a huge document."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from baselines import list_optimizers, optimizer_hparams
from l2o.cli.config import load_yaml, parse_meta_run, parse_suite
from l2o.io import UserError
from l2o.meta.estimators import ESTIMATORS, POPULATION_STRATEGIES
from l2o.meta.objective import OBJECTIVES
from l2o.optimizers.registry import LEARNED_OPTIMIZERS, make_config
from search.spaces import TYPES, parse_space
from tasks import UnknownNameError, list_tasks

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
CLI_ERRORS = (UserError, UnknownNameError)  # what `l2o.cli.main` reports as one line, exit 2


# --- what a successful parse must give ------------------------------------------------------


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_finite_number(x) -> bool:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def check_hparams_typed(name: str, hparams) -> None:
    """Each hyperparameter has the kind of its default: bool, int or finite number."""
    defaults = optimizer_hparams(name)
    assert isinstance(hparams, dict)
    for key, value in hparams.items():
        default = defaults[key]
        if isinstance(default, bool):
            assert isinstance(value, bool), (key, value)
        elif isinstance(default, int):
            assert _is_int(value) and abs(value) < 2**31, (key, value)
        else:
            assert _is_finite_number(value), (key, value)


def check_suite(suite) -> None:
    assert suite.tasks and suite.optimizers
    for t in suite.tasks:
        assert t.name in list_tasks() and isinstance(t.label, str)
        assert isinstance(t.options, dict) and all(isinstance(k, str) for k in t.options)
    for o in suite.optimizers:
        assert o.name in list_optimizers() and isinstance(o.label, str)
        assert isinstance(o.tune_lr, bool)
        check_hparams_typed(o.name, o.hparams)
    for value in (suite.steps, suite.seeds, suite.lr_num):
        assert _is_int(value) and value >= 1
    assert _is_int(suite.eval_every) and 0 <= suite.eval_every <= suite.steps
    assert _is_finite_number(suite.lr_low) and _is_finite_number(suite.lr_high)
    assert 0 < suite.lr_low < suite.lr_high
    assert isinstance(suite.reference, str)


def check_typed_dataclass(obj) -> None:
    """Every field has the kind of its default (bool, int, finite number, str)."""
    for field in dataclasses.fields(obj):
        value, default = getattr(obj, field.name), field.default
        if isinstance(default, bool):
            assert isinstance(value, bool), (field.name, value)
        elif isinstance(default, int):
            assert _is_int(value) and abs(value) < 2**31, (field.name, value)
        elif isinstance(default, float):
            assert _is_finite_number(value), (field.name, value)
        elif isinstance(default, str):
            assert isinstance(value, str), (field.name, value)


def check_meta_run(run) -> None:
    assert run.optimizer in LEARNED_OPTIMIZERS
    assert isinstance(run.optimizer_config, dict)
    make_config(run.optimizer, **run.optimizer_config)  # the learned optimizer can be built
    assert run.tasks and all(t.name in list_tasks() for t in run.tasks)
    for part in (run.estimator, run.objective, run.outer):
        check_typed_dataclass(part)
    est, obj, outer = run.estimator, run.objective, run.outer
    assert est.name in ESTIMATORS + POPULATION_STRATEGIES
    assert min(est.num_tasks, est.num_pairs, est.population_size) >= 1 and est.sigma > 0
    assert obj.objective in OBJECTIVES and 1 <= obj.truncation <= obj.horizon
    assert outer.steps >= 1 and outer.learning_rate > 0 and outer.clip_norm > 0
    assert outer.seed >= 0
    for value in (run.checkpoint_every, run.eval_every):
        assert _is_int(value) and value >= 1


def check_space(space) -> None:
    import numpy as np

    from search import spaces

    assert space.dims
    for d in space.dims:
        assert d.name.isidentifier() and d.type in TYPES
        if d.type == "choice":
            assert d.choices and all(_is_finite_number(c) for c in d.choices)
        else:
            assert _is_finite_number(d.low) and _is_finite_number(d.high) and d.low < d.high
    for name, value in space.fixed.items():
        assert name.isidentifier()
        assert isinstance(value, bool | str) or _is_finite_number(value), (name, value)
    corners = np.array([[0.0] * len(space.dims), [0.5] * len(space.dims), [1.0] * len(space.dims)])
    for values in spaces.from_unit(space, corners).values():
        assert np.all(np.isfinite(values)), values  # every point of the cube is a real setting


# --- generators -----------------------------------------------------------------------------

HUGE = [2**31, 2**63, 10**30, 10**400, -(10**400), 1e308, -1e308, 5e-324]
NAMES = sorted(
    set(list_tasks())
    | set(list_optimizers())
    | set(LEARNED_OPTIMIZERS)
    | set(ESTIMATORS)
    | set(OBJECTIVES)
    | set(TYPES)
)
KEYS = sorted(
    {
        "tasks",
        "optimizers",
        "steps",
        "seeds",
        "lr_grid",
        "eval_every",
        "reference",
        "low",
        "high",
        "num",
        "name",
        "options",
        "label",
        "hparams",
        "tune_lr",
        "optimizer",
        "config",
        "estimator",
        "objective",
        "outer",
        "checkpoint_every",
        "num_tasks",
        "num_pairs",
        "sigma",
        "population_size",
        "horizon",
        "truncation",
        "log",
        "learning_rate",
        "clip_norm",
        "seed",
        "type",
        "choices",
        "b1",
        "b2",
        "eps",
        "hidden",
        "dim",
        "__class__",
        "!!python/object",
    }
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 100),
    st.integers(),
    st.sampled_from(HUGE),
    st.floats(),  # NaN and inf included
    st.text(max_size=12),
    st.sampled_from(NAMES + ["1e-3", "nan", "-inf", "1e400", "", " ", "0x10"]),
    st.dates(min_value=datetime.date(1900, 1, 1)),  # YAML timestamps
    st.binary(max_size=6),  # YAML !!binary
)
junk = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(KEYS) | st.text(max_size=6) | st.integers(), inner, max_size=4
        )
    ),
    max_leaves=10,
)


def _paths(node, prefix=()):
    """Every (path, value) inside a config tree, the root included."""
    yield prefix, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _set(root, path, value):
    if not path:
        return value
    node = root
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return root


def mutate(data, base):
    """A deep copy of `base` with 1-3 structural mutations drawn from `data`."""
    config = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = list(_paths(config))
        path, value = data.draw(st.sampled_from(paths))
        kind = data.draw(st.sampled_from(["junk", "delete", "add", "wrap", "retype", "empty"]))
        if not path:  # the top level stays a mapping (`load_yaml` checks that)
            kind = "add"
        if kind == "junk":
            config = _set(config, path, data.draw(junk))
        elif kind == "delete":
            parent = paths[[p for p, _ in paths].index(path[:-1])][1]
            del parent[path[-1]]
        elif kind == "add" and isinstance(value, dict):
            value[data.draw(st.sampled_from(KEYS) | st.text(max_size=6))] = data.draw(junk)
        elif kind == "add" and isinstance(value, list):
            value.append(data.draw(junk))
        elif kind == "wrap":
            config = _set(config, path, [value] if data.draw(st.booleans()) else {"x": value})
        elif kind == "retype":
            config = _set(
                config,
                path,
                data.draw(
                    st.sampled_from(
                        [
                            str(value),
                            10**400,
                            float("nan"),
                            float("inf"),
                            -1,
                            0,
                            0.5,
                            True,
                            None,
                            [],
                            {},
                        ]
                    )
                ),
            )
        elif kind == "empty":
            config = _set(config, path, type(value)() if isinstance(value, list | dict) else "")
    return config


def yaml_atoms(canary: Path) -> list[str]:
    """Scalars and flow nodes, the valid with the hostile: tags that would run code (they must
    fail to construct, leaving `canary` uncreated), huge numbers, aliases, broken syntax."""
    return [
        "1",
        "-1",
        "0",
        "2",
        "3.5",
        "1e-3",
        "1.0e-7",
        ".nan",
        ".inf",
        "-.inf",
        "1e400",
        "1" + "0" * 400,
        "1" + "0" * 5000,
        "0x10",
        "0o17",
        "1_000",
        "null",
        "~",
        "true",
        "no",
        "''",
        '"x"',
        "adam",
        "sgd",
        "rosenbrock",
        "quadratic_k100",
        "learnable_adam",
        "pes",
        "log_uniform",
        "uniform",
        "choice",
        "[]",
        "{}",
        "[1, 2]",
        "{a: 1}",
        "[rosenbrock]",
        "{name: adam}",
        "{type: uniform, low: 0, high: 1}",
        f"!!python/object/apply:os.system ['touch {canary}']",
        f'!!python/object/apply:builtins.exec [\'open("{canary}", "w")\']',
        f"!!python/object/new:subprocess.Popen [['touch', '{canary}']]",
        "!!python/name:os.system",
        "!!python/module:os",
        "!!python/tuple [1, 2]",
        "!!binary aGVsbG8=",
        "!!set {a, b}",
        "!!timestamp 2001-12-14",
        "!!float 1",
        "!!int x",
        "!!str 1",
        "!!omap [{a: 1}]",
        "!!pairs [{a: 1}]",
        "!custom 3",
        "&A [1, 2]",
        "*A",
        "*undefined",
        "2001-12-14",
        "@x",
        "`x`",
        "%x",
        "'unterminated",
        "[1, 2",
        "{a: [",
        '"\\x00"',
        '"\\ud800"',
        "? complex",
        "- item",
        "|\n  block",
        ">\n  folded",
    ]


def yaml_documents(canary: Path, keys: list[str]):
    """Random YAML text: nested `key: value` blocks built from real keys and `yaml_atoms`."""
    atoms = st.sampled_from(yaml_atoms(canary))
    key = st.sampled_from(keys + KEYS) | st.text(max_size=5)
    tree = st.recursive(
        atoms, lambda inner: st.lists(st.tuples(key, inner), min_size=1, max_size=4), max_leaves=8
    )

    def render(node, indent=0) -> str:
        lines = []
        for k, v in node:
            if isinstance(v, list):
                lines.append(f"{' ' * indent}{k}:\n{render(v, indent + 2)}")
            else:
                lines.append(f"{' ' * indent}{k}: {v}")
        return "\n".join(lines)

    prefixes = st.sampled_from(["", "---\n", "%YAML 1.1\n---\n", "%TAG ! tag:x,2000:\n---\n"])
    documents = st.builds(
        lambda p, t: p + render(t) + "\n",
        prefixes,
        st.lists(st.tuples(key, tree), min_size=1, max_size=6),
    )
    return st.one_of(
        documents,
        atoms,
        st.text(max_size=80),
        st.binary(max_size=80),
        st.builds(lambda d, n: "[" * n + d + "]" * n, atoms, st.sampled_from([3, 30, 120])),
    )


def _run_cases(test, outcomes: dict[str, int], cases: int) -> None:
    """Run a hypothesis test function and check that `cases` cases ran to the end."""
    test()
    assert sum(outcomes.values()) >= cases, outcomes


def _outcome(fn, errors, check, what):
    """Call `fn()`: a result must pass `check`; an error must be one of `errors`, with text."""
    try:
        result = fn()
    except errors as e:
        assert str(e).strip(), f"{what}: empty error message"
        return "error"
    check(result)
    return "ok"


def _load_and_parse(path: Path, parse):
    return parse(load_yaml(path))


# --- the fuzz tests -------------------------------------------------------------------------

SUITES = ["suite_small.yaml", "suite_heldout.yaml"]


def _suite_bases():
    bases = [yaml.safe_load((CONFIGS / name).read_text()) for name in SUITES]
    bases.append(
        {
            "tasks": ["rosenbrock"],
            "optimizers": [
                "adam",
                {"name": "sgd", "hparams": {"learning_rate": 0.1}, "tune_lr": False},
            ],
            "steps": 10,
        }
    )
    return bases


def _meta_bases():
    return [
        yaml.safe_load((CONFIGS / "meta_tiny.yaml").read_text()),
        {
            "optimizer": {"name": "mlp", "config": {"hidden_sizes": [8]}},
            "tasks": ["rosenbrock", {"name": "quadratic_k100", "options": {"dim": 5}}],
            "estimator": {"name": "open_es", "population_size": 4},
            "outer": {"steps": 3},
        },
    ]


def _space_bases():
    return [yaml.safe_load(p.read_text()) for p in sorted((CONFIGS / "spaces").glob("*.yaml"))] + [
        {
            "learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1.0},
            "b1": {"type": "choice", "choices": [0.8, 0.9]},
            "nesterov": True,
            "b2": {"type": "int", "low": 1, "high": 3},
        }
    ]


def _parse_space_checked(spec, allowed):
    return parse_space(spec, allowed)


# Run files: (parse, check of a parsed result, the configs mutated, file name, keys of the YAML).
RUN_FILES = {
    "suite": (parse_suite, check_suite, _suite_bases, "suite.yaml",
              ["tasks", "optimizers", "steps"]),
    "meta": (parse_meta_run, check_meta_run, _meta_bases, "meta.yaml",
             ["optimizer", "tasks", "outer"]),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(RUN_FILES))
def test_fuzzed_run_files(tmp_path, time_limit, fuzz, kind):
    parse, check, make_bases, name, keys = RUN_FILES[kind]
    canary, outcomes = tmp_path / "CANARY", {"ok": 0, "error": 0}
    bases = make_bases()
    path = tmp_path / name
    documents = yaml_documents(canary, keys)

    @fuzz
    @given(st.data())
    def case(data):
        with time_limit():
            if data.draw(st.booleans()):
                config = mutate(data, data.draw(st.sampled_from(bases)))
                outcome = _outcome(lambda: parse(config), CLI_ERRORS, check, config)
            else:
                text = data.draw(documents)
                path.write_bytes(text if isinstance(text, bytes) else text.encode())
                outcome = _outcome(lambda: _load_and_parse(path, parse), CLI_ERRORS, check, text)
        outcomes[outcome] += 1
        assert not canary.exists(), "a YAML tag ran code"

    _run_cases(case, outcomes, fuzz.max_examples)
    print(sum(outcomes.values()), "cases:", outcomes)
    assert min(outcomes.values()) >= 20, outcomes  # both outcomes are exercised


@pytest.mark.slow
def test_fuzzed_search_spaces(tmp_path, time_limit, fuzz):
    canary, outcomes = tmp_path / "CANARY", {"ok": 0, "error": 0}
    bases = _space_bases()
    path = tmp_path / "space.yaml"
    documents = yaml_documents(canary, ["learning_rate", "b1", "type"])
    adam = list(optimizer_hparams("adam"))

    @fuzz
    @given(st.data(), st.sampled_from([None, adam]))
    def case(data, allowed):
        with time_limit():
            if data.draw(st.booleans()):
                spec = mutate(data, data.draw(st.sampled_from(bases)))
                outcome = _outcome(
                    lambda: parse_space(spec, allowed), ValueError, check_space, spec
                )
            else:
                text = data.draw(documents)
                path.write_bytes(text if isinstance(text, bytes) else text.encode())

                def parse():
                    return parse_space(load_yaml(path, "space"), allowed)

                outcome = _outcome(parse, (ValueError, UserError), check_space, text)
        outcomes[outcome] += 1
        assert not canary.exists(), "a YAML tag ran code"

    _run_cases(case, outcomes, fuzz.max_examples)
    print(sum(outcomes.values()), "cases:", outcomes)
    assert min(outcomes.values()) >= 20, outcomes


# --- targeted hostile documents -------------------------------------------------------------


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """Anchors whose expansion has width**levels leaves in a file of about a kilobyte."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines)


BOMBS = {
    "suite label": "tasks: [{name: rosenbrock, label: *l8}]\noptimizers: [adam]\n",
    "suite task options": "tasks: [{name: rosenbrock, options: {dim: *l8}}]\noptimizers: [adam]\n",
    "suite hparams": "tasks: [rosenbrock]\noptimizers: [{name: adam, hparams: {b1: *l8}}]\n",
    "meta optimizer config": "optimizer: {name: mlp, config: {hidden_sizes: *l8}}\n"
    "tasks: [rosenbrock]\n",
    "meta tasks": "optimizer: {name: mlp}\ntasks: *l8\n",
}


@pytest.mark.parametrize("where", sorted(BOMBS))
def test_alias_bombs_are_refused_quickly(tmp_path, time_limit, where):
    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs() + "\n" + BOMBS[where].replace("*l8", "*l8"))
    parse = parse_meta_run if where.startswith("meta") else parse_suite
    with time_limit(), pytest.raises(UserError, match="alias|expands|large"):
        parse(load_yaml(path))


@pytest.mark.parametrize(
    "text",
    ["a: &a [*a]\n", "a: &a {b: *a}\n", "tasks: &t [rosenbrock, *t]\noptimizers: [adam]\n"],
)
def test_recursive_documents_are_refused(tmp_path, text):
    path = tmp_path / "loop.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match="refers to itself"):
        load_yaml(path)


def test_small_aliases_still_work(tmp_path):
    path = tmp_path / "alias.yaml"
    path.write_text("tasks: &t [rosenbrock]\noptimizers: [adam]\nsteps: 10\n")
    assert parse_suite(load_yaml(path)).tasks[0].name == "rosenbrock"
