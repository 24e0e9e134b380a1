"""The op table of symbolic update rules: typed, total jnp functions (Chen et al. 2023, "Symbolic
Discovery of Optimization Algorithms", whose search space holds ~45 NumPy-like functions).

Every op maps its operands and the instruction's constant `c` to a value and is safe on any finite
input: square roots and logarithms take `|x|` (logarithms and inverse roots add `TINY`), divisors
smaller than `TINY` in magnitude become `+-TINY`, exponentials and powers stay below
`exp(MAX_EXP)`. Values are scalars or tensors (one parameter tensor); an operand of kind `ANY`
takes either, and an op whose result is `SAME` returns a tensor when any operand is one.
Reductions (`norm`, `dot`, ...) reduce over the one tensor the rule is applied to, so a rule is
layer-wise, like the paper's. The matrix ops (`MATRIX_OPS`: Muon's orthogonalisation, Adafactor's
row and column RMS, and `is_matrix`, which lets a rule branch on the tensor's rank as Muon does)
see that tensor in its own shape, as a matrix (`matrix_shape`).

Op ids are stable: they are the op codes of the fixed-shape encoding (`search.encoding`), where 0
is the padding no-op, so a new op takes the next free id and an id is never reused. Rule files
store op names, never ids.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from baselines.muon import NS_COEFFS, newton_schulz

SCALAR, TENSOR, ANY, SAME = "scalar", "tensor", "any", "same"
TINY = 1e-12
MAX_EXP = 80.0
NOP_ID = 0
NS_STEPS, NS_EPS = 5, 1e-7  # Muon's Newton-Schulz iterations and the epsilon of its normalization


@dataclasses.dataclass(frozen=True)
class Op:
    """One op: `fn(*operands, c)` (reductions: `fn(*operands, c, reducer)`, see `apply`) with
    operand kinds `operands` and result kind `result`."""

    name: str
    id: int
    operands: tuple[str, ...]
    result: str
    fn: Callable[..., jax.Array]
    uses_const: bool
    doc: str
    commutative: bool = False  # fn(a, b) == fn(b, a) bit for bit, so operands may be swapped

    @property
    def arity(self) -> int:
        return len(self.operands)

    @property
    def reduces(self) -> bool:
        """Whether `fn` reads the whole tensor (and so takes a `Reducer`)."""
        return self.name in _REDUCTIONS or self.name in MATRIX_OPS


@dataclasses.dataclass(frozen=True)
class Reducer:
    """What a reduction sees as "the tensor": `sum(x)`, `max(x)` and `size(x)`, each
    broadcastable against `x`, and `per_tensor(f, x)`, `f` applied to each tensor in its own
    shape. `WHOLE` takes the whole array as it is; the population interpreter uses one that
    takes each parameter tensor's segment of a flat vector."""

    sum: Callable[[jax.Array], jax.Array]
    max: Callable[[jax.Array], jax.Array]
    size: Callable[[jax.Array], jax.Array]
    per_tensor: Callable[[Callable[[jax.Array], jax.Array], jax.Array], jax.Array]


WHOLE = Reducer(jnp.sum, jnp.max, lambda x: jnp.asarray(x.size, x.dtype), lambda f, x: f(x))


def _safe_divisor(x):
    """`x` with magnitudes below `TINY` replaced by `+-TINY` (zero becomes `+TINY`)."""
    return jnp.where(jnp.abs(x) < TINY, jnp.where(x < 0, -TINY, TINY), x)


def _log_abs(x):
    return jnp.log(jnp.abs(x) + TINY)


def _exp(x):
    return jnp.exp(jnp.minimum(x, MAX_EXP))


def _pow_abs(x, p):
    """`max(|x|, TINY)^p` as `exp(p log max(|x|, TINY))`, which vectorizes (XLA's `pow` on CPU
    does not), the exponent clipped to `[-MAX_EXP, MAX_EXP]`."""
    return jnp.exp(jnp.clip(p * jnp.log(jnp.maximum(jnp.abs(x), TINY)), -MAX_EXP, MAX_EXP))


