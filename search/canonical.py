"""One canonical form per update rule, structural hashes and behaviour fingerprints, so a search
meets each rule once (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", skip
programs whose hash was already evaluated).

`canonicalize` rebuilds a program as an expression graph: dead code and useless state slots go,
equal subexpressions are computed once, constant operands are folded, commutative operands are
sorted and a few identities are applied; then the graph is written back in one deterministic
order, with registers numbered in order of first write. Every rewrite is exact in float32 (the
same bits for every input, up to the sign of zero), so the canonical program computes the same
updates as the original.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from search.encoding import encode_population, encoded_length
from search.interpreter import ProgramState, encoded_transform, slot_ops
from search.ops import OPS, SCALAR, TENSOR, apply, result_kind
from search.program import (
    CONSTANTS,
    INPUTS,
    MAX_CONST,
    MAX_REGISTERS,
    MAX_STATE,
    NUM_FIXED,
    Instruction,
    Program,
)

INPUT = "input"  # the graph's op of the inputs w, g, lr, t and the state slots
# Two learning rates, so a rule that reads `lr` never looks like its twin with a constant.
FINGERPRINT_LEARNING_RATES = (1e-2, 3e-3)
PROBE_TILE = 64  # programs per compiled call of `probe_updates`
PROBE_CHUNK = 8  # steps per compiled call of `probe_updates`
NAN_TOKEN, POS_INF_TOKEN, NEG_INF_TOKEN = 10_000, 10_001, 10_002  # exponents of non-finite values


class _Node(NamedTuple):
    """An op on other nodes; a constant (op `const`, value `const`); or an input (op `INPUT`,
    its register in `const`)."""

    op: str
    args: tuple[int, ...]
    const: float
    kind: str


def _f32(x: float) -> float:
    """`x` rounded to float32, with -0.0 as 0.0 (and `MAX_CONST` for the float32 above it)."""
    value = float(np.float32(x)) + 0.0
    return value if abs(value) <= MAX_CONST else float(np.copysign(MAX_CONST, value))


FIXED_CONSTANTS = {_f32(value): NUM_FIXED - len(CONSTANTS) + i
                   for i, (_, value) in enumerate(CONSTANTS)}  # fmt: skip


class _Graph:
    """Hash-consed expression nodes; `make` folds constants and applies the identities."""

    def __init__(self):
        self.nodes: list[_Node] = []
        self._index: dict[tuple, int] = {}

    def add(self, node: _Node) -> int:
        key = node[:3]
        if key not in self._index:
            self._index[key] = len(self.nodes)
            self.nodes.append(node)
        return self._index[key]

    def constant(self, value: float) -> int:
        return self.add(_Node("const", (), _f32(value), SCALAR))

    def value(self, i: int) -> float | None:
        """The value of node `i` when it is a constant, else None."""
        node = self.nodes[i]
        return node.const if node.op == "const" else None

    def make(self, op: str, args: tuple[int, ...], c: float = 0.0) -> int:
        """The node of `op(*args; c)`, folded and rewritten."""
        spec = OPS[op]
        c = _f32(c) if spec.uses_const else 0.0
        if op == "const":
            return self.constant(c)
        if all(self.value(a) is not None for a in args):
            with np.errstate(all="ignore"):  # overflow to inf is checked below
                operands = [np.float32(self.value(a)) for a in args]
                folded = float(apply(spec, operands, np.float32(c)))
            if np.isfinite(folded) and abs(folded) <= MAX_CONST:
                return self.constant(folded)
        rewritten = _rewrite(self, op, args, c)
        if rewritten is not None:
            return rewritten
        kind = result_kind(spec, tuple(self.nodes[a].kind for a in args))
        key_args = tuple(sorted(args)) if spec.commutative else args
        return self.add(_Node(op, key_args, c, kind))


def _rewrite(graph: _Graph, op: str, args: tuple[int, ...], c: float) -> int | None:
    """An exact identity for `op(*args; c)` (a node id), or None."""
    make, value, nodes = graph.make, graph.value, graph.nodes
    if op == "copy":
        return args[0]
    if op == "scale":  # s x
        return make("mul", args)
    if len(args) == 1:
        x = args[0]
        inner = nodes[x]
        if op == "neg" and inner.op == "neg":
            return inner.args[0]
        if op == "neg" and inner.op == "scale_c":  # -(c y) = (-c) y
            return make("scale_c", inner.args, -inner.const)
        if op == "neg" and inner.op == "sub":  # -(a - b) = b - a
            return make("sub", inner.args[::-1])
        if op in ("abs", "sign", "relu", "is_positive") and inner.op == op:
            return x
        if op == "abs" and inner.op == "neg":
            return make("abs", inner.args)
        if op == "scale_c" and c == 1:
            return x
        if op == "scale_c" and c == -1:
            return make("neg", (x,))
        if op == "scale_c" and inner.op == "neg":  # c (-y) = (-c) y
            return make("scale_c", inner.args, -c)
        if op == "add_c" and c == 0:
            return x
        return None
    if OPS[op].commutative and op in ("add", "mul", "max", "min"):
        a, b = args
        if value(a) is not None:
            a, b = b, a
        k = value(b)
        if k is not None and op == "add":
            return make("add_c", (a,), k)
        if k is not None and op == "mul":
            return make("scale_c", (a,), k)
        if k == 0 and op == "max":
            return make("relu", (a,))
        if a == b:
            return {"add": lambda: make("scale_c", (a,), 2.0), "mul": lambda: make("square", (a,)),
                    "max": lambda: a, "min": lambda: a}[op]()  # fmt: skip
        if op == "add" and nodes[b].op == "neg":  # a + (-y) = a - y
            return make("sub", (a, nodes[b].args[0]))
        if op == "add" and nodes[a].op == "neg":
            return make("sub", (b, nodes[a].args[0]))
        return None
    if op == "sub":
        a, b = args
        if value(b) is not None:  # a - k = a + (-k)
            return make("add_c", (a,), -value(b))
        if value(a) == 0:
            return make("neg", (b,))
        if value(a) == 1:
            return make("one_minus", (b,))
        if nodes[b].op == "neg":
            return make("add", (a, nodes[b].args[0]))
        return None
    if op == "div":
        if value(args[1]) == 1:
            return args[0]
        if value(args[0]) == 1:
            return make("reciprocal", (args[1],))
        return None
    with_const = {"power": "pow_c", "clip": "clip_c", "interpolate": "interp_c"}
    if op in with_const and value(args[-1]) is not None:
        return make(with_const[op], args[:-1], value(args[-1]))
    if op == "select" and args[1] == args[2]:
        kinds = tuple(nodes[a].kind for a in args)
        if result_kind(OPS[op], kinds) == nodes[args[1]].kind:
            return args[1]
    return None


def _build(program: Program) -> tuple[_Graph, int, list[int]]:
    """The graph of `program`'s live instructions, its update node and its new-state nodes."""
    graph = _Graph()
    where = {}
    for r, (_, kind) in enumerate(INPUTS):
        where[r] = graph.add(_Node(INPUT, (), float(r), kind))
    for i, (_, value) in enumerate(CONSTANTS):
        where[len(INPUTS) + i] = graph.constant(value)
    for i in range(program.num_state):
        where[NUM_FIXED + i] = graph.add(_Node(INPUT, (), float(NUM_FIXED + i), TENSOR))
    for inst in program.live_instructions():
        where[inst.out] = graph.make(inst.op, tuple(where[a] for a in inst.args), inst.const)
    return graph, where[program.update], [where[r] for r in program.new_state]


