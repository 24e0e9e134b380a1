"""Exported modules run as the interpreter does; every op has a jnp and a LaTeX form; names and
descriptions cannot inject code."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re

import jax
import numpy as np
import optax
import pytest

from search.export import LATEX, PYTHON, export_latex, export_markdown, export_python
from search.interpreter import program_transform
from search.ops import ANY, OPS, SCALAR, TENSOR, result_kind
from search.program import CONSTANTS, INPUTS, LR, NUM_FIXED, G, Instruction, Program
from search.programs_library import PROGRAMS, get_program

S1 = NUM_FIXED
R = NUM_FIXED + 1
STEPS = 20


def load(source: str, path, name: str):
    """Import the generated module at `path` (our own output) with importlib."""
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"exported_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def params_of(key) -> dict[str, jax.Array]:
    """Two tensors of one shape (op-by-op runs compile each op once per shape)."""
    k1, k2 = jax.random.split(key)
    return {"a": jax.random.normal(k1, (6,)), "b": 0.1 * jax.random.normal(k2, (6,))}


def updates_of(optimizer: optax.GradientTransformation, steps: int = STEPS) -> np.ndarray:
    """`[steps, 12]` updates, op by op, on noisy parabola gradients along the run's own path."""
    params = params_of(jax.random.key(0))
    state = optimizer.init(params)
    out = []
    for t in range(steps):
        noise = params_of(jax.random.key(t + 1))
        grads = jax.tree.map(lambda p, n: p + 0.5 * n, params, noise)
        updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append(np.concatenate([np.ravel(x) for x in jax.tree.leaves(updates)]))
    return np.stack(out)


def assert_round_trip(program: Program, tmp_path, name: str, steps: int = STEPS, lr=0.05):
    module = load(export_python(program, name=name, learning_rate=0.01), tmp_path / "m.py", name)
    got = updates_of(getattr(module, name)(lr), steps)
    want = updates_of(program_transform(program, lr), steps)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-30, equal_nan=True)
    return module


def random_program(rng: np.random.Generator, length: int) -> Program:
    """A random well-typed program with one state slot, operands mostly the latest values."""
    kinds = [k for _, k in INPUTS] + [SCALAR] * len(CONSTANTS) + [TENSOR] + [None] * 8
    recent, names, insts = list(range(NUM_FIXED + 1)), sorted(OPS), []
    while len(insts) < length:
        op = OPS[names[rng.integers(len(names))]]
        args = []
        for want in op.operands:
            pool = [r for r in recent if want == ANY or kinds[r] == want]
            args.append(int(pool[-1] if rng.random() < 0.6 else rng.choice(pool)))
        out = int(rng.integers(NUM_FIXED, len(kinds)))
        insts.append(Instruction(op.name, out, tuple(args), float(rng.choice([0.1, 0.9, -2.0]))))
        kinds[out] = result_kind(op, tuple(kinds[a] for a in args))
        recent = [r for r in recent if r != out] + [out]
    written = {inst.out for inst in insts}
    tensors = [r for r in recent if kinds[r] == TENSOR and r in written]
    if len(tensors) < 2:  # too few tensor results: draw again
        return random_program(rng, length)
    return Program(tuple(insts), tensors[-1], (tensors[-2 % len(tensors)],), len(kinds))


def test_every_op_has_a_jnp_and_a_latex_form():
    assert set(PYTHON) == set(OPS) == set(LATEX)
    for name, op in OPS.items():  # each template reads exactly the op's operands
        for table in (PYTHON, LATEX):
            reads = [f"@{n}" in table[name] for n in range(3)]
            assert reads == [n < op.arity for n in range(3)], (name, table[name])
            assert ("@c" in table[name] or "@d" in table[name]) == op.uses_const, name


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_library_rules_round_trip(name, tmp_path):
    module = assert_round_trip(get_program(name), tmp_path, name)
    # Each of these updates by `lr d`: the learning rate is a separate optax step.
    assert not inspect.signature(getattr(module, f"scale_by_{name}")).parameters
    assert inspect.signature(getattr(module, name)).parameters["learning_rate"].default == 0.01


def test_random_rules_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    for n in range(8):
        assert_round_trip(random_program(rng, 12), tmp_path, f"random_{n}", steps=8)