def _clip(x, bound):
    bound = jnp.abs(bound)
    return jnp.clip(x, -bound, bound)


def _norm(x, r: Reducer):
    return jnp.sqrt(r.sum(x * x))


def _rms(x, r: Reducer):
    return jnp.sqrt(r.sum(x * x) / r.size(x))


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """A tensor seen as a matrix: `(product of the leading axes, last axis)`, so a vector of `n`
    entries is `1 x n`, a scalar `1 x 1` and a convolution kernel HWIO `HWI x O` (as Muon sees
    it)."""
    return (math.prod(shape[:-1]), shape[-1]) if shape else (1, 1)


def orthogonalized(x: jax.Array) -> jax.Array:
    """Muon's update direction (Jordan et al. 2024) for `x` seen as an `r x n` matrix:
    `sqrt(max(1, n / r)) NS_5(x)`, `NS_5` the quintic Newton-Schulz iteration of
    `baselines.muon.newton_schulz` (about `U V^T` for `x = U S V^T`). A vector or scalar (one
    row) gets its exact orthogonal factor with that scale, `x / (rms(x) + TINY)`."""
    if x.ndim < 2:
        return x / (_rms(x, WHOLE) + TINY)
    rows, cols = matrix_shape(x.shape)
    o = newton_schulz(x.reshape(rows, cols), NS_COEFFS, NS_STEPS, NS_EPS)
    o = o * math.sqrt(max(1.0, cols / rows))
    return o.reshape(x.shape)


def row_rms(x: jax.Array) -> jax.Array:
    """The RMS of each row of `x` seen as a matrix (`matrix_shape`), broadcast back to its
    shape: Adafactor's row statistic (Shazeer & Stern 2018); a vector's whole RMS, a scalar's
    `|x|`."""
    m = x.reshape(matrix_shape(x.shape))
    return jnp.broadcast_to(jnp.sqrt(jnp.mean(m * m, axis=1, keepdims=True)), m.shape).reshape(
        x.shape
    )


def col_rms(x: jax.Array) -> jax.Array:
    """The RMS of each column of `x` seen as a matrix (`matrix_shape`), broadcast back to its
    shape: Adafactor's column statistic; a vector's or scalar's `|x|`."""
    m = x.reshape(matrix_shape(x.shape))
    return jnp.broadcast_to(jnp.sqrt(jnp.mean(m * m, axis=0, keepdims=True)), m.shape).reshape(
        x.shape
    )


def is_matrix(x: jax.Array) -> jax.Array:
    """1 over a tensor of two or more axes (one that Muon orthogonalises, `matrix_shape`), 0 over
    a vector or a scalar: with `select`, a rule that treats matrices and the other tensors apart
    (Muon for the matrices, Adam for the biases)."""
    return jnp.full_like(x, 1.0 if x.ndim >= 2 else 0.0)


def _interp(a, b, t):
    """`(1 - t) a + t b`, the EMA form `optax.tree.update_moment` uses."""
    return (1 - t) * a + t * b


_U, _B, _T = (ANY,), (ANY, ANY), (ANY, ANY, ANY)
_COMMUTATIVE = ("add", "mul", "max", "min", "dot", "cosine")
_REDUCTIONS = ("clip_by_norm", "normalize", "norm", "rms", "mean", "sum", "max_abs", "size", "dot",
               "cosine")  # fmt: skip
MATRIX_OPS = ("newton_schulz", "row_rms", "col_rms", "is_matrix")