def _digests(graph: _Graph, labels: dict[int, str]) -> list[str]:
    """A structural digest per node; an input's is its label (`labels` by register, else its
    register); commutative operands are taken in sorted order."""
    out: list[str] = []
    for node in graph.nodes:
        if node.op == INPUT:
            text = labels.get(int(node.const), f"r{int(node.const)}")
        else:
            parts = [out[a] for a in node.args]
            parts = sorted(parts) if OPS[node.op].commutative else parts
            text = f"{node.op};{node.const!r};{','.join(parts)}"
        out.append(hashlib.sha256(text.encode()).hexdigest()[:20])
    return out


def _operand_order(graph: _Graph, digests: list[str], i: int) -> tuple[int, ...]:
    node = graph.nodes[i]
    if node.op in (INPUT, "const") or not OPS[node.op].commutative:
        return node.args
    return tuple(sorted(node.args, key=lambda a: (digests[a], a)))


def _post_order(graph: _Graph, digests: list[str], roots: Sequence[int], seen: set[int]):
    """Nodes reachable from `roots` not in `seen`, operands first (iterative DFS)."""
    order = []
    for root in roots:
        stack = [(root, False)]
        while stack:
            i, expanded = stack.pop()
            if expanded:
                order.append(i)
            elif i not in seen:
                seen.add(i)
                stack.append((i, True))
                stack.extend((a, False) for a in reversed(_operand_order(graph, digests, i)))
    return order


