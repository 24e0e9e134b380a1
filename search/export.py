"""A found update rule as a standalone optax module, as LaTeX and as Markdown (Chen et al. 2023,
"Symbolic Discovery of Optimization Algorithms", publish Lion as a few lines of code).

Every export starts from the canonical program (`search.canonical`) and writes one line per live
instruction. The generated source holds only our templates, identifiers we make and numbers:
ops are looked up in the tables below, constants are printed as float32 literals and the name
and description are checked before use.
"""

from __future__ import annotations

import builtins
import keyword
import re
from typing import NamedTuple

import numpy as np

from search.canonical import canonicalize
from search.ops import MATRIX_OPS, NS_COEFFS, NS_EPS, NS_STEPS, OPS
from search.program import CONSTANTS, INPUTS, LR, NUM_FIXED, Instruction, Program, T, W

# Expressions of ops: `@0 @1 @2` the operands, `@c` the constant, `@d` is `1 - c` (in float32).
# First the ops written the same in every array library (operators and the module's helpers).
_ARITHMETIC: dict[str, str] = {
    "const": "@c",
    "copy": "@0",
    "neg": "-@0",
    "square": "@0 * @0",
    "cube": "@0 * @0 * @0",
    "reciprocal": "1 / _safe_divisor(@0)",
    "one_minus": "1 - @0",
    "add_c": "@0 + @c",
    "scale_c": "@c * @0",
    "pow_c": "_pow_abs(@0, @c)",
    "clip_c": "_clip(@0, @c)",
    "add": "@0 + @1",
    "sub": "@0 - @1",
    "mul": "@0 * @1",
    "div": "@0 / _safe_divisor(@1)",
    "power": "_pow_abs(@0, @1)",
    "clip": "_clip(@0, @1)",
    "interp_c": "@d * @0 + @c * @1",
    "interpolate": "(1 - @2) * @0 + @2 * @1",
    "scale": "@0 * @1",
    "normalize": "@0 / (_rms(@0) + TINY)",
    "norm": "_norm(@0)",
    "rms": "_rms(@0)",
    "newton_schulz": "_orthogonalized(@0)",
    "row_rms": "_row_rms(@0)",
    "col_rms": "_col_rms(@0)",
    "is_matrix": "_is_matrix(@0)",
}
# Per op, a jnp expression and a LaTeX one; the jnp ones compute exactly what `search.ops` does.
PYTHON: dict[str, str] = {
    **_ARITHMETIC,
    "abs": "jnp.abs(@0)",
    "sign": "jnp.sign(@0)",
    "sqrt_abs": "jnp.sqrt(jnp.abs(@0))",
    "rsqrt_abs": "jax.lax.rsqrt(jnp.abs(@0) + TINY)",
    "exp": "jnp.exp(jnp.minimum(@0, MAX_EXP))",
    "log_abs": "jnp.log(jnp.abs(@0) + TINY)",
    "log1p_abs": "jnp.log1p(jnp.abs(@0))",
    "tanh": "jnp.tanh(@0)",
    "sigmoid": "jax.nn.sigmoid(@0)",
    "relu": "jnp.maximum(@0, 0)",
    "softsign": "@0 / (1 + jnp.abs(@0))",
    "max": "jnp.maximum(@0, @1)",
    "min": "jnp.minimum(@0, @1)",
    "select": "jnp.where(@0 > 0, @1, @2)",
    "is_positive": "(@0 > 0).astype(@0.dtype)",
    "clip_by_norm": "@0 * jnp.minimum(1, jnp.abs(@1) / _safe_divisor(_norm(@0)))",
    "mean": "jnp.sum(@0) / @0.size",
    "sum": "jnp.sum(@0)",
    "max_abs": "jnp.max(jnp.abs(@0))",
    "size": "jnp.asarray(@0.size, @0.dtype)",
    "dot": "jnp.sum(@0 * @1)",
    "cosine": "jnp.sum(@0 * @1) / _safe_divisor(_norm(@0) * _norm(@1))",
}
LATEX: dict[str, str] = {
    "const": "@c",
    "copy": "@0",
    "neg": "-@0",
    "abs": r"\lvert @0 \rvert",
    "sign": r"\operatorname{sign}(@0)",
    "square": "{@0}^{2}",
    "cube": "{@0}^{3}",
    "sqrt_abs": r"\sqrt{\lvert @0 \rvert}",
    "rsqrt_abs": r"\frac{1}{\sqrt{\lvert @0 \rvert + 10^{-12}}}",
    "reciprocal": r"\frac{1}{@0}",
    "exp": r"\exp(@0)",
    "log_abs": r"\log(\lvert @0 \rvert + 10^{-12})",
    "log1p_abs": r"\log(1 + \lvert @0 \rvert)",
    "tanh": r"\tanh(@0)",
    "sigmoid": r"\sigma(@0)",
    "relu": r"\max(@0, 0)",
    "softsign": r"\frac{@0}{1 + \lvert @0 \rvert}",
    "one_minus": "1 - @0",
    "add_c": "@0 + @c",
    "scale_c": r"@c \, @0",
    "pow_c": r"\lvert @0 \rvert^{@c}",
    "clip_c": r"\operatorname{clip}(@0, @c)",
    "add": "@0 + @1",
    "sub": "@0 - @1",
    "mul": r"@0 \, @1",
    "div": r"\frac{@0}{@1}",
    "max": r"\max(@0, @1)",
    "min": r"\min(@0, @1)",
    "power": r"\lvert @0 \rvert^{@1}",
    "clip": r"\operatorname{clip}(@0, @1)",
    "interp_c": r"@d \, @0 + @c \, @1",
    "interpolate": r"(1 - @2) \, @0 + @2 \, @1",
    "select": r"\begin{cases} @1 & \text{if } @0 > 0 \\ @2 & \text{else} \end{cases}",
    "is_positive": r"[@0 > 0]",
    "scale": r"@0 \, @1",
    "clip_by_norm": r"@0 \min\left(1, \frac{\lvert @1 \rvert}{\lVert @0 \rVert}\right)",
    "normalize": r"\frac{@0}{\operatorname{rms}(@0) + 10^{-12}}",
    "norm": r"\lVert @0 \rVert",
    "rms": r"\operatorname{rms}(@0)",
    "mean": r"\operatorname{mean}(@0)",
    "sum": r"\textstyle\sum @0",
    "max_abs": r"\max \lvert @0 \rvert",
    "size": r"\operatorname{size}(@0)",
    "dot": r"\langle @0, @1 \rangle",
    "cosine": r"\cos(@0, @1)",
    "newton_schulz": r"\operatorname{orth}(@0)",
    "row_rms": r"\operatorname{rms}_{\text{row}}(@0)",
    "col_rms": r"\operatorname{rms}_{\text{col}}(@0)",
    "is_matrix": r"\operatorname{mat}(@0)",
}
HELPERS = {
    "_safe_divisor": '''def _safe_divisor(x):
    """`x` with magnitudes below `TINY` replaced by `+-TINY` (zero becomes `+TINY`)."""
    return jnp.where(jnp.abs(x) < TINY, jnp.where(x < 0, -TINY, TINY), x)''',
    "_pow_abs": '''def _pow_abs(x, p):
    """`max(|x|, TINY)^p`, the exponent clipped to `[-MAX_EXP, MAX_EXP]`."""
    return jnp.exp(jnp.clip(p * jnp.log(jnp.maximum(jnp.abs(x), TINY)), -MAX_EXP, MAX_EXP))''',
    "_clip": '''def _clip(x, bound):
    """`x` clipped to `[-|bound|, |bound|]`."""
    bound = jnp.abs(bound)
    return jnp.clip(x, -bound, bound)''',
    "_norm": """def _norm(x):
    return jnp.sqrt(jnp.sum(x * x))""",
    "_rms": """def _rms(x):
    return jnp.sqrt(jnp.sum(x * x) / x.size)""",
    "_orthogonalized": f'''def _orthogonalized(x):
    """Muon's direction for `x` seen as an `r x n` matrix (leading axes folded into the rows):
    `sqrt(max(1, n / r))` times {NS_STEPS} Newton-Schulz iterations `X <- a X + (b A + c A^2) X`,
    `A = X X^T`, from `X = x / (||x|| + {NS_EPS})` (on the Gram matrix when `n >= 2 r`); a
    vector or scalar: `x / (rms(x) + TINY)`."""
    if x.ndim < 2:
        return x / (jnp.sqrt(jnp.sum(x * x) / x.size) + TINY)
    a, b, c = {NS_COEFFS!r}
    rows, cols = math.prod(x.shape[:-1]), x.shape[-1]
    wide = rows <= cols
    X = x.reshape(rows, cols) if wide else x.reshape(rows, cols).T
    X = X / (jnp.sqrt(jnp.sum(jnp.square(X)) + 1e-30) + {NS_EPS!r})
    r, n = X.shape
    if n >= 2 * r:
        identity = jnp.eye(r, dtype=X.dtype)

        def gram_iteration(_, qa):
            Q, A = qa
            P = a * identity + b * A + c * A @ A
            return P @ Q, P @ A @ P

        Q, _ = jax.lax.fori_loop(0, {NS_STEPS}, gram_iteration, (identity, X @ X.T))
        X = Q @ X
    else:

        def iteration(_, X):
            A = X @ X.T
            return a * X + (b * A + c * A @ A) @ X

        X = jax.lax.fori_loop(0, {NS_STEPS}, iteration, X)
    X = X if wide else X.T
    return (X * math.sqrt(max(1.0, cols / rows))).reshape(x.shape)''',
    "_row_rms": '''def _row_rms(x):
    """The RMS of each row of `x` seen as a matrix (a vector as one row), broadcast to its
    shape."""
    m = x.reshape((math.prod(x.shape[:-1]), x.shape[-1]) if x.ndim else (1, 1))
    rms = jnp.sqrt(jnp.mean(m * m, axis=1, keepdims=True))
    return jnp.broadcast_to(rms, m.shape).reshape(x.shape)''',
    "_col_rms": '''def _col_rms(x):
    """The RMS of each column of `x` seen as a matrix (a vector as one row), broadcast to its
    shape."""
    m = x.reshape((math.prod(x.shape[:-1]), x.shape[-1]) if x.ndim else (1, 1))
    rms = jnp.sqrt(jnp.mean(m * m, axis=0, keepdims=True))
    return jnp.broadcast_to(rms, m.shape).reshape(x.shape)''',
    "_is_matrix": '''def _is_matrix(x):
    """1 over a tensor of two or more axes, 0 over a vector or a scalar."""
    return jnp.full_like(x, 1.0 if x.ndim >= 2 else 0.0)''',
}
TEX_INPUTS = {"w": "w", "g": "g", "lr": r"\eta", "t": "t"}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"-?\d+(\.\d+)?(e[+-]\d+)?")
_DESCRIPTION = re.compile(r"[A-Za-z0-9 \n.,;:!?()\[\]\-+*/=<>'%&|~#@_^]*")
_RESERVED = {"jax", "jnp", "optax", "functools", "math", "annotations", "NamedTuple", "TINY",
             "MAX_EXP", "_rule", "_per_tensor", *HELPERS}  # fmt: skip