# name: (id, operand kinds, result kind, uses the constant, fn(*operands, c[, reducer]), doc)
_TABLE = {
    "const": (1, (), SCALAR, True, lambda c: jnp.asarray(c, jnp.float32), "c"),
    "copy": (2, _U, SAME, False, lambda x, c: x, "x"),
    "neg": (3, _U, SAME, False, lambda x, c: -x, "-x"),
    "abs": (4, _U, SAME, False, lambda x, c: jnp.abs(x), "|x|"),
    "sign": (5, _U, SAME, False, lambda x, c: jnp.sign(x), "sign(x)"),
    "square": (6, _U, SAME, False, lambda x, c: x * x, "x^2"),
    "cube": (7, _U, SAME, False, lambda x, c: x * x * x, "x^3"),
    "sqrt_abs": (8, _U, SAME, False, lambda x, c: jnp.sqrt(jnp.abs(x)), "sqrt(|x|)"),
    "rsqrt_abs": (9, _U, SAME, False, lambda x, c: jax.lax.rsqrt(jnp.abs(x) + TINY), "1/sqrt|x|"),
    "reciprocal": (10, _U, SAME, False, lambda x, c: 1 / _safe_divisor(x), "1/x"),
    "exp": (11, _U, SAME, False, lambda x, c: _exp(x), "exp(min(x, MAX_EXP))"),
    "log_abs": (12, _U, SAME, False, lambda x, c: _log_abs(x), "log(|x| + TINY)"),
    "log1p_abs": (13, _U, SAME, False, lambda x, c: jnp.log1p(jnp.abs(x)), "log(1 + |x|)"),
    "tanh": (14, _U, SAME, False, lambda x, c: jnp.tanh(x), "tanh(x)"),
    "sigmoid": (15, _U, SAME, False, lambda x, c: jax.nn.sigmoid(x), "1/(1 + exp(-x))"),
    "relu": (16, _U, SAME, False, lambda x, c: jnp.maximum(x, 0), "max(x, 0)"),
    "softsign": (17, _U, SAME, False, lambda x, c: x / (1 + jnp.abs(x)), "x/(1 + |x|)"),
    "one_minus": (18, _U, SAME, False, lambda x, c: 1 - x, "1 - x"),
    "add_c": (19, _U, SAME, True, lambda x, c: x + c, "x + c"),
    "scale_c": (20, _U, SAME, True, lambda x, c: c * x, "c x"),
    "pow_c": (21, _U, SAME, True, lambda x, c: _pow_abs(x, c), "max(|x|, TINY)^c"),
    "clip_c": (22, _U, SAME, True, lambda x, c: _clip(x, c), "clip(x, -|c|, |c|)"),
    "add": (23, _B, SAME, False, lambda a, b, c: a + b, "a + b"),
    "sub": (24, _B, SAME, False, lambda a, b, c: a - b, "a - b"),
    "mul": (25, _B, SAME, False, lambda a, b, c: a * b, "a b"),
    "div": (26, _B, SAME, False, lambda a, b, c: a / _safe_divisor(b), "a / b"),
    "max": (27, _B, SAME, False, lambda a, b, c: jnp.maximum(a, b), "max(a, b)"),
    "min": (28, _B, SAME, False, lambda a, b, c: jnp.minimum(a, b), "min(a, b)"),
    "power": (29, _B, SAME, False, lambda a, b, c: _pow_abs(a, b), "max(|a|, TINY)^b"),
    "clip": (30, _B, SAME, False, lambda a, b, c: _clip(a, b), "clip(a, -|b|, |b|)"),
    "interp_c": (31, _B, SAME, True, lambda a, b, c: _interp(a, b, c), "(1 - c) a + c b"),
    "interpolate": (32, _T, SAME, False, lambda a, b, t, c: _interp(a, b, t), "(1 - t) a + t b"),
    "select": (33, _T, SAME, False, lambda p, a, b, c: jnp.where(p > 0, a, b), "a if p > 0 else b"),
    "is_positive": (34, _U, SAME, False, lambda x, c: (x > 0).astype(x.dtype), "1 if x > 0 else 0"),
    "scale": (35, (SCALAR, TENSOR), TENSOR, False, lambda s, x, c: s * x, "s x"),
    "clip_by_norm": (
        36, (TENSOR, SCALAR), TENSOR, False,
        lambda x, s, c, r: x * jnp.minimum(1, jnp.abs(s) / _safe_divisor(_norm(x, r))),
        "x min(1, |s| / ||x||)",
    ),
    "normalize": (37, (TENSOR,), TENSOR, False, lambda x, c, r: x / (_rms(x, r) + TINY), "x/rms"),
    "norm": (38, (TENSOR,), SCALAR, False, lambda x, c, r: _norm(x, r), "||x||"),
    "rms": (39, (TENSOR,), SCALAR, False, lambda x, c, r: _rms(x, r), "sqrt(mean(x^2))"),
    "mean": (40, (TENSOR,), SCALAR, False, lambda x, c, r: r.sum(x) / r.size(x), "mean(x)"),
    "sum": (41, (TENSOR,), SCALAR, False, lambda x, c, r: r.sum(x), "sum(x)"),
    "max_abs": (42, (TENSOR,), SCALAR, False, lambda x, c, r: r.max(jnp.abs(x)), "max |x|"),
    "size": (43, (TENSOR,), SCALAR, False, lambda x, c, r: r.size(x), "number of elements"),
    "dot": (44, (TENSOR, TENSOR), SCALAR, False, lambda a, b, c, r: r.sum(a * b), "<a, b>"),
    "cosine": (
        45, (TENSOR, TENSOR), SCALAR, False,
        lambda a, b, c, r: r.sum(a * b) / _safe_divisor(_norm(a, r) * _norm(b, r)),
        "<a, b> / (||a|| ||b||)",
    ),
    "newton_schulz": (
        46, (TENSOR,), TENSOR, False, lambda x, c, r: r.per_tensor(orthogonalized, x),
        "sqrt(max(1, n/r)) NS_5(x) of x as an r x n matrix; x/rms(x) for a vector or scalar",
    ),
    "row_rms": (
        47, (TENSOR,), TENSOR, False, lambda x, c, r: r.per_tensor(row_rms, x),
        "rms of each row of x as a matrix; rms(x) for a vector, |x| for a scalar",
    ),
    "col_rms": (
        48, (TENSOR,), TENSOR, False, lambda x, c, r: r.per_tensor(col_rms, x),
        "rms of each column of x as a matrix; |x| for a vector or scalar",
    ),
    "is_matrix": (
        49, (TENSOR,), TENSOR, False, lambda x, c, r: r.per_tensor(is_matrix, x),
        "1 over a tensor of two or more axes, 0 over a vector or scalar",
    ),
}  # fmt: skip