def _state_order(graph: _Graph, update: int, new_state: list[int], k: int) -> list[int]:
    """The state slots the update depends on (directly or through other slots), in the order a
    walk from the update meets them (slots named alike, so the names do not decide)."""
    digests = _digests(graph, {NUM_FIXED + i: "state" for i in range(k)})
    slot_of = {graph.add(_Node(INPUT, (), float(NUM_FIXED + i), TENSOR)): i for i in range(k)}
    seen: set[int] = set()
    order: list[int] = []
    roots = [update]
    while roots:
        visited = _post_order(graph, digests, roots, seen)
        found = [slot_of[i] for i in visited if i in slot_of]
        order += found
        roots = [new_state[i] for i in found]
    return order


def _registers(code: list[int], graph: _Graph, outputs: set[int], first: int) -> dict[int, int]:
    """A register per node of `code` from `first` on: one each when they fit, else the lowest
    register free again after its value's last read (outputs are never freed)."""
    if first + len(code) <= MAX_REGISTERS:
        return {i: first + j for j, i in enumerate(code)}
    last_read = {}
    for j, i in enumerate(code):
        for a in graph.nodes[i].args:
            last_read[a] = j
    regs: dict[int, int] = {}
    free: list[int] = []
    next_reg = first
    for j, i in enumerate(code):
        for a in set(graph.nodes[i].args):
            if a in regs and last_read[a] == j and a not in outputs:
                free.append(regs[a])
        if free:
            free.sort()
            regs[i] = free.pop(0)
        else:
            regs[i], next_reg = next_reg, next_reg + 1
    return regs


@functools.lru_cache(maxsize=4096)  # a search meets its survivors again and again
def canonicalize(program: Program) -> Program:
    """The same rule in canonical form; programs that differ only in register names, the order
    of independent instructions, dead code, useless state, commutative operand order, constant
    subexpressions or the exact identities below get the same canonical program.

    Identities: `copy x = x`, `x + 0`, `x - 0`, `x * 1`, `x / 1`, `1 * x = x`, `-(-x) = x`,
    `x + x = 2 x`, `x x = x^2`, `max(x, x) = min(x, x) = x`, `max(x, 0) = relu x`, `0 - x = -x`,
    `1 - x = one_minus x`, `1 / x = reciprocal x`, `a + (-b) = a - b`, `a - (-b) = a + b`,
    `-(a - b) = b - a`, `-(c x) = (-c) x`, `|(-x)| = |x|`, idempotent `abs, sign, relu,
    is_positive`, `select(p, a, a) = a`; an op with a constant operand becomes its constant form
    (`mul(k, x) = scale_c(x; k)`, `add`, `sub`, `power`, `clip`, `interpolate` alike) and `scale`
    becomes `mul`. Constants are float32. The register file keeps at least its size.
    """
    graph, update, new_state = _build(program)
    order = _state_order(graph, update, new_state, program.num_state)
    labels = {NUM_FIXED + old: f"s{new}" for new, old in enumerate(order)}
    digests = _digests(graph, labels)
    roots = [update, *(new_state[i] for i in order)]
    code = [
        i
        for i in _post_order(graph, digests, roots, set())
        if graph.nodes[i].op != INPUT and graph.value(i) not in FIXED_CONSTANTS
    ]
    where = {i: int(graph.nodes[i].const) for i in range(len(graph.nodes))
             if graph.nodes[i].op == INPUT}  # fmt: skip
    where.update({graph.constant(v): r for v, r in FIXED_CONSTANTS.items()})
    for new, old in enumerate(order):
        where[graph.add(_Node(INPUT, (), float(NUM_FIXED + old), TENSOR))] = NUM_FIXED + new
    first = NUM_FIXED + len(order)
    where.update(_registers(code, graph, set(roots), first))
    if max(where.values()) >= MAX_REGISTERS:  # too many values live at once: keep the original
        return program.without_dead_code()
    instructions = []
    for i in code:
        node = graph.nodes[i]
        args = tuple(where[a] for a in _operand_order(graph, digests, i))
        instructions.append(Instruction(node.op, where[i], args, node.const))
    num_registers = max(program.num_registers, first, *(where[i] + 1 for i in code))
    return Program(
        tuple(instructions), where[update], tuple(where[r] for r in roots[1:]), num_registers
    )


