"""The printed forms of an update rule read back as numbers and compared with the rule over a long
stream of random inputs (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms",
publish the formula of the rule they found; a formula must be that rule at every step).

`check_formula` parses the LaTeX of `search.export` as the mathematics it shows (`\\frac{a}{b}`
is `a / b`, `\\exp` is `exp`, `|x|^{c}` is a power, with no guard the text does not show, and the
matrix ops `orth`, `rms_row`, `rms_col`, `mat` as `search.ops` computes them), and the Markdown
table as the ops it names; it runs both and the interpreter on the same weights, gradients,
learning rates and steps `t = 1..steps`, and reports how far their updates are apart. Nothing is
evaluated as code: the text is tokenized and parsed into tuples, which are computed with jnp.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from search.export import export_latex, export_markdown
from search.interpreter import run_program
from search.mutation import rng_from_key
from search.ops import OPS, apply, col_rms, is_matrix, orthogonalized, row_rms
from search.program import Program

STEPS = 10_000
# The relative error a printed form may have. A float32 op rounds to 6e-8; the formula's pow and
# 1/sqrt differ from the interpreter's exp-log and rsqrt by a few roundings, and a state carries
# such errors on for `STEPS` steps, as a random walk (to ~1e-5 after 10,000 steps of a stable
# recurrence). A formula that is wrong anywhere on the stream (a dropped epsilon, a clip or a
# regime it leaves out, a misprinted constant) is off by 1e-3 and far more.
TOLERANCE = 1e-4
# The probe tensors: shape, scale of the gradients, scale of the weights. Gradients of 1e-8 put
# epsilons like Adam's in charge, so a formula without them fails.
TENSORS = (((8,), 1.0, 1.0), ((3, 4), 1e-3, 0.1), ((5,), 1e-8, 0.01))
LR_RANGE = (1e-4, 1.0)  # learning rates drawn log-uniformly, one per step
INPUTS = {"w", "g", "lr", "t"}

Node = tuple  # ("num", value) | ("var", name) | (function, *operands) | ("op", name, c, *operands)


class Statement(NamedTuple):
    """`target = node` (`relation` "="), or `target <- node` updating a state slot in place."""

    target: str
    relation: str
    node: Node


class Form(NamedTuple):
    """A printed form as statements; `next_name(s)` names the next value of state slot `s`."""

    statements: tuple[Statement, ...]
    states: tuple[str, ...]
    next_name: Callable[[str], str]


_TOKEN = re.compile(
    r"\s*(?:(?P<number>(?:\d+(?:\.\d+)? \\cdot )?10\^\{-?\d+\}|\d+(?:\.\d+)?)"
    r"|(?P<command>\\operatorname\{[a-z]+\}(?:_\{\\text\{[a-z]+\}\})?"
    r"|\\text\{if \}|\\text\{else\}|\\(?:begin|end)\{cases\}"
    r"|\\left\(|\\right\)|\\[A-Za-z]+|\\,|\\\\)"
    r"|(?P<name>[a-z](?:_\{\d+\})?'?)"
    r"|(?P<symbol>[-+(){}\[\],^>&]))"
)
_POWER_OF_TEN = re.compile(r"(?:(\d+(?:\.\d+)?) \\cdot )?10\^\{(-?\d+)\}")
_LATEX_STATE = re.compile(r"m|s_\{\d+\}")
_TABLE_STATE = re.compile(r"m|s\d+")
_UNARY = {r"\exp": "exp", r"\log": "log", r"\tanh": "tanh", r"\sigma": "sigmoid",
          r"\operatorname{sign}": "sign", r"\operatorname{rms}": "rms",
          r"\operatorname{mean}": "mean", r"\operatorname{size}": "size",
          r"\operatorname{orth}": "orth", r"\operatorname{rms}_{\text{row}}": "row_rms",
          r"\operatorname{rms}_{\text{col}}": "col_rms", r"\operatorname{mat}": "mat"}  # fmt: skip
_BINARY = {r"\max": "max", r"\min": "min", r"\operatorname{clip}": "clip", r"\cos": "cos"}
_FACTOR_STARTS = {"(", "{", "[", r"\frac", r"\sqrt", r"\lvert", r"\lVert", r"\langle", r"\eta",
                  r"\textstyle", r"\begin{cases}", *_UNARY, *_BINARY}  # fmt: skip


def _number(text: str) -> float:
    match = _POWER_OF_TEN.fullmatch(text)
    return float(f"{match[1] or 1}e{match[2]}") if match else float(text)


def _tokens(text: str) -> list[tuple[str, str]]:
    """`(kind, text)` tokens of a LaTeX expression; `\\left(` and `\\right)` are parentheses."""
    out, pos, text = [], 0, text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"cannot read {text[pos : pos + 24]!r}")
        kind = match.lastgroup
        token = {r"\left(": "(", r"\right)": ")"}.get(match[kind], match[kind])
        out.append((kind, token))
        pos = match.end()
    return out


class _Parser:
    """Recursive descent over the LaTeX the exporter writes: sums of products (a product is a
    juxtaposition, with or without `\\,`) of signed powers of primaries."""

    def __init__(self, tokens: list[tuple[str, str]]):
        self.tokens, self.i = tokens, 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.i] if self.i < len(self.tokens) else ("end", "")

    def take(self, expected: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token[0] == "end" or (expected is not None and token[1] != expected):
            raise ValueError(f"expected {expected or 'more'!r}, got {token[1] or 'the end'!r}")
        self.i += 1
        return token

    def expression(self) -> Node:
        node = self.term()
        while self.peek()[1] in ("+", "-"):
            node = ("add" if self.take()[1] == "+" else "sub", node, self.term())
        return node

    def term(self) -> Node:
        node = self.signed()
        while True:
            kind, text = self.peek()
            if text == r"\,":
                self.take()
            elif kind not in ("number", "name") and text not in _FACTOR_STARTS:
                return node
            node = ("mul", node, self.signed())

    def signed(self) -> Node:
        if self.peek()[1] == "-":
            self.take()
            return ("neg", self.signed())
        base = self.primary()
        if self.peek()[1] != "^":
            return base
        self.take()
        return ("pow", base, self.braced())

    def braced(self) -> Node:
        self.take("{")
        node = self.expression()
        self.take("}")
        return node

    def pair(self) -> tuple[Node, Node]:
        self.take("(")
        a = self.expression()
        self.take(",")
        b = self.expression()
        self.take(")")
        return a, b

    def zero(self) -> None:
        if self.take() != ("number", "0"):
            raise ValueError("a comparison must be with 0")

    def primary(self) -> Node:
        kind, text = self.take()
        if kind == "number":
            return ("num", _number(text))
        if kind == "name":
            return ("var", text)
        if text == r"\eta":
            return ("var", "lr")
        if text in ("(", "{"):
            node = self.expression()
            self.take(")" if text == "(" else "}")
            return node
        if text in (r"\lvert", r"\lVert"):
            node = self.expression()
            self.take(r"\rvert" if text == r"\lvert" else r"\rVert")
            return ("abs" if text == r"\lvert" else "norm", node)
        if text == r"\frac":
            return ("div", self.braced(), self.braced())
        if text == r"\sqrt":
            return ("sqrt", self.braced())
        if text == r"\max" and self.peek()[1] == r"\lvert":
            return ("max_abs", self.primary()[1])
        if text in _UNARY:
            self.take("(")
            node = self.expression()
            self.take(")")
            return (_UNARY[text], node)
        if text in _BINARY:
            return (_BINARY[text], *self.pair())
        if text == r"\textstyle":
            self.take(r"\sum")
            return ("sum", self.signed())
        if text == r"\langle":
            a = self.expression()
            self.take(",")
            b = self.expression()
            self.take(r"\rangle")
            return ("dot", a, b)
        if text == "[":
            node = self.expression()
            self.take(">")
            self.zero()
            self.take("]")
            return ("indicator", node)
        if text == r"\begin{cases}":
            a = self.expression()
            self.take("&")
            self.take(r"\text{if }")
            p = self.expression()
            self.take(">")
            self.zero()
            self.take("\\\\")
            b = self.expression()
            for expected in ("&", r"\text{else}", r"\end{cases}"):
                self.take(expected)
            return ("select", p, a, b)
        raise ValueError(f"unexpected {text!r}")


def _reads(node: Node):
    """The names `node` reads."""
    if node[0] == "var":
        yield node[1]
    elif node[0] != "num":
        for child in node[3:] if node[0] == "op" else node[1:]:
            yield from _reads(child)


def _form(statements: list[Statement], is_state, next_name, what: str) -> Form:
    """Statements checked to read only inputs, state slots and values defined before, and to
    end with `u`; the state slots they use."""
    if not statements or statements[-1] != Statement(
        "w", "<-", ("sub", ("var", "w"), ("var", "u"))
    ):
        raise ValueError(f"the {what} must end with w <- w - u")
    defined, states = set(INPUTS), set()
    for target, relation, node in statements[:-1]:
        for name in _reads(node):
            if is_state(name):
                states.add(name)
            elif name not in defined:
                raise ValueError(f"the {what} reads {name} before defining it")
        if relation == "<-" and not is_state(target):
            raise ValueError(f"the {what} updates {target} in place, which is not a state slot")
        if relation == "=" and (target in defined or is_state(target)):
            raise ValueError(f"the {what} defines {target} twice")
        if is_state(target):
            states.add(target)
        defined.add(target)
    if "u" not in defined:
        raise ValueError(f"the {what} never defines the update u")
    return Form(tuple(statements[:-1]), tuple(sorted(states)), next_name)


def parse_latex(text: str) -> Form:
    """The `aligned` block of `search.export.export_latex` as statements; ValueError if it
    cannot be read."""
    lines = text.strip().split("\n")
    if len(lines) < 3 or lines[0] != r"\begin{aligned}" or lines[-1] != r"\end{aligned}":
        raise ValueError("the LaTeX must be one aligned block")
    statements = []
    for line in "\n".join(lines[1:-1]).split(" \\\\\n"):
        target, _, rest = line.partition(" &")
        relation = "=" if rest.startswith("= ") else "<-" if rest.startswith(r"\leftarrow ") else ""
        if not relation or not re.fullmatch(r"[a-z](_\{\d+\})?'?", target):
            raise ValueError(f"cannot read the line {line[:60]!r}")
        parser = _Parser(_tokens(rest.partition(" ")[2]))
        node = parser.expression()
        if parser.peek()[0] != "end":
            raise ValueError(f"cannot read {parser.peek()[1]!r} in the line {line[:60]!r}")
        statements.append(Statement(target, relation, node))
    return _form(statements, _LATEX_STATE.fullmatch, lambda s: f"{s}'", "LaTeX")


def parse_table(markdown: str) -> Form:
    """The table of `search.export.export_markdown` (one op per row) as statements."""
    rows = [row for row in markdown.split("\n") if re.match(r"\| \d+ \|", row)]
    statements = []
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        if len(cells) != 5 or cells[2] not in OPS:
            raise ValueError(f"cannot read the row {row[:60]!r}")
        _, target, op, operands, const = cells
        args = []
        for x in filter(None, (a.strip() for a in operands.split(","))):
            args.append(
                ("num", float(x)) if re.fullmatch(r"-?[\d.]+(e[+-]\d+)?", x) else ("var", x)
            )
        relation = "<-" if _TABLE_STATE.fullmatch(target) else "="  # rows assign in order
        statements.append(Statement(target, relation, ("op", op, float(const or 0), *args)))
    statements.append(Statement("w", "<-", ("sub", ("var", "w"), ("var", "u"))))
    return _form(statements, _TABLE_STATE.fullmatch, lambda s: f"new_{s}", "table")


def _norm(x):
    return jnp.sqrt(jnp.sum(x * x))


def _cosine(a, b):
    """`<a, b> / (||a|| ||b||)`, 0 where `a` or `b` is zero (`export_markdown`'s definition)."""
    norms = _norm(a) * _norm(b)
    return jnp.where(norms > 0, jnp.sum(a * b) / jnp.where(norms > 0, norms, 1), 0)


_MATH: dict[str, Callable[..., jax.Array]] = {
    "add": jnp.add, "sub": jnp.subtract, "mul": jnp.multiply, "div": jnp.divide,
    "neg": jnp.negative, "abs": jnp.abs, "sqrt": jnp.sqrt, "exp": jnp.exp, "log": jnp.log,
    "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "sign": jnp.sign, "max": jnp.maximum,
    "min": jnp.minimum, "clip": lambda x, c: jnp.clip(x, -jnp.abs(c), jnp.abs(c)),
    "rms": lambda x: jnp.sqrt(jnp.mean(x * x)), "mean": jnp.mean,
    "size": lambda x: jnp.asarray(x.size, x.dtype), "sum": jnp.sum,
    "max_abs": lambda x: jnp.max(jnp.abs(x)), "dot": lambda a, b: jnp.sum(a * b), "norm": _norm,
    "cos": _cosine,
    "indicator": lambda x: (x > 0).astype(x.dtype),
    "select": lambda p, a, b: jnp.where(p > 0, a, b), "orth": orthogonalized,
    "row_rms": row_rms, "col_rms": col_rms, "mat": is_matrix,
}  # fmt: skip


def _evaluate(node: Node, env: dict[str, jax.Array]) -> jax.Array:
    """The value of `node`: the mathematics it writes, in float32 (`log(1 + x)` as `log1p x`,
    `x^2` and `x^3` as products)."""
    kind = node[0]
    if kind == "num":
        return jnp.float32(node[1])
    if kind == "var":
        return env[node[1]]
    if kind == "op":
        _, name, c, *args = node
        return apply(OPS[name], [_evaluate(a, env) for a in args], np.float32(c))
    if kind == "log" and node[1][0] == "add" and ("num", 1.0) in node[1][1:]:
        a, b = node[1][1:]
        return jnp.log1p(_evaluate(b if a == ("num", 1.0) else a, env))
    if kind == "pow" and node[2] in (("num", 2.0), ("num", 3.0)):
        x = _evaluate(node[1], env)
        return x * x if node[2][1] == 2 else x * x * x
    if kind == "pow":
        return jnp.power(_evaluate(node[1], env), _evaluate(node[2], env))
    if kind not in _MATH:
        raise ValueError(f"no value for {kind!r}")
    return _MATH[kind](*(_evaluate(a, env) for a in node[1:]))


def run_form(form: Form, w, g, lr, t, state: dict[str, jax.Array]):
    """`(u, next state)` of a printed form (`parse_latex`, `parse_table`) on one tensor `w` with
    gradient `g`, learning rate `lr`, step `t` and state slots `state` (by name)."""
    env = {"w": w, "g": g, "lr": lr, "t": t, **state}
    for target, _, node in form.statements:
        env[target] = _evaluate(node, env)
    following = {s: jnp.broadcast_to(env.get(form.next_name(s), env[s]), g.shape) for s in state}
    return jnp.broadcast_to(env["u"], g.shape), following


def probe_stream(key: jax.Array, steps: int) -> dict[str, np.ndarray]:
    """Weights and gradients of the `TENSORS` (normal, at their scales; tuples of `[steps, ...]`),
    a learning rate per step (log-uniform over `LR_RANGE`) and `t = 1..steps`, float32, drawn by
    a NumPy Generator seeded from `key` (`search.mutation.rng_from_key`)."""
    rng = rng_from_key(key)
    ws = tuple(np.float32(scale_w) * rng.standard_normal((steps, *shape), np.float32)
               for shape, _, scale_w in TENSORS)  # fmt: skip
    gs = tuple(np.float32(scale_g) * rng.standard_normal((steps, *shape), np.float32)
               for shape, scale_g, _ in TENSORS)  # fmt: skip
    lr = 10.0 ** rng.uniform(*np.log10(LR_RANGE), steps)
    t = np.arange(1, steps + 1, dtype=np.float32)
    return {"w": ws, "g": gs, "lr": lr.astype(np.float32), "t": t}


def _updates(
    program: Program, forms: dict[str, Form], key: jax.Array, steps: int
) -> dict[str, list[np.ndarray]]:
    """The updates `[steps, ...]` per tensor of the program (key "program") and of each form on
    `probe_stream(key, steps)`."""
    zeros = [jnp.zeros(shape) for shape, _, _ in TENSORS]
    init = (
        [tuple(z for _ in range(program.num_state)) for z in zeros],
        {name: [{s: z for s in form.states} for z in zeros] for name, form in forms.items()},
    )

    def body(carry, x):
        slots, states = carry
        out = {name: [] for name in ("program", *forms)}
        new_slots, new_states = [], {name: [] for name in forms}
        for i in range(len(TENSORS)):
            w, g = x["w"][i], x["g"][i]
            u, following = run_program(program, w, g, x["lr"], x["t"], slots[i])
            out["program"].append(jnp.broadcast_to(u, g.shape))
            new_slots.append(following)
            for name, form in forms.items():
                u, following = run_form(form, w, g, x["lr"], x["t"], states[name][i])
                out[name].append(u)
                new_states[name].append(following)
        return (new_slots, new_states), out

    stream = probe_stream(key, steps)
    _, out = jax.jit(lambda stream: jax.lax.scan(body, init, stream))(stream)
    return {name: [np.asarray(u) for u in us] for name, us in out.items()}


def relative_error(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Per step, `max |got - want| / max |want|` over a tensor `[steps, ...]` (NaN and inf count
    as equal to themselves, else as an infinite error; 0 when both are all zero)."""
    got = np.asarray(got, np.float64).reshape(len(got), -1)
    want = np.asarray(want, np.float64).reshape(len(want), -1)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.where(same, 0.0, np.abs(got - want))
        diff = np.where(np.isnan(diff), np.inf, diff).max(axis=1)
        scale = np.where(np.isfinite(want), np.abs(want), 0.0).max(axis=1)
        return np.where(diff == 0, 0.0, diff / scale)


class FormulaReport(NamedTuple):
    """How far each printed form's updates are from the rule's over `steps` steps.

    Attributes:
      errors: printed form -> its largest `relative_error` over the steps and tensors.
      first_failure: printed form -> the first step `t` whose error exceeds `tolerance` (0: none).
      steps: the steps compared.
      tolerance: the error a form may have.
    """

    errors: dict[str, float]
    first_failure: dict[str, int]
    steps: int
    tolerance: float

    @property
    def ok(self) -> bool:
        return all(error <= self.tolerance for error in self.errors.values())

    def summary(self) -> str:
        """One line: the worst form, its error and where it starts."""
        form = max(self.errors, key=self.errors.get)
        where = f" from step {self.first_failure[form]}" if self.first_failure[form] else ""
        return (
            f"the {form}'s updates are off by a relative {self.errors[form]:.3g}{where} "
            f"(tolerance {self.tolerance:g}, {self.steps} steps)"
        )


def check_formula(
    program: Program,
    *,
    steps: int = STEPS,
    key: jax.Array | None = None,
    latex: str | None = None,
    markdown: str | None = None,
    tolerance: float = TOLERANCE,
) -> FormulaReport:
    """Compare the printed formula of `program` with the program over `steps` steps.

    The LaTeX (`latex`, default `export_latex(program)`), the LaTeX block of the Markdown when it
    differs from it, and the Markdown table (`markdown`, default `export_markdown(program)`) are
    each run on `probe_stream(key, steps)`, as is the program (`search.interpreter`); the error of
    a form at step `t` is the largest over the `TENSORS` of `relative_error`.

    Returns:
      A `FormulaReport`; `report.ok` when every form is within `tolerance`.

    Raises:
      ValueError: a printed form cannot be read (it is not what `search.export` writes).
    """
    latex = export_latex(program) if latex is None else latex
    markdown = export_markdown(program) if markdown is None else markdown
    forms = {"LaTeX": parse_latex(latex), "Markdown table": parse_table(markdown)}
    blocks = re.findall(r"^\$\$\n(.*?)\n\$\$$", markdown, re.S | re.M)
    if len(blocks) != 1:
        raise ValueError("the Markdown must hold one $$ block")
    if blocks[0].strip() != latex.strip():
        forms["Markdown formula"] = parse_latex(blocks[0])
    updates = _updates(program, forms, jax.random.key(0) if key is None else key, steps)
    errors, first = {}, {}
    for name in forms:
        per_step = np.max(
            [
                relative_error(u, want)
                for u, want in zip(updates[name], updates["program"], strict=True)
            ],
            axis=0,
        )
        errors[name] = float(per_step.max())
        bad = np.flatnonzero(per_step > tolerance)
        first[name] = int(bad[0]) + 1 if bad.size else 0
    return FormulaReport(errors, first, steps, tolerance)