def test_every_op_round_trips(tmp_path, one_op_program):
    for name in sorted(OPS):
        assert_round_trip(one_op_program(name), tmp_path, f"only_{name}", steps=4)


def test_learning_rate_inside_the_rule_and_schedules(tmp_path):
    """`s1 = s1 + lr g`, `u = sign(s1) lr^2`: lr is part of the rule."""
    program = Program(
        (
            Instruction("scale", R, (LR, G)),
            Instruction("add", S1, (S1, R)),
            Instruction("sign", R, (S1,)),
            Instruction("square", R + 1, (LR,)),
            Instruction("mul", R, (R, R + 1)),
        ),
        update=R,
        new_state=(S1,),
        num_registers=NUM_FIXED + 3,
    )
    schedule = optax.linear_schedule(0.1, 0.01, 10)
    module = assert_round_trip(program, tmp_path, "inside", lr=schedule)
    assert "learning_rate" in inspect.signature(module.scale_by_inside).parameters
    # `u = lr (g + s1)`, `s1 = s1 + u`: the update is `lr d` but the state reads it too.
    program = Program(
        (
            Instruction("add", R, (G, S1)),
            Instruction("mul", R, (LR, R)),
            Instruction("add", S1, (S1, R)),
        ),
        update=R,
        new_state=(S1,),
    )
    module = assert_round_trip(program, tmp_path, "accumulated", lr=schedule)
    assert "learning_rate" in inspect.signature(module.scale_by_accumulated).parameters
    assert_round_trip(get_program("adamw"), tmp_path, "adamw_scheduled", lr=schedule)


@pytest.mark.parametrize(
    "name", ["x; import os", "import", "zip", "jnp", "", "1abc", "caf\u00e9", "a-b", "_rule"]
)
def test_hostile_names_are_rejected(name):
    with pytest.raises(ValueError, match="name"):
        export_python(get_program("sgd"), name=name)


def test_hostile_descriptions_and_learning_rates_are_rejected():
    for description in ('ends here"""; import os', "a \\ b", "x" * 3000, "\x00"):
        with pytest.raises(ValueError, match="description"):
            export_python(get_program("sgd"), description=description)
    for lr in (float("nan"), float("inf"), "0.1", True):
        with pytest.raises(ValueError, match="learning_rate"):
            export_python(get_program("sgd"), learning_rate=lr)


def test_generated_code_imports_only_jax_and_optax_and_holds_only_our_strings():
    source = export_python(get_program("adamw"), name="rule", description="A (plain) rule.")
    tree = ast.parse(source)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported <= {"__future__", "functools", "typing", "jax", "jax.numpy", "optax"}
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert not names & {"eval", "exec", "open", "compile", "getattr", "__import__"}
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    strings = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and id(node) not in docstrings
    ]  # fmt: skip
    assert strings == ["this update rule reads the weights w: pass params"]
    assert "A (plain) rule." in ast.get_docstring(tree.body[-1])


def test_latex_and_markdown_show_one_equation_per_live_instruction():
    program = get_program("adam")
    latex = export_latex(program)
    lines = latex.split("\n")[1:-1]
    # 15 instructions less the two constants, plus `w <- w - u`.
    assert len(lines) == len(program.instructions) - 2 + 1
    assert lines[-2].startswith(r"u &= \eta") and lines[-1] == r"w &\leftarrow w - u"
    assert r"s_{1} &\leftarrow 0.9 \, s_{1} + 0.1 \, g" in latex
    markdown = export_markdown(program)
    assert markdown.count("$$") == 2 and latex in markdown
    rows = [row for row in markdown.split("\n") if row.startswith("| ") and "---" not in row]
    assert len(rows) == 1 + len(lines) - 1  # a header, then one row per equation but the last
    assert "| 1 | s1 | interp_c | s1, g | 0.1 |" in rows


def test_equations_always_define_the_update():
    """A rule whose update is a state slot (an EMA of lr * g) still gets its `u = m` line."""
    from search.program import state_register

    s1 = state_register(0)
    ema = Program((Instruction("mul", 24, (1, 2)), Instruction("interp_c", s1, (24, s1), 0.63)),
                  s1, (s1,), 26)  # fmt: skip
    for program in (ema, *(f() for f in PROGRAMS.values())):
        assert re.search(r"^u &= ", export_latex(program), re.M), program.format()
        assert "| u |" in export_markdown(program)
