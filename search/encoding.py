"""Programs as fixed-shape integer/float arrays, so a whole population runs in one jitted call
(Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", evaluate many programs).

Encoding a program drops its dead code, renames every value once (SSA form, so writes go to fixed
rows and no instruction overwrites another's result) and splits it in two parts:

* the *prologue*: instructions whose operands are all scalar inputs or prologue results (such as
  Adam's `1 - b1^t`); they run once per update, on scalars;
* the *body*: every other instruction, in program order, at increasing slots (`encode_population`
  spreads them so that related programs share slots, see `align`); it runs on the parameters.

Body instructions are also rewritten onto `BODY_OPS`, the ops without a constant and without a
cheaper equivalent (`ALIASES`: `add_c(x; c)` becomes `add(x, c)` with `c` read from the scalar
file, `square(x)` becomes `mul(x, x)`, ...), so the body interpreter has fewer ops to run.

Layout of one `EncodedProgram` (a population stacks them on a leading axis `[P]`), with `L` the
padded length (`max_len`) and `K` the number of state slots:

* `prologue_ops [L]`, `body_ops [L]` int32: op ids of `search.ops` (0: padding no-op; body ids
  are those of `BODY_OPS`).
* `prologue_args [L, 3]`, `body_args [L, 3]` int32: operand addresses (unused operands 0).
* `prologue_consts [L]`, `body_consts [L]` float32: the instructions' constants.
* `outputs [1 + K]` int32: tensor-file rows of the update and of the new state slots.

Values live in two files. The scalar file (`scalar_file_size(L) = 7 + 2 L` rows) holds `lr, t,
one, half, two, eps, zero`, then `body_consts` (row `7 + j`), then prologue result `j` (row
`7 + L + j`). The tensor file holds `w, g, s1..sK`, then the result of body slot `j` at row
`2 + K + j`; a scalar computed in the body (e.g. `norm(g)`) sits there broadcast. Prologue
operands address the scalar file; a body operand `a` reads scalar row `a` when
`a < scalar_file_size(L)`, else tensor row `a - scalar_file_size(L)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from search.ops import NUM_OP_IDS, OPS, Op
from search.program import CONSTANTS, INPUTS, NUM_FIXED, Program

MAX_ARGS = 3
SCALAR_INPUTS = ("lr", "t", *(name for name, _ in CONSTANTS), "zero")
NUM_SCALAR_INPUTS = len(SCALAR_INPUTS)
NUM_TENSOR_INPUTS = 2  # w, g
# op: (body op, its operands: an operand index, "c" for the constant, or a scalar input's name)
ALIASES = {
    "const": ("add", ("c", "zero")),
    "copy": ("add", (0, "zero")),
    "neg": ("sub", ("zero", 0)),
    "one_minus": ("sub", ("one", 0)),
    "add_c": ("add", (0, "c")),
    "scale_c": ("mul", ("c", 0)),
    "square": ("mul", (0, 0)),
    "scale": ("mul", (0, 1)),
    "reciprocal": ("div", ("one", 0)),
    "relu": ("max", (0, "zero")),
    "pow_c": ("power", (0, "c")),
    "clip_c": ("clip", (0, "c")),
    "interp_c": ("interpolate", (0, 1, "c")),
}
BODY_OPS: tuple[Op, ...] = tuple(op for name, op in OPS.items() if name not in ALIASES)


class EncodedProgram(NamedTuple):
    """A program (or, with a leading `[P]` axis, a population) as arrays; see the module doc."""

    prologue_ops: np.ndarray
    prologue_args: np.ndarray
    prologue_consts: np.ndarray
    body_ops: np.ndarray
    body_args: np.ndarray
    body_consts: np.ndarray
    outputs: np.ndarray

    @property
    def max_len(self) -> int:
        return self.body_ops.shape[-1]

    @property
    def num_state(self) -> int:
        return self.outputs.shape[-1] - 1


def scalar_file_size(max_len: int) -> int:
    """Rows of the scalar file: the scalar inputs, the body constants, the prologue results."""
    return NUM_SCALAR_INPUTS + 2 * max_len


def tensor_file_size(max_len: int, num_state: int) -> int:
    """Rows of the tensor file: `w, g`, the state slots, one per body instruction."""
    return NUM_TENSOR_INPUTS + num_state + max_len


def split(program: Program) -> tuple[list, list, dict[int, tuple[str, int]]]:
    """The live instructions as (prologue, body) lists of `(op, operand refs, const)` in SSA form,
    and where each register's final value lives.

    A ref is `("s", scalar input)`, `("p", prologue index)`, `("t", input tensor row)` or
    `("b", body index)`.
    """
    assert [n for n, _ in INPUTS] == ["w", "g", "lr", "t"], "the layout assumes these inputs"
    where: dict[int, tuple[str, int]] = {0: ("t", 0), 1: ("t", 1)}  # w, g
    for r in range(2, NUM_FIXED):  # lr, t, constants
        where[r] = ("s", r - 2)
    for i in range(program.num_state):
        where[NUM_FIXED + i] = ("t", NUM_TENSOR_INPUTS + i)
    prologue, body = [], []
    for inst in program.live_instructions():
        refs = [where[a] for a in inst.args]
        if all(kind in "sp" for kind, _ in refs):
            where[inst.out] = ("p", len(prologue))
            prologue.append((inst.op, refs, inst.const))
        else:
            where[inst.out] = ("b", len(body))
            body.append((inst.op, refs, inst.const))
    return prologue, body, where


def encoded_length(program: Program) -> int:
    """The smallest `max_len` that can encode `program` (its longer part after dead code)."""
    prologue, body, _ = split(program)
    return max(len(prologue), len(body))


def encode(
    program: Program,
    max_len: int,
    num_state: int | None = None,
    body_slots: Sequence[int] | None = None,
) -> EncodedProgram:
    """`program` as arrays padded to `max_len` instructions per part and `num_state` slots.

    Extra state slots are never written (they stay zero). Body instruction `j` goes to slot
    `body_slots[j]` (increasing; default `j`), no-ops fill the rest. Raises ValueError when the
    program does not fit.
    """
    k = program.num_state if num_state is None else num_state
    if k < program.num_state:
        raise ValueError(f"program has {program.num_state} state slots; encoding has {k}")
    prologue, body, where = split(program)
    if max(len(prologue), len(body)) > max_len:
        raise ValueError(
            f"program needs {len(prologue)} prologue and {len(body)} body instructions after "
            f"dead-code removal; max_len is {max_len}"
        )
    slots = list(range(len(body))) if body_slots is None else [int(j) for j in body_slots]
    if (
        len(slots) != len(body)
        or any(b <= a for a, b in zip(slots, slots[1:], strict=False))
        or (slots and not 0 <= slots[0] <= slots[-1] < max_len)
    ):
        raise ValueError(f"body_slots must be {len(body)} increasing slots below {max_len}")
    n_scalar = scalar_file_size(max_len)

    def scalar_row(ref):
        kind, i = ref
        return NUM_SCALAR_INPUTS + max_len + i if kind == "p" else i

    def tensor_row(ref):
        kind, i = ref
        return NUM_TENSOR_INPUTS + k + slots[i] if kind == "b" else i

    def body_address(ref):
        return scalar_row(ref) if ref[0] in "sp" else n_scalar + tensor_row(ref)

    arrays = {}
    for part in ("prologue", "body"):
        arrays[f"{part}_ops"] = np.zeros(max_len, np.int32)
        arrays[f"{part}_args"] = np.zeros((max_len, MAX_ARGS), np.int32)
        arrays[f"{part}_consts"] = np.zeros(max_len, np.float32)
    for j, (op, refs, const) in enumerate(prologue):
        arrays["prologue_ops"][j] = OPS[op].id
        arrays["prologue_args"][j, : len(refs)] = [scalar_row(ref) for ref in refs]
        arrays["prologue_consts"][j] = const
    for j, (op, refs, const) in zip(slots, body, strict=True):
        if op in ALIASES:
            op, template = ALIASES[op]
            const_ref = ("s", NUM_SCALAR_INPUTS + j)  # body constant j's row
            refs = [_alias_operand(x, refs, const_ref) for x in template]
        arrays["body_ops"][j] = OPS[op].id
        arrays["body_args"][j, : len(refs)] = [body_address(ref) for ref in refs]
        arrays["body_consts"][j] = const
    outputs = [program.update, *program.new_state]
    rows = [tensor_row(where[r]) for r in outputs]
    rows += [NUM_TENSOR_INPUTS + i for i in range(program.num_state, k)]
    return EncodedProgram(**arrays, outputs=np.asarray(rows, np.int32))


def align(bodies: Sequence[Sequence[int]], max_len: int) -> list[list[int]]:
    """Slots for each body (a sequence of op ids) so that few distinct ops share a slot.

    Greedy: each body in turn takes the increasing slots that add the fewest new (slot, op)
    pairs to those of the bodies before it (a dynamic program over instructions x slots; ties go
    to the earliest slots).
    """
    present = np.zeros((max_len, NUM_OP_IDS), bool)
    out = []
    for ops in bodies:
        m = len(ops)
        cost = ~present[:, list(ops)].T  # [m, max_len]: 1 where the op is new at that slot
        best = np.zeros((m + 1, max_len + 1))  # best[i, j]: first i ops within the first j slots
        best[1:, 0] = np.inf
        for i in range(1, m + 1):
            placed = np.full(max_len + 1, np.inf)
            placed[1:] = best[i - 1, :-1] + cost[i - 1]
            best[i] = np.minimum.accumulate(placed)
        slots, bound = [], max_len
        for i in range(m, 0, -1):  # the first j reaching the optimum placed op i - 1 at j - 1
            j = int(np.argmax(best[i, : bound + 1] == best[i, bound]))
            slots.append(j - 1)
            bound = j - 1
        slots.reverse()
        present[slots, list(ops)] = True
        out.append(slots)
    return out


def encode_population(
    programs: Sequence[Program],
    max_len: int | None = None,
    num_state: int | None = None,
    *,
    aligned: bool = True,
) -> EncodedProgram:
    """Programs stacked on a leading axis `[P]`.

    Defaults: `max_len` the longest encoded program rounded up to a multiple of 4, `num_state`
    the most state slots. Pass both to keep shapes (and so compilations) fixed across calls.
    With `aligned`, body instructions are spread over the slots (`align`) so that fewer
    distinct ops share a slot, which the population interpreter runs faster.
    """
    if not programs:
        raise ValueError("encode_population needs at least one program")
    if max_len is None:
        longest = max(encoded_length(p) for p in programs)
        max_len = max(4, -(-longest // 4) * 4)
    if num_state is None:
        num_state = max(p.num_state for p in programs)
    slots = [None] * len(programs)
    if aligned:
        bodies = [[OPS[_body_op(op)].id for op, _, _ in split(p)[1]] for p in programs]
        if max(map(len, bodies)) <= max_len:
            slots = align(bodies, max_len)
    encoded = [encode(p, max_len, num_state, s) for p, s in zip(programs, slots, strict=True)]
    return EncodedProgram(*(np.stack(xs) for xs in zip(*encoded, strict=True)))


def _alias_operand(x: int | str, refs: list, const_ref: tuple[str, int]) -> tuple[str, int]:
    """The ref of an `ALIASES` operand: an original operand, the constant or a scalar input."""
    if isinstance(x, int):
        return refs[x]
    return const_ref if x == "c" else ("s", SCALAR_INPUTS.index(x))


def _body_op(op: str) -> str:
    """The op a body instruction runs as (after `ALIASES`)."""
    return ALIASES[op][0] if op in ALIASES else op