class _Value(NamedTuple):
    """A value in generated code: its Python and LaTeX text; `literal` for constants."""

    py: str
    tex: str
    literal: bool = False


class _Line(NamedTuple):
    """One instruction as a named line; `reassigns` when it overwrites a state slot's name."""

    inst: Instruction
    name: _Value
    operands: tuple[_Value, ...]
    reassigns: bool


class _Rule(NamedTuple):
    """A canonical program laid out for export."""

    program: Program
    lines: list[_Line]
    update: _Value  # `u`, or `d` when the update factors as `lr d`
    new_state: list[_Value]
    state: list[_Value]
    factored: bool  # u = lr d, with lr read nowhere else
    carried: list[tuple[_Value, _Value]]  # (s', value): next states no line of the slot shows


def _py_number(value: float) -> str:
    """The shortest literal that parses to the float32 `value` (checked to be a number)."""
    f32 = np.float32(value)
    text = str(f32)
    if float(np.float32(float(text))) != float(f32):
        text = repr(float(f32))
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"cannot write {value!r} as a number")
    return text


def _tex_number(text: str) -> str:
    mantissa, _, exponent = text.partition("e")
    mantissa = mantissa[:-2] if mantissa.endswith(".0") else mantissa
    if not exponent:
        return mantissa
    power = f"10^{{{int(exponent)}}}"
    return power if mantissa == "1" else rf"{mantissa} \cdot {power}"


