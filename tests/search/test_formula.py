"""The printed formulas of rules are the rules: every library program and shipped rule file over
10,000 steps, every op's LaTeX, and printers that drop an epsilon, a guard or a state update are
caught."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from search import export
from search.formula import (
    STEPS,
    TOLERANCE,
    check_formula,
    parse_latex,
    parse_table,
    relative_error,
    run_form,
)
from search.interpreter import run_program
from search.ops import OPS
from search.program import LR, NUM_FIXED, G, Instruction, Program
from search.programs_library import PROGRAMS, get_program
from search.rule_file import load_program

PRETRAINED = sorted((Path(__file__).parents[2] / "l2o" / "pretrained").glob("*.json"))
S1, R = NUM_FIXED, NUM_FIXED + 1


def previous_gradient() -> Program:
    """`u = lr (g - s1)`, `s1' = g`: the next state is an input, which no line computes."""
    body = (Instruction("sub", R, (G, S1)), Instruction("mul", R, (LR, R)),
            Instruction("copy", S1, (G,)))  # fmt: skip
    return Program(body, R, (S1,))


@pytest.mark.parametrize(
    "program",
    [get_program(name) for name in sorted(PROGRAMS)] + [load_program(p) for p in PRETRAINED],
    ids=sorted(PROGRAMS) + [p.name for p in PRETRAINED],
)
def test_library_rules_and_shipped_rule_files_match_their_formulas(program):
    report = check_formula(program)
    assert report.steps == STEPS == 10_000
    assert set(report.errors) == {"LaTeX", "Markdown table"}
    assert report.ok and max(report.errors.values()) < TOLERANCE / 10, report.summary()


def test_pretrained_files_are_checked():
    assert {p.name for p in PRETRAINED} >= {"evolved_adamw.json", "evolved_sgd_seed1.json"}


def test_every_op_reads_back_as_the_op(one_op_program):
    """Each op's LaTeX and table row, evaluated as written, give the interpreter's update (and
    state) on nonzero inputs."""
    k = jax.random.split(jax.random.key(0), 3)
    w, g, m = (jax.random.normal(key, (7,)) for key in k)
    lr, t = np.float32(0.01), np.float32(3.0)
    for name in sorted(OPS):
        program = one_op_program(name)
        want_u, (want_m,) = run_program(program, w, g, lr, t, (m,))
        forms = (parse_latex(export.export_latex(program)),
                 parse_table(export.export_markdown(program)))  # fmt: skip
        for form in forms:
            u, state = run_form(form, w, g, lr, t, {s: m for s in form.states})
            np.testing.assert_allclose(u, want_u, rtol=1e-5, atol=1e-30, err_msg=name)
            if form.states:  # the canonical form drops a slot the update does not read
                np.testing.assert_allclose(state["m"], want_m, rtol=1e-5, err_msg=name)


def test_a_log_without_its_epsilon_holds_only_for_small_t(monkeypatch):
    """`log(0.5195^t + 1e-12)` of the shipped evolved AdamW is `t log 0.5195` only while
    `0.5195^t` is far above 1e-12: a printer that drops the epsilon is caught from step ~30."""
    program = load_program(Path(__file__).parents[2] / "l2o/pretrained/evolved_adamw.json")
    monkeypatch.setitem(export.LATEX, "log_abs", r"\log(\lvert @0 \rvert)")
    report = check_formula(program, steps=200)
    assert not report.ok and report.errors["Markdown table"] == 0.0
    assert 20 < report.first_failure["LaTeX"] < 60, report.summary()


def test_a_dropped_epsilon_is_caught(monkeypatch):
    """Adam without `+ 1e-8` in its LaTeX: the 1e-8 gradients of the stream show it."""
    monkeypatch.setitem(export.LATEX, "add_c", "@0")
    report = check_formula(get_program("adam"), steps=200)
    assert not report.ok and report.errors["LaTeX"] > 0.1 and report.first_failure["LaTeX"] == 1


def test_normalize_prints_its_epsilon(monkeypatch):
    program = Program((Instruction("normalize", R, (G,)), Instruction("mul", R, (LR, R))), R)
    assert check_formula(program, steps=200).ok
    monkeypatch.setitem(export.LATEX, "normalize", r"\frac{@0}{\operatorname{rms}(@0)}")
    assert not check_formula(program, steps=200).ok


def test_a_state_update_the_printer_leaves_out_is_caught(monkeypatch):
    program = previous_gradient()
    assert "m' &= g" in export.export_latex(program) and check_formula(program, steps=200).ok
    layout = export._layout
    monkeypatch.setattr(export, "_layout", lambda p: layout(p)._replace(carried=[]))
    report = check_formula(program, steps=200)
    assert not report.ok and report.first_failure == {"LaTeX": 2, "Markdown table": 2}


def test_a_misprinted_constant_in_the_table_or_the_markdown_block_is_caught():
    program = get_program("momentum")  # s1 = g + 0.9 s1
    latex, markdown = export.export_latex(program), export.export_markdown(program)
    assert "| 0.9 |" in markdown and "0.9 \\, m" in markdown
    table = check_formula(program, steps=200, markdown=markdown.replace("| 0.9 |", "| 0.91 |"))
    assert not table.ok and set(table.errors) == {"LaTeX", "Markdown table"}
    wrong = markdown.replace("0.9 \\, m", "0.91 \\, m")
    block = check_formula(program, steps=200, latex=latex, markdown=wrong)
    assert not block.ok and block.errors["LaTeX"] == 0.0 and block.errors["Markdown formula"] > 0.01


@pytest.mark.parametrize(
    "latex, message",
    [("u = g", "aligned"),
     ("\\begin{aligned}\nu &= \\foo(g) \\\\\nw &\\leftarrow w - u\n\\end{aligned}", "unexpected"),
     ("\\begin{aligned}\nu &= x_{1} \\\\\nw &\\leftarrow w - u\n\\end{aligned}", "before"),
     ("\\begin{aligned}\nu &= g\n\\end{aligned}", "w <- w - u")],
)  # fmt: skip
def test_unreadable_formulas_raise(latex, message):
    with pytest.raises(ValueError, match=message):
        check_formula(get_program("sgd"), steps=2, latex=latex)


def test_relative_error_per_step():
    want = np.array([[1.0, -2.0], [0.0, 0.0], [np.nan, 1.0], [np.inf, 1.0]])
    got = np.array([[1.0, -2.002], [0.0, 0.0], [np.nan, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(relative_error(got, want), [1e-3, 0.0, 0.0, np.inf])