OPS: dict[str, Op] = {
    name: Op(name, op_id, operands, result, fn, uses_const, doc, name in _COMMUTATIVE)
    for name, (op_id, operands, result, uses_const, fn, doc) in _TABLE.items()
}
OPS_BY_ID: dict[int, Op] = {op.id: op for op in OPS.values()}
NUM_OP_IDS = max(OPS_BY_ID) + 1
assert len(OPS_BY_ID) == len(OPS) and NOP_ID not in OPS_BY_ID, "op ids must be unique and > 0"


def get_op(name: str) -> Op:
    """The op `name`; an unknown name raises a ValueError listing the valid ones."""
    if name not in OPS:
        raise ValueError(f"unknown op {name!r:.40}; valid ops: {', '.join(OPS)}")
    return OPS[name]


def result_kind(op: Op, kinds: tuple[str, ...]) -> str:
    """The kind of `op` applied to operands of `kinds`; raises ValueError on a mismatch."""
    if len(kinds) != op.arity:
        raise ValueError(f"op {op.name!r} takes {op.arity} operands, got {len(kinds)}")
    for i, (want, got) in enumerate(zip(op.operands, kinds, strict=True)):
        if want != ANY and want != got:
            raise ValueError(f"op {op.name!r} operand {i} must be a {want}, got a {got}")
    if op.result == SAME:
        return TENSOR if TENSOR in kinds else SCALAR
    return op.result


def apply(op: Op, operands, c, reducer: Reducer = WHOLE) -> jax.Array:
    """`op` on `operands` (scalars and tensors of one shape) with constant `c`; reductions
    reduce as `reducer` says."""
    return op.fn(*operands, c, reducer) if op.reduces else op.fn(*operands, c)