def _literal(value: float) -> _Value:
    text = _py_number(value)
    py, tex = text, _tex_number(text)
    if value < 0:
        py, tex = f"({py})", f"({tex})"
    return _Value(py, tex, literal=True)


def _fill(template: str, operands: list[str], c: str, d: str) -> str:
    table = {"c": c, "d": d, **{str(n): x for n, x in enumerate(operands)}}
    text = re.sub(r"@([012cd])", lambda m: table[m.group(1)], template)
    return re.sub(r"\\lvert (\d[\d.]*) \\rvert", r"\1", text)  # |0.9| is 0.9


def _layout(program: Program) -> _Rule:
    """Names for every value of `canonicalize(program)`: `w, g, lr, t`; the state `m` (one slot)
    or `s1..sk`, reassigned where the old value is not read later; `u` (or `d`); else `x1..`."""
    program = canonicalize(program)
    insts = program.instructions
    k = program.num_state
    state = ([_Value("m", "m")] if k == 1 else
             [_Value(f"s{i + 1}", f"s_{{{i + 1}}}") for i in range(k)])  # fmt: skip
    current: dict[int, _Value] = {r: _Value(n, TEX_INPUTS[n]) for r, (n, _) in enumerate(INPUTS)}
    for i, (_, value) in enumerate(CONSTANTS):
        current[len(INPUTS) + i] = _literal(value)
    current.update({NUM_FIXED + i: state[i] for i in range(k)})
    writer = {}  # register -> index of its last write
    for n, inst in enumerate(insts):
        writer[inst.out] = n
    last = insts[writer[program.update]] if program.update in writer else None
    factored = (  # u = lr d, and neither lr nor u is read anywhere else
        last is not None
        and last.op == "mul"
        and sorted(a == LR for a in last.args) == [False, True]
        and sum(a == LR for inst in insts for a in inst.args) == 1
        and program.update not in program.new_state
        and not any(program.update in inst.args for inst in insts[writer[program.update] + 1 :])
    )
    direction = None
    if factored:
        x = last.args[0] if last.args[1] == LR else last.args[1]
        before = insts[: writer[program.update]]
        direction = max((n for n, inst in enumerate(before) if inst.out == x), default=None)
    outputs = {program.update, *program.new_state}
    state_of = {}  # instruction index -> the state slot it writes last
    for i, r in enumerate(program.new_state):
        if r in writer and writer[r] not in state_of:
            state_of[writer[r]] = i
    lines, count = [], 0
    for n, inst in enumerate(insts):
        operands = tuple(current[a] for a in inst.args)
        if inst.op == "const":
            current[inst.out] = _literal(inst.const)
            continue
        reassigns = False
        if n in state_of:
            i = state_of[n]
            old = NUM_FIXED + i
            read_later = any(old in after.args for after in insts[n + 1 :])
            reassigns = not read_later and old not in outputs
            s = state[i]
            name = s if reassigns else _Value(f"new_{s.py}", f"{s.tex}'")
        elif n == writer.get(program.update) and not factored:
            name = _Value("u", "u")
        elif n == direction:
            name = _Value("d", "d")
        else:
            count += 1
            name = _Value(f"x{count}", f"x_{{{count}}}")
        current[inst.out] = name
        if not (factored and inst is last):
            lines.append(_Line(inst, name, operands, reassigns))
    if factored:
        update = current[last.args[0] if last.args[1] == LR else last.args[1]]
    else:
        update = current[program.update]
    new_state = [current[r] for r in program.new_state]
    shown = set(state_of.values())  # a slot takes a value no line of its own writes (`s1' = g`)
    carried = [(_Value(f"new_{s.py}", f"{s.tex}'"), value)
               for i, (s, value) in enumerate(zip(state, new_state, strict=True))
               if i not in shown and value != s]  # fmt: skip
    return _Rule(program, lines, update, new_state, state, factored, carried)