def structural_hash(program: Program) -> str:
    """sha256 hex digest of the canonical program's JSON (sorted keys), without the register
    file size, which is not part of the rule."""
    data = canonicalize(program).to_json()
    del data["num_registers"]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@jax.jit
def _run_chunk(encoded, state: ProgramState, ws, gs, lr):
    """The updates `u [P, steps, ...]` of each encoded program on the stream `ws, gs` from
    `state` (its `[P]` programs' optimizer states), and the states after it."""
    ops = slot_ops(encoded.body_ops)

    def one(enc, state):
        transform = encoded_transform(enc, lr, ops)

        def step(state, wg):
            updates, state = transform.update(wg[1], state, wg[0])
            return state, jax.tree.map(jnp.negative, updates)

        return jax.lax.scan(step, state, (ws, gs))

    return jax.vmap(one)(encoded, state)


def probe_updates(programs: Sequence[Program], ws, gs, learning_rate: float) -> np.ndarray:
    """The updates `u` of each program on one fixed stream, `[P, steps, n]` (float32).

    Programs run vmapped, in tiles of `PROBE_TILE` (the last one padded), on chunks of
    `PROBE_CHUNK` steps, so that populations of any size and streams of any length reuse one
    compilation per stream shape and `max_len` (a multiple of 16).

    Args:
      programs: the rules.
      ws, gs: the weights and gradients fed at each step: pytrees of `[steps, ...]` arrays; every
        program sees the same stream (its own updates do not move `w`); reductions reduce each
        tensor.
      learning_rate: the input `lr`.

    Returns:
      Each step's update tensors flattened and concatenated (`n` the number of parameters).
    """
    steps = jax.tree.leaves(gs)[0].shape[0]
    if not programs:
        return np.zeros((0, steps, sum(x[0].size for x in jax.tree.leaves(gs))), np.float32)
    padded_steps = -(-steps // PROBE_CHUNK) * PROBE_CHUNK

    def pad(x):
        return jnp.concatenate([x, jnp.zeros((padded_steps - steps, *x.shape[1:]), x.dtype)])

    ws, gs = jax.tree.map(pad, ws), jax.tree.map(pad, gs)
    tile = PROBE_TILE
    max_len = max(16, -(-max(encoded_length(p) for p in programs) // 16) * 16)
    lr = jnp.float32(learning_rate)
    out = []
    for first in range(0, len(programs), tile):
        part = list(programs[first : first + tile])
        part += [part[0]] * (tile - len(part))
        encoded = jax.tree.map(jnp.asarray, encode_population(part, max_len, MAX_STATE))
        zeros = jax.tree.map(lambda x: jnp.zeros((tile, *x.shape[1:]), x.dtype), gs)
        state = ProgramState(jnp.zeros([tile], jnp.int32), (zeros,) * MAX_STATE)
        chunks = []
        for start in range(0, padded_steps, PROBE_CHUNK):
            chunk = jax.tree.map(lambda x, s=start: x[s : s + PROBE_CHUNK], (ws, gs))
            state, updates = _run_chunk(encoded, state, *chunk, lr)
            leaves = [x.reshape(tile, PROBE_CHUNK, -1) for x in jax.tree.leaves(updates)]
            chunks.append(jnp.concatenate(leaves, axis=-1))
        out.append(np.asarray(jnp.concatenate(chunks, axis=1)))
    return np.concatenate(out)[: len(programs), :steps]


def probe_shapes(num_params: int) -> dict[str, tuple[int, ...]]:
    """A vector and a matrix, about `num_params` entries in all (32: `(16,)` and `(2, 8)`)."""
    cols = max(num_params // 4, 1)
    return {"matrix": (2, cols), "vector": (max(num_params - 2 * cols, 1),)}


def fingerprint_stream(num_steps: int, num_params: int, seed: int):
    """Weights and gradients `(ws, gs)`, `[num_steps, ...]`, of the two `probe_shapes` tensors,
    standard normal but the matrix's gradients 100x smaller."""
    shapes = probe_shapes(num_params)
    scales = {"vector": 1.0, "matrix": 0.01}
    keys = jax.random.split(jax.random.key(seed), 2 * len(shapes))
    ws, gs = {}, {}
    for n, (name, shape) in enumerate(sorted(shapes.items())):
        ws[name] = jax.random.normal(keys[2 * n], (num_steps, *shape))
        gs[name] = scales[name] * jax.random.normal(keys[2 * n + 1], (num_steps, *shape))
    return ws, gs


def _rounded(x: np.ndarray, digits: int) -> np.ndarray:
    """`x` as `[..., 2]` int64 (mantissa of `digits` digits, exponent); NaN and inf as tokens."""
    x = np.asarray(x, np.float64)
    mantissa, exponent = np.zeros(x.shape, np.int64), np.zeros(x.shape, np.int64)
    nonzero = np.isfinite(x) & (x != 0)
    v = x[nonzero]
    e = np.floor(np.log10(np.abs(v))).astype(np.int64)
    m = np.round(v / 10.0 ** (e - digits + 1)).astype(np.int64)
    over = np.abs(m) >= 10**digits  # 9.9999 rounded up to 10.000
    m[over] = np.round(m[over] / 10).astype(np.int64)
    e[over] += 1
    mantissa[nonzero], exponent[nonzero] = m, e
    exponent[np.isnan(x)] = NAN_TOKEN
    exponent[np.isposinf(x)] = POS_INF_TOKEN
    exponent[np.isneginf(x)] = NEG_INF_TOKEN
    return np.stack([mantissa, exponent], axis=-1)


@functools.lru_cache(maxsize=8)
def _cached_stream(num_steps: int, num_params: int, seed: int):
    return fingerprint_stream(num_steps, num_params, seed)


def behaviour_fingerprints(
    programs: Sequence[Program],
    *,
    num_steps: int = 8,
    num_params: int = 32,
    seed: int = 0,
    digits: int = 4,
) -> list[str]:
    """A hash of what each program does: its updates on a fixed stream, rounded.

    Each program runs `num_steps` updates at each `lr` of `FINGERPRINT_LEARNING_RATES` on the
    weights and gradients of `fingerprint_stream(num_steps, num_params, seed)` (the same for
    every program); its update tensors, rounded to `digits` significant digits (NaN and inf as
    fixed tokens), are hashed with sha256. Programs with the same canonical form run once, so
    they always get the same fingerprint; programs that compute the same numbers (such as `x`
    and `clip(x, 1e30)`) get the same fingerprint too, up to the rare value that rounding
    splits. Two learning rates keep a rule that reads `lr` apart from its twin with a constant
    in its place.

    Returns:
      One hex digest per program, in order.
    """
    if not programs:
        return []
    canonical = [canonicalize(p) for p in programs]
    keys = [json.dumps(p.to_json()["instructions"]) + repr((p.update, p.new_state))
            for p in canonical]  # fmt: skip
    first: dict[str, Program] = {}
    for key, program in zip(keys, canonical, strict=True):
        first.setdefault(key, program)
    unique = list(first)
    ws, gs = _cached_stream(num_steps, num_params, seed)
    runs = [first[key] for key in unique]
    updates = np.concatenate(
        [probe_updates(runs, ws, gs, lr) for lr in FINGERPRINT_LEARNING_RATES], axis=1
    )
    digest = {
        key: hashlib.sha256(_rounded(u, digits).tobytes()).hexdigest()
        for key, u in zip(unique, updates, strict=True)
    }
    return [digest[key] for key in keys]