def _py_expression(line: _Line) -> str:
    operands = [x.py for x in line.operands]
    if line.operands and all(x.literal for x in line.operands):  # float32 like the interpreter
        operands = [f"jnp.float32({x.strip('()')})" for x in operands]
    c = _literal(line.inst.const).py
    d = _literal(float(np.float32(1) - np.float32(line.inst.const))).py
    return _fill(PYTHON[line.inst.op], operands, c, d)


def _tex_lines(rule: _Rule) -> list[str]:
    out = []
    for line in rule.lines:
        c = _literal(line.inst.const).tex
        d = _literal(float(np.float32(1) - np.float32(line.inst.const))).tex
        expression = _fill(LATEX[line.inst.op], [x.tex for x in line.operands], c, d)
        relation = r"\leftarrow" if line.reassigns else "="
        out.append(f"{line.name.tex} &{relation} {expression}")
    out += [f"{name.tex} &= {value.tex}" for name, value in rule.carried]
    if rule.factored:
        out.append(rf"u &= \eta \, {rule.update.tex}")
    elif rule.update.tex != "u":  # the update is a state slot or an input
        out.append(f"u &= {rule.update.tex}")
    out.append(r"w &\leftarrow w - u")
    return out


def export_latex(program: Program) -> str:
    """The update rule as a LaTeX `aligned` block: one equation per live instruction of the
    canonical program (`w, g`, `\\eta` the learning rate, `t = 1, 2, ...`, `m` or `s_1..s_k` the
    state, zero at first; `\\leftarrow` updates a state slot in place, a primed slot `m'` is its
    value at the next step), then `w \\leftarrow w - u`. Roots and logarithms take `|x|`;
    the guards of `search.ops` that act only at extremes (divisors and bases of powers below
    `TINY` in magnitude, `exp` and powers beyond `exp(MAX_EXP)`) are left out, so
    `search.formula.check_formula` compares the formula with the rule. The matrix ops print as
    `\\operatorname{orth}`, `\\operatorname{rms}_{\\text{row}}` and `_{\\text{col}}`, which
    `export_markdown` defines."""
    body = " \\\\\n".join(_tex_lines(_layout(program)))
    return f"\\begin{{aligned}}\n{body}\n\\end{{aligned}}"


def export_markdown(program: Program) -> str:
    """The update rule as Markdown: `export_latex` in a `$$` block, then a plain table of the
    same lines (value, op, operands, constant)."""
    rule = _layout(program)
    rows = ["| # | value | op | operands | constant |", "|---|---|---|---|---|"]
    for n, line in enumerate(rule.lines, 1):
        operands = ", ".join(x.py.strip("()") for x in line.operands)
        const = _py_number(line.inst.const) if OPS[line.inst.op].uses_const else ""
        rows.append(f"| {n} | {line.name.py} | {line.inst.op} | {operands} | {const} |")
    for name, value in rule.carried:
        rows.append(f"| {len(rows) - 1} | {name.py} | copy | {value.py} | |")
    if rule.factored:
        rows.append(f"| {len(rows) - 1} | u | mul | lr, {rule.update.py} | |")
    elif rule.update.py != "u":
        rows.append(f"| {len(rows) - 1} | u | copy | {rule.update.py.strip('()')} | |")
    text = (
        "Per parameter tensor, with $t = 1, 2, \\dots$ counting updates and the state zero at "
        "first; $\\leftarrow$ updates a state slot in place, a primed slot such as $m'$ "
        "(`new_m` in the table) is its value at the next step, and the weights move by "
        "$w \\leftarrow w - u$. $\\operatorname{clip}(x, c)$ limits $x$ to "
        "$[-\\lvert c \\rvert, \\lvert c \\rvert]$. Where the formula does not say so, the rule "
        "divides by $\\pm 10^{-12}$ for a divisor smaller in magnitude, raises "
        "$\\max(\\lvert x \\rvert, 10^{-12})$ to powers, which it keeps within "
        "$[e^{-80}, e^{80}]$, and caps $\\exp$ at $e^{80}$.\n\n"
    )
    if any(line.inst.op in MATRIX_OPS for line in rule.lines):
        text += _MATRIX_NOTE
    if any(line.inst.op == "cosine" for line in rule.lines):
        text += _COSINE_NOTE
    return f"{text}$$\n{export_latex(program)}\n$$\n\n" + "\n".join(rows) + "\n"


_COSINE_NOTE = (
    "$\\cos(a, b) = \\langle a, b \\rangle / (\\lVert a \\rVert \\lVert b \\rVert)$ "
    "over the whole tensor, and 0 where $a$ or $b$ is zero (as a state is at the first "
    "step).\n\n"
)
_MATRIX_NOTE = (
    "Each tensor is read as an $r \\times n$ matrix: its leading axes folded into the $r$ rows, "
    "a vector as one row. $\\operatorname{orth}(x)$ is Muon's direction (Jordan et al. 2024), "
    f"$\\sqrt{{\\max(1, n / r)}}$ times {NS_STEPS} quintic Newton-Schulz iterations "
    "$X \\leftarrow a X + (b A + c A^2) X$, $A = X X^\\top$, "
    f"$(a, b, c) = {NS_COEFFS}$, from $X = x / (\\lVert x \\rVert + 10^{{-7}})$ "
    "(about $U V^\\top$ for $x = U S V^\\top$), and $x / (\\operatorname{rms}(x) + 10^{-12})$ "
    "for a vector or a scalar; $\\operatorname{rms}_{\\text{row}}(x)$ and "
    "$\\operatorname{rms}_{\\text{col}}(x)$ are the RMS of each row and of each column, "
    "repeated over the shape of $x$ (Adafactor's statistics); $\\operatorname{mat}(x)$ is 1 "
    "over a tensor of two or more axes and 0 over a vector or a scalar.\n\n"
)


def _tuple(names: list[str]) -> str:
    return f"({names[0]},)" if len(names) == 1 else ", ".join(names)


def _signature(function: str, parameters: str) -> str:
    """`def function(parameters) -> optax.GradientTransformationExtraArgs:`, wrapped when long."""
    returns = "-> optax.GradientTransformationExtraArgs:"
    line = f"def {function}({parameters}) {returns}"
    if len(line) <= 100:
        return line
    return f"def {function}(\n    {parameters},\n) {returns}"


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"name must be a Python identifier (ASCII letters, digits, _): {name!r}")
    taken = _RESERVED | set(dir(builtins))
    if keyword.iskeyword(name) or name in taken or f"scale_by_{name}" in taken:
        raise ValueError(f"name {name!r} is a keyword or a name the module uses")


def _check_description(description: str) -> None:
    if not isinstance(description, str) or len(description) > 2000:
        raise ValueError("description must be a string of at most 2000 characters")
    if not _DESCRIPTION.fullmatch(description):
        raise ValueError(
            "description may hold letters, digits, spaces, newlines and plain punctuation only "
            "(no quotes or backslashes)"
        )


def export_python(
    program: Program,
    *,
    name: str = "discovered",
    learning_rate: float | None = None,
    description: str = "",
) -> str:
    """The source of a standalone module (jax and optax only) running `program` as optax does.

    The module defines `scale_by_<name>()` and `<name>(learning_rate)`, optax style: when the
    update is `lr d` with `lr` read nowhere else (as in Adam or Lion), `scale_by_<name>()` gives
    `d` and `<name>` chains it with `optax.scale_by_learning_rate`; otherwise `lr` is part of the
    rule and `scale_by_<name>(learning_rate)` gives the whole update `-u`. Either way the
    updates equal `search.interpreter.program_transform(program, learning_rate)`: the state is
    zero at first, `t = count + 1`, reductions reduce each tensor.

    Args:
      program: the rule (exported in its canonical form).
      name: a Python identifier; the functions' names derive from it.
      learning_rate: the default learning rate of `<name>` (none: a required argument).
      description: plain text for the docstring (letters, digits, punctuation; no quotes or
        backslashes).

    Returns:
      Python source text.
    """
    _check_name(name)
    _check_description(description)
    if learning_rate is not None:
        lr_ok = isinstance(learning_rate, int | float) and not isinstance(learning_rate, bool)
        if not lr_ok or not np.isfinite(learning_rate):
            raise ValueError(f"learning_rate must be a finite number, got {learning_rate!r:.40}")
    rule = _layout(program)
    camel = "".join(part[:1].upper() + part[1:] for part in name.split("_"))
    state_class = f"ScaleBy{camel}State"
    body = [f"    {line.name.py} = {_py_expression(line)}" for line in rule.lines]
    reads = {a for line in rule.lines for a in line.inst.args}
    reads |= {rule.program.update, *rule.program.new_state}
    reads_w, reads_t = W in reads, T in reads
    reads_lr = LR in reads and not rule.factored
    outputs = [rule.update.py, *(s.py for s in rule.new_state)]
    body.append(f"    return {_tuple(outputs)}")
    tensors = ["g", *(["w"] if reads_w else []), *(s.py for s in rule.state)]
    scalars = [*(["lr"] if reads_lr else []), *(["t"] if reads_t else [])]
    signature = ", ".join(tensors + (["*", *scalars] if scalars else []))
    out_doc = "The direction `d` (the update is `lr d`)" if rule.factored else "The update `u`"
    rule_def = [
        f"def _rule({signature}):",
        f'    """{out_doc} and the new state, on one parameter tensor."""',
        *body,
    ]
    # Helpers, in a fixed order, those the code refers to.
    code = "\n".join(rule_def)
    helpers = [src for helper, src in HELPERS.items() if f"{helper}(" in code]
    every = code + "\n".join(helpers)
    constants = [line for word, line in (("TINY", "TINY = 1e-12"), ("MAX_EXP", "MAX_EXP = 80.0"))
                 if re.search(rf"\b{word}\b", every)]  # fmt: skip

    fields = [f"    {s.py}: optax.Updates" for s in rule.state]
    zeros = "".join(f"            {s.py}=optax.tree.zeros_like(params),\n" for s in rule.state)
    trees = ["updates", *(["params"] if reads_w else []), *(f"state.{s.py}" for s in rule.state)]
    keywords = ", ".join(f"{s}={s}" for s in scalars)
    call = f"functools.partial(_rule, {keywords})" if scalars else "_rule"
    results = [("d" if rule.factored else "u"), *(s.py for s in rule.state)]
    unpack = _tuple(results)
    update_lines = ["        del extra_args"]
    if reads_w:
        update_lines += [
            "        if params is None:",
            '            raise ValueError("this update rule reads the weights w: pass params")',
        ]
    if reads_t:
        update_lines.append("        t = (state.count + 1).astype(jnp.float32)")
    if reads_lr:
        update_lines += [
            "        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate",
            "        lr = jnp.asarray(lr, jnp.float32)",
        ]
    update_lines.append(f"        {unpack} = _per_tensor({call}, {', '.join(trees)})")
    if not rule.factored:
        update_lines.append("        u = jax.tree.map(jnp.negative, u)")
    new_state = "".join(f", {s.py}" for s in rule.state)
    update_lines.append(
        f"        return {results[0]}, {state_class}(optax.safe_increment(state.count){new_state})"
    )
    lr_param = "learning_rate: optax.ScalarOrSchedule"
    lr_default = "" if learning_rate is None else f" = {float(learning_rate)!r}"
    scale_args = "" if rule.factored else lr_param
    math = "\n".join(f"      {line}" for line in " \\\\\n".join(_tex_lines(rule)).split("\n"))
    what = (
        "The direction :math:`d`; the update is :math:`u = \\eta d` (see `{name}`)."
        if rule.factored
        else "The whole update :math:`-u`: the learning rate is part of the rule."
    ).format(name=name)
    if rule.factored:
        ret = (
            f"    return optax.chain(scale_by_{name}(), "
            "optax.scale_by_learning_rate(learning_rate))"
        )
    else:
        ret = f"    return scale_by_{name}(learning_rate)"
    description = description.strip() or "An update rule found by symbolic search."
    description = "\n".join(f"    {x}".rstrip() for x in description.split("\n"))

    parts = [
        f'"""The update rule `{name}` as an optax transform; needs only jax and optax."""',
        "",
        "from __future__ import annotations",
        "",
        *(["import functools"] if scalars else []),
        *(["import math"] if "math." in every else []),
        "from typing import NamedTuple",
        "",
        "import jax",
        "import jax.numpy as jnp",
        "import optax",
        "",
        *constants,
        "",
        *[f"\n{src}\n" for src in helpers],
        "",
        "def _per_tensor(rule, updates, *trees):",
        '    """`rule(g, *tensors)` on each tensor `g` of `updates` and the matching tensors of',
        '    `trees`; its outputs as trees like `updates`, in the dtypes of the gradients."""',
        "    leaves, treedef = jax.tree.flatten(updates)",
        "    others = [treedef.flatten_up_to(tree) for tree in trees]",
        "    outputs = [",
        "        [x.astype(g.dtype) for x in rule(g, *more)]",
        "        for g, *more in zip(leaves, *others, strict=True)",
        "    ]",
        "    return [treedef.unflatten(list(column)) for column in zip(*outputs, strict=True)]",
        "",
        "",
        f"class {state_class}(NamedTuple):",
        "    count: jax.Array",
        *fields,
        "",
        "",
        *rule_def,
        "",
        "",
        _signature(f"scale_by_{name}", scale_args),
        f'    r"""{what}"""',
        "",
        "    def init_fn(params):",
        f"        return {state_class}(",
        f"            count=jnp.zeros([], jnp.int32),\n{zeros}        )",
        "",
        "    def update_fn(updates, state, params=None, **extra_args):",
        *update_lines,
        "",
        "    return optax.GradientTransformationExtraArgs(init_fn, update_fn)",
        "",
        "",
        _signature(name, f"{lr_param}{lr_default}"),
        f'    r"""{description.strip()}',
        "",
        "    Per parameter tensor, with :math:`t = 1, 2, \\dots` counting updates and the state",
        "    zero at first:",
        "",
        "    .. math::",
        "",
        math,
        "",
        "    Args:",
        "      learning_rate: :math:`\\eta`, a float or an optax schedule of the step.",
        "",
        "    Returns:",
        "      An `optax.GradientTransformationExtraArgs`.",
        '    """',
        ret,
        "",
    ]
    text = "\n".join(parts)
    return re.sub(r"\n{3,}", "\n\n\n", text)


# Per op, a torch expression computing what the jnp one in `PYTHON` computes (`@0 @1 @2` are
# tensors of the gradient's dtype and device, `@c`, `@d` Python float32 literals).
TORCH: dict[str, str] = {
    **_ARITHMETIC,
    "abs": "torch.abs(@0)",
    "sign": "torch.sign(@0)",
    "sqrt_abs": "torch.sqrt(torch.abs(@0))",
    "rsqrt_abs": "torch.rsqrt(torch.abs(@0) + TINY)",
    "exp": "torch.exp(torch.clamp(@0, max=MAX_EXP))",
    "log_abs": "torch.log(torch.abs(@0) + TINY)",
    "log1p_abs": "torch.log1p(torch.abs(@0))",
    "tanh": "torch.tanh(@0)",
    "sigmoid": "torch.sigmoid(@0)",
    "relu": "torch.relu(@0)",
    "softsign": "@0 / (1 + torch.abs(@0))",
    "max": "torch.maximum(@0, @1)",
    "min": "torch.minimum(@0, @1)",
    "select": "torch.where(@0 > 0, @1, @2)",
    "is_positive": "(@0 > 0).to(@0.dtype)",
    "clip_by_norm": "@0 * torch.clamp(torch.abs(@1) / _safe_divisor(_norm(@0)), max=1)",
    "mean": "torch.sum(@0) / @0.numel()",
    "sum": "torch.sum(@0)",
    "max_abs": "torch.max(torch.abs(@0))",
    "size": "@0.new_tensor(@0.numel())",
    "dot": "torch.sum(@0 * @1)",
    "cosine": "torch.sum(@0 * @1) / _safe_divisor(_norm(@0) * _norm(@1))",
}
TORCH_HELPERS = {
    "_safe_divisor": '''def _safe_divisor(x):
    """`x` with magnitudes below `TINY` replaced by `+-TINY` (zero becomes `+TINY`)."""
    return torch.where(x < 0, torch.clamp(x, max=-TINY), torch.clamp(x, min=TINY))''',
    "_pow_abs": '''def _pow_abs(x, p):
    """`max(|x|, TINY)^p`, the exponent clipped to `[-MAX_EXP, MAX_EXP]`."""
    exponent = p * torch.log(torch.clamp(torch.abs(x), min=TINY))
    return torch.exp(torch.clamp(exponent, -MAX_EXP, MAX_EXP))''',
    "_clip": '''def _clip(x, bound):
    """`x` clipped to `[-|bound|, |bound|]`."""
    bound = torch.abs(torch.as_tensor(bound, dtype=x.dtype, device=x.device))
    return torch.minimum(torch.maximum(x, -bound), bound)''',
    "_norm": """def _norm(x):
    return torch.sqrt(torch.sum(x * x))""",
    "_rms": """def _rms(x):
    return torch.sqrt(torch.sum(x * x) / x.numel())""",
    "_orthogonalized": f'''def _orthogonalized(x):
    """Muon's direction for `x` seen as an `r x n` matrix (leading axes folded into the rows):
    `sqrt(max(1, n / r))` times {NS_STEPS} Newton-Schulz iterations `X <- a X + (b A + c A^2) X`,
    `A = X X^T`, from `X = x / (||x|| + {NS_EPS})` (on the Gram matrix when `n >= 2 r`); a
    vector or scalar: `x / (rms(x) + TINY)`."""
    if x.dim() < 2:
        return x / (torch.sqrt(torch.sum(x * x) / x.numel()) + TINY)
    a, b, c = {NS_COEFFS!r}
    rows, cols = math.prod(x.shape[:-1]), x.shape[-1]
    wide = rows <= cols
    X = x.reshape(rows, cols) if wide else x.reshape(rows, cols).T
    X = X / (torch.sqrt(torch.sum(X * X) + 1e-30) + {NS_EPS!r})
    r, n = X.shape
    if n >= 2 * r:
        identity = torch.eye(r, dtype=X.dtype, device=X.device)
        Q, A = identity, X @ X.T
        for _ in range({NS_STEPS}):
            P = a * identity + b * A + c * A @ A
            Q, A = P @ Q, P @ A @ P
        X = Q @ X
    else:
        for _ in range({NS_STEPS}):
            A = X @ X.T
            X = a * X + (b * A + c * A @ A) @ X
    X = X if wide else X.T
    return (X * math.sqrt(max(1.0, cols / rows))).reshape(x.shape)''',
    "_row_rms": '''def _row_rms(x):
    """The RMS of each row of `x` seen as a matrix (a vector as one row), broadcast to its
    shape."""
    m = x.reshape((math.prod(x.shape[:-1]), x.shape[-1]) if x.dim() else (1, 1))
    rms = torch.sqrt(torch.mean(m * m, dim=1, keepdim=True))
    return rms.repeat(1, m.shape[1]).reshape(x.shape)''',
    "_col_rms": '''def _col_rms(x):
    """The RMS of each column of `x` seen as a matrix (a vector as one row), broadcast to its
    shape."""
    m = x.reshape((math.prod(x.shape[:-1]), x.shape[-1]) if x.dim() else (1, 1))
    rms = torch.sqrt(torch.mean(m * m, dim=0, keepdim=True))
    return rms.repeat(m.shape[0], 1).reshape(x.shape)''',
    "_is_matrix": '''def _is_matrix(x):
    """1 over a tensor of two or more axes, 0 over a vector or a scalar."""
    return torch.full_like(x, 1.0 if x.dim() >= 2 else 0.0)''',
}
_TORCH_RESERVED = {"torch", "math", "annotations", "TINY", "MAX_EXP", "_rule", *TORCH_HELPERS}


def _torch_expression(line: _Line) -> str:
    """`line` as torch code; literal operands become tensors like the gradient `g`."""
    operands = [f"g.new_tensor({x.py.strip('()')})" if x.literal else x.py for x in line.operands]
    c = _literal(line.inst.const).py
    d = _literal(float(np.float32(1) - np.float32(line.inst.const))).py
    return _fill(TORCH[line.inst.op], operands, c, d)


def export_torch(
    program: Program,
    *,
    name: str = "Discovered",
    learning_rate: float | None = None,
    description: str = "",
) -> str:
    """The source of a standalone module (torch and math only) defining `program` as the
    `torch.optim.Optimizer` subclass `name`, with the learning rate `lr` per parameter group.

    Per parameter the state holds `step` (the updates made, so `t = step`) and the slots
    `s1..sk` (zero at first, created at the parameter's first step, in its dtype and on its
    device); every value is computed in the gradient's dtype. In float32 the updates equal
    `search.interpreter.program_transform(program, learning_rate)` up to rounding.

    Args:
      program: the rule (exported in its canonical form).
      name: a Python identifier, the class name.
      learning_rate: the default `lr` (none: a required argument).
      description: plain text for the docstring (letters, digits, punctuation; no quotes or
        backslashes).

    Returns:
      Python source text.
    """
    _check_name(name)
    if name in _TORCH_RESERVED:
        raise ValueError(f"name {name!r} is a keyword or a name the module uses")
    _check_description(description)
    if learning_rate is not None:
        lr_ok = isinstance(learning_rate, int | float) and not isinstance(learning_rate, bool)
        if not lr_ok or not np.isfinite(learning_rate) or learning_rate < 0:
            raise ValueError(
                f"learning_rate must be a finite number >= 0, got {learning_rate!r:.40}"
            )
    rule = _layout(program)
    body = [f"    {line.name.py} = {_torch_expression(line)}" for line in rule.lines]
    update = rule.update.py
    if rule.factored:
        body.append(f"    u = lr * {rule.update.py}")
        update = "u"
    aliases = {"w", "g"}  # outputs that are the weights or gradient are copied
    for line in rule.lines:
        if line.inst.op == "copy" and line.operands[0].py in aliases:
            aliases.add(line.name.py)
        else:
            aliases.discard(line.name.py)
    outputs = [
        f"{x}.clone()" if x in aliases else x for x in (update, *(s.py for s in rule.new_state))
    ]
    body.append(f"    return {', '.join(outputs)}")
    signature = ", ".join(["g", "w", *(s.py for s in rule.state)]) + ", *, lr, t"
    rule_def = [
        f"def _rule({signature}):",
        '    """The update `u` and the new state, on one parameter tensor."""',
        *body,
    ]
    code = "\n".join(rule_def)
    helpers = [src for helper, src in TORCH_HELPERS.items() if f"{helper}(" in code]
    every = code + "\n".join(helpers)
    constants = [line for word, line in (("TINY", "TINY = 1e-12"), ("MAX_EXP", "MAX_EXP = 80.0"))
                 if re.search(rf"\b{word}\b", every)]  # fmt: skip
    slots = [s.py for s in rule.state]
    zeros = "torch.zeros_like(w, memory_format=torch.preserve_format)"
    create = [f'                    state["{s}"] = {zeros}' for s in slots]
    results = ", ".join(["u", *slots])
    call = ", ".join(["g", "w", *(f'state["{s}"]' for s in slots)])
    store = [f'                state["{s}"] = {s}' for s in slots]
    lr_default = "" if learning_rate is None else f" = {float(learning_rate)!r}"
    math_lines = "\n".join(f"      {line}" for line in " \\\\\n".join(_tex_lines(rule)).split("\n"))
    description = description.strip() or "An update rule found by symbolic search."
    description = "\n".join(f"    {x}".rstrip() for x in description.split("\n"))
    tensors = ", ".join(f"`{s}`" for s in slots)
    state_doc = f"the tensors {tensors} (its dtype, on its device)" if slots else "no tensors"
    parts = [
        f'"""The update rule `{name}` as a `torch.optim.Optimizer`; needs only torch."""',
        "",
        "from __future__ import annotations",
        "",
        "import math",
        "",
        "import torch",
        "",
        *constants,
        "",
        *[f"\n{src}\n" for src in helpers],
        "",
        *rule_def,
        "",
        "",
        f"class {name}(torch.optim.Optimizer):",
        f'    r"""{description.strip()}',
        "",
        "    Per parameter tensor, with :math:`t = 1, 2, \\dots` counting updates and the state",
        "    zero at first:",
        "",
        "    .. math::",
        "",
        math_lines,
        "",
        "    The state of a parameter, created at its first step, holds its update count `step`",
        f"    and {state_doc}.",
        "    Values are computed in the gradient's dtype.",
        "",
        "    Args:",
        "      params: the parameters, or dicts of parameter groups.",
        "      lr: :math:`\\eta`, the learning rate (per group).",
        '    """',
        "",
        f"    def __init__(self, params, lr: float{lr_default}):",
        "        if not (isinstance(lr, int | float) and math.isfinite(lr) and lr >= 0):",
        '            raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")',
        '        super().__init__(params, {"lr": lr})',
        "",
        "    @torch.no_grad()",
        "    def step(self, closure=None):",
        '        """Update every parameter that has a gradient; return `closure()` if given."""',
        "        loss = None",
        "        if closure is not None:",
        "            with torch.enable_grad():",
        "                loss = closure()",
        "        for group in self.param_groups:",
        '            for w in group["params"]:',
        "                if w.grad is None:",
        "                    continue",
        "                g = w.grad",
        "                if g.is_sparse:",
        f'                    raise RuntimeError("{name} does not support sparse gradients")',
        "                state = self.state[w]",
        "                if not state:",
        '                    state["step"] = 0',
        *create,
        '                state["step"] += 1',
        '                lr = torch.as_tensor(group["lr"], dtype=g.dtype, device=g.device)',
        '                t = torch.as_tensor(float(state["step"]), dtype=g.dtype, device=g.device)',
        f"                {results} = _rule({call}, lr=lr, t=t)",
        *store,
        "                w.sub_(u)",
        "        return loss",
        "",
    ]
    text = "\n".join(parts)
    return re.sub(r"\n{3,}", "\n\n\n", text)
