"""Mutations of update-rule programs and random programs, the variation of a regularized evolution
(Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"; Real et al. 2019).

Every function is deterministic given a `jax.random` key (or a NumPy Generator seeded from one).
A mutation proposes candidates until one builds a valid `Program` within the limits of its
`MutationConfig` and differs from the parent; a kind that cannot produce one within `max_tries`
hands over to the other kinds, so `mutate` never returns an invalid program.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import numpy as np

from search.ops import ANY, MATRIX_OPS, OPS, SCALAR, TENSOR, result_kind
from search.program import (
    CONSTANTS,
    INPUTS,
    MAX_INSTRUCTIONS,
    MAX_REGISTERS,
    MAX_STATE,
    NUM_FIXED,
    G,
    Instruction,
    Program,
)

KINDS = ("insert", "delete", "modify", "operand", "constant", "add_state", "remove_state")
DEFAULT_WEIGHTS = {"insert": 1.0, "delete": 1.0, "modify": 1.0, "operand": 1.0, "constant": 1.0,
                   "add_state": 0.5, "remove_state": 0.5}  # fmt: skip
NICE_CONSTANTS = (1e-3, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0, 2.0, 10.0)
EMA_RATES = (0.01, 0.5)  # range of the rate `c` of a new state slot's `interp_c(s, x; c)`
CONST_LIMIT = 1e20  # perturbed constants stay this small (float32 rounding stays in MAX_CONST)


@dataclasses.dataclass(frozen=True)
class MutationConfig:
    """Limits and rates of the mutations.

    Attributes:
      max_instructions: most instructions a program may hold (dead ones included).
      max_state: most state slots.
      ops: the ops new instructions may use.
      matrix_ops: whether they may use the matrix ops (`search.ops.MATRIX_OPS`, which see each
        tensor's shape); off by default (searches, and their resumes, keep the op set they
        were started with), False drops them from `ops`.
      weights: relative frequency of each mutation kind (`KINDS`); 0 disables one.
      const_sigma: a constant is multiplied by `exp(const_sigma N(0, 1))`...
      flip_probability: ...and negated with this probability.
      max_tries: candidates one kind proposes before another kind is tried.
      num_registers: register file size of random programs.
    """

    max_instructions: int = 16
    max_state: int = 2
    ops: tuple[str, ...] = tuple(OPS)
    matrix_ops: bool = False
    weights: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    const_sigma: float = 0.5
    flip_probability: float = 0.1
    max_tries: int = 16
    num_registers: int = 24

    def __post_init__(self):
        if not isinstance(self.matrix_ops, bool):
            raise ValueError(f"matrix_ops must be true or false, got {self.matrix_ops!r:.40}")
        ops = tuple(op for op in self.ops if self.matrix_ops or op not in MATRIX_OPS)
        object.__setattr__(self, "ops", ops)
        object.__setattr__(self, "weights", {**DEFAULT_WEIGHTS, **dict(self.weights)})
        _check_int("max_instructions", self.max_instructions, 1, MAX_INSTRUCTIONS)
        _check_int("max_state", self.max_state, 0, MAX_STATE)
        _check_int("max_tries", self.max_tries, 1, 10_000)
        _check_int("num_registers", self.num_registers, NUM_FIXED + self.max_state, MAX_REGISTERS)
        unknown = [op for op in self.ops if op not in OPS]
        if unknown or not self.ops:
            raise ValueError(f"unknown ops {unknown} (or none given); valid ops: {', '.join(OPS)}")
        bad = sorted(set(self.weights) - set(KINDS))
        if bad:
            raise ValueError(f"unknown mutation kinds {bad}; valid kinds: {', '.join(KINDS)}")
        for kind, w in self.weights.items():
            if not _is_number(w) or not 0 <= w < math.inf:
                raise ValueError(f"mutation weight {kind} must be a number >= 0, got {w!r}")
        if not sum(self.weights.values()) > 0:
            raise ValueError("at least one mutation weight must be positive")
        for name in ("const_sigma", "flip_probability"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if self.flip_probability > 1:
            raise ValueError(f"flip_probability must be at most 1, got {self.flip_probability}")


class Mutation(NamedTuple):
    """A mutant, the kind that made it ("none" if no kind could) and the rejected candidates."""

    program: Program
    kind: str
    rejected: int


class _NotApplicableError(Exception):
    """This kind cannot change this program (e.g. no constant to perturb)."""


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _check_int(name: str, value, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def rng_from_key(key: jax.Array | np.random.Generator) -> np.random.Generator:
    """A NumPy Generator seeded from a `jax.random` key (a Generator is returned as it is)."""
    if isinstance(key, np.random.Generator):
        return key
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key, np.uint32).ravel().tolist())


def _initial_kinds(num_state: int, num_registers: int) -> list[str | None]:
    kinds = [kind for _, kind in INPUTS] + [SCALAR] * len(CONSTANTS) + [TENSOR] * num_state
    return kinds + [None] * (num_registers - len(kinds))


def kinds_before(program: Program) -> list[list[str | None]]:
    """Register kinds before each instruction and after the last (`len + 1` lists)."""
    kinds = _initial_kinds(program.num_state, program.num_registers)
    out = [list(kinds)]
    for inst in program.instructions:
        kinds[inst.out] = result_kind(OPS[inst.op], tuple(kinds[a] for a in inst.args))
        out.append(list(kinds))
    return out


def _fits(kind: str | None, want: str) -> bool:
    return kind is not None and (want == ANY or kind == want)


def _random_const(rng: np.random.Generator) -> float:
    """A "nice" constant half of the time, else a signed log-uniform one in [1e-4, 10]."""
    if rng.random() < 0.5:
        return float(NICE_CONSTANTS[rng.integers(len(NICE_CONSTANTS))])
    return float((1 if rng.random() < 0.8 else -1) * 10 ** rng.uniform(-4, 1))


def _pick_register(rng: np.random.Generator, kinds, want: str, exclude: int | None = None) -> int:
    """A defined register of kind `want`; half of the time one written by the program."""
    fits = [r for r, k in enumerate(kinds) if _fits(k, want) and r != exclude]
    if not fits:
        raise _NotApplicableError
    written = [r for r in fits if r >= NUM_FIXED]
    pool = written if written and rng.random() < 0.5 else fits
    return int(pool[rng.integers(len(pool))])


def _random_instruction(rng, kinds, num_registers: int, ops: tuple[str, ...], out: int | None):
    """A random well-typed instruction reading registers defined in `kinds`."""
    op = OPS[ops[rng.integers(len(ops))]]
    args = tuple(_pick_register(rng, kinds, want) for want in op.operands)
    if out is None:
        out = int(rng.integers(NUM_FIXED, num_registers))
    return Instruction(op.name, out, args, _random_const(rng) if op.uses_const else 0.0)


def _insert(rng, program: Program, config: MutationConfig) -> list:
    """A random instruction at a random place; half of the time one that transforms a live
    value in place (`x = op(x, ...)` right after `x` is computed), so that it takes effect."""
    n = len(program.instructions)
    if n >= config.max_instructions:
        raise _NotApplicableError
    insts = list(program.instructions)
    live = program.live_indices()
    if live and rng.random() < 0.5:
        j = int(live[rng.integers(len(live))])
        x = insts[j].out
        kinds = kinds_before(program)[j + 1]
        op = OPS[config.ops[rng.integers(len(config.ops))]]
        slots = [k for k, want in enumerate(op.operands) if _fits(kinds[x], want)]
        if not slots:
            return []
        at = slots[rng.integers(len(slots))]
        args = [x if k == at else _pick_register(rng, kinds, want)
                for k, want in enumerate(op.operands)]  # fmt: skip
        const = _random_const(rng) if op.uses_const else 0.0
        insts.insert(j + 1, Instruction(op.name, x, tuple(args), const))
        return [{"instructions": insts}]
    i = int(rng.integers(n + 1))
    read_later = {a for inst in program.instructions[i:] for a in inst.args}
    read_later |= {program.update, *program.new_state}
    read_later = sorted(r for r in read_later if r >= NUM_FIXED)
    out = None
    if read_later and rng.random() < 0.5:
        out = int(read_later[rng.integers(len(read_later))])
    kinds = kinds_before(program)[i]
    insts.insert(i, _random_instruction(rng, kinds, program.num_registers, config.ops, out))
    return [{"instructions": insts}]


def _delete(rng, program: Program, config: MutationConfig) -> list:
    if not program.instructions:
        raise _NotApplicableError
    insts = list(program.instructions)
    del insts[int(rng.integers(len(insts)))]
    return [{"instructions": insts}]


def _modify(rng, program: Program, config: MutationConfig) -> list:
    if not program.instructions:
        raise _NotApplicableError
    i = int(rng.integers(len(program.instructions)))
    inst = program.instructions[i]
    kinds = kinds_before(program)[i]
    arg_kinds = tuple(kinds[a] for a in inst.args)
    choices = []
    for name in config.ops:
        op = OPS[name]
        if name != inst.op and op.arity == len(inst.args):
            if all(_fits(k, want) for k, want in zip(arg_kinds, op.operands, strict=True)):
                choices.append(name)
    if not choices:
        return []
    name = choices[rng.integers(len(choices))]
    const = inst.const
    if OPS[name].uses_const and not OPS[inst.op].uses_const and const == 0.0:
        const = _random_const(rng)
    insts = list(program.instructions)
    insts[i] = inst.replace(op=name, const=const)
    return [{"instructions": insts}]


def _operand(rng, program: Program, config: MutationConfig) -> list:
    """Re-point one operand of an instruction, or (one time in five) an output."""
    with_args = [i for i, inst in enumerate(program.instructions) if inst.args]
    if not with_args or rng.random() < 0.2:
        final = kinds_before(program)[-1]
        slot = int(rng.integers(1 + program.num_state))
        outputs = [program.update, *program.new_state]
        outputs[slot] = _pick_register(rng, final, TENSOR, exclude=outputs[slot])
        return [{"update": outputs[0], "new_state": tuple(outputs[1:])}]
    i = with_args[rng.integers(len(with_args))]
    inst = program.instructions[i]
    j = int(rng.integers(len(inst.args)))
    kinds = kinds_before(program)[i]
    args = list(inst.args)
    args[j] = _pick_register(rng, kinds, OPS[inst.op].operands[j], exclude=args[j])
    insts = list(program.instructions)
    insts[i] = inst.replace(args=tuple(args))
    return [{"instructions": insts}]


def _constant(rng, program: Program, config: MutationConfig) -> list:
    """Multiply a constant by a log-normal factor (sometimes also negate it)."""
    with_const = [i for i, inst in enumerate(program.instructions) if OPS[inst.op].uses_const]
    if not with_const:
        raise _NotApplicableError
    i = with_const[rng.integers(len(with_const))]
    inst = program.instructions[i]
    if inst.const == 0.0:
        const = _random_const(rng)
    else:
        const = inst.const * math.exp(config.const_sigma * rng.standard_normal())
    if rng.random() < config.flip_probability:
        const = -const
    const = float(np.clip(const, -CONST_LIMIT, CONST_LIMIT))
    insts = list(program.instructions)
    insts[i] = inst.replace(const=const)
    return [{"instructions": insts}]


def _renumber(program: Program, mapping: Callable[[int], int], **changes) -> dict:
    """The fields of `program` with every register `r` written as `mapping(r)`."""
    insts = [
        inst.replace(out=mapping(inst.out), args=tuple(mapping(a) for a in inst.args))
        for inst in changes.pop("instructions", program.instructions)
    ]
    update = mapping(changes.pop("update", program.update))
    new_state = tuple(mapping(r) for r in changes.pop("new_state", program.new_state))
    return {"instructions": insts, "update": update, "new_state": new_state, **changes}


def _add_state(rng, program: Program, config: MutationConfig) -> list:
    """A new slot `s = interp_c(s, x; c)` (an EMA) replacing one tensor operand `x`, or the
    update itself."""
    k = program.num_state
    if k >= config.max_state or len(program.instructions) >= config.max_instructions:
        raise _NotApplicableError
    slot = NUM_FIXED + k
    kinds = kinds_before(program)
    targets = [
        (i, j)
        for i, inst in enumerate(program.instructions)
        for j, a in enumerate(inst.args)
        if kinds[i][a] == TENSOR and OPS[inst.op].operands[j] in (ANY, TENSOR)
    ]
    choice = int(rng.integers(len(targets) + 1))

    def shift(r):
        return r + 1 if r >= slot else r

    fields = _renumber(program, shift)
    insts = fields["instructions"]
    if choice == len(targets):  # smooth the update itself
        x, at = fields["update"], len(insts)
        fields["update"] = slot
    else:
        i, j = targets[choice]
        x, at = insts[i].args[j], i
        args = list(insts[i].args)
        args[j] = slot
        insts[i] = insts[i].replace(args=tuple(args))
    rate = 10 ** rng.uniform(*np.log10(EMA_RATES))
    insts.insert(at, Instruction("interp_c", slot, (slot, x), float(rate)))
    fields["new_state"] = (*fields["new_state"], slot)
    highest = max([slot, *(r for inst in fields["instructions"] for r in (inst.out, *inst.args))])
    fields["num_registers"] = max(program.num_registers, highest + 1)
    return [fields]


def _remove_state(rng, program: Program, config: MutationConfig) -> list:
    """Drop one slot: its reads of the old value read `g` (an EMA `interp_c(s, x)` becomes `x`),
    and its register becomes scratch."""
    k = program.num_state
    if k == 0:
        raise _NotApplicableError
    i = int(rng.integers(k))
    reg = NUM_FIXED + i
    writes = [n for n, inst in enumerate(program.instructions) if inst.out == reg]
    first_write = writes[0] if writes else len(program.instructions)
    insts = []
    for n, inst in enumerate(program.instructions):
        if n <= first_write and reg in inst.args:
            if inst.op == "interp_c" and set(inst.args) != {reg}:
                other = inst.args[1] if inst.args[0] == reg else inst.args[0]
                inst = Instruction("copy", inst.out, (other,))
            else:
                inst = inst.replace(args=tuple(G if a == reg else a for a in inst.args))
        insts.append(inst)
    outputs = [program.update, *program.new_state]
    if not writes:
        outputs = [G if r == reg else r for r in outputs]
    del outputs[1 + i]
    last_state = NUM_FIXED + k - 1

    def move(r):
        if r == reg:
            return last_state
        return r - 1 if reg < r <= last_state else r

    return [_renumber(program, move, instructions=insts, update=outputs[0],
                      new_state=tuple(outputs[1:]))]  # fmt: skip


MUTATIONS: dict[str, Callable[..., list]] = {
    "insert": _insert,
    "delete": _delete,
    "modify": _modify,
    "operand": _operand,
    "constant": _constant,
    "add_state": _add_state,
    "remove_state": _remove_state,
}


def within_limits(program: Program, config: MutationConfig) -> bool:
    """Whether `program` respects the instruction and state limits of `config`."""
    return (
        len(program.instructions) <= config.max_instructions
        and program.num_state <= config.max_state
    )


def _build(program: Program, fields: dict, config: MutationConfig) -> Program | None:
    """The candidate `program.replace(**fields)` if valid, within limits and different."""
    try:
        candidate = program.replace(**fields)
    except ValueError:
        return None
    if candidate == program or not within_limits(candidate, config):
        return None
    return candidate


def mutate(
    key: jax.Array | np.random.Generator,
    program: Program,
    config: MutationConfig,
    kind: str | None = None,
) -> Mutation:
    """One mutation of `program` of a kind drawn by `config.weights` (or `kind`).

    A kind that cannot produce a valid, different program within the limits in
    `config.max_tries` candidates hands over to the others (in random order); should none
    succeed, the parent comes back with kind "none".
    """
    rng = rng_from_key(key)
    kinds = [k for k in KINDS if config.weights[k] > 0]
    if kind is None:
        p = np.asarray([config.weights[k] for k in kinds])
        kind = kinds[rng.choice(len(kinds), p=p / p.sum())]
    elif kind not in MUTATIONS:
        raise ValueError(f"unknown mutation kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    others = [k for k in kinds if k != kind]
    order = [kind, *(others[i] for i in rng.permutation(len(others)))]
    rejected = 0
    for k in order:
        for _ in range(config.max_tries):
            try:
                proposals = MUTATIONS[k](rng, program, config)
            except _NotApplicableError:
                break
            for fields in proposals:
                candidate = _build(program, fields, config)
                if candidate is not None:
                    return Mutation(candidate, k, rejected)
            rejected += 1
    return Mutation(program, "none", rejected)


def mutate_many(key, program: Program, config: MutationConfig, num: int) -> Program:
    """`num` mutations of `program` in a row."""
    rng = rng_from_key(key)
    for _ in range(num):
        program = mutate(rng, program, config).program
    return program


def random_program(
    key: jax.Array | np.random.Generator,
    config: MutationConfig,
    num_instructions: int | None = None,
    num_state: int | None = None,
) -> Program:
    """A random well-typed program within the limits of `config` (built instruction by
    instruction from registers already defined; the update is the last tensor written)."""
    rng = rng_from_key(key)
    k = int(rng.integers(config.max_state + 1)) if num_state is None else num_state
    n = num_instructions
    if n is None:
        n = int(rng.integers(1, config.max_instructions + 1))
    if not 0 <= k <= config.max_state or not 0 <= n <= config.max_instructions:
        raise ValueError(f"{n} instructions and {k} slots exceed the limits of {config}")
    n_regs = config.num_registers
    kinds = _initial_kinds(k, n_regs)
    insts = []
    last_tensor = G
    for _ in range(n):
        inst = _random_instruction(rng, kinds, n_regs, config.ops, None)
        kinds[inst.out] = result_kind(OPS[inst.op], tuple(kinds[a] for a in inst.args))
        insts.append(inst)
        if kinds[inst.out] == TENSOR:
            last_tensor = inst.out
    tensors = [r for r, kind in enumerate(kinds) if kind == TENSOR]
    if kinds[last_tensor] != TENSOR:
        last_tensor = int(tensors[rng.integers(len(tensors))])
    new_state = []
    for s in range(k):
        reg = NUM_FIXED + s
        new_state.append(reg if kinds[reg] == TENSOR else int(tensors[rng.integers(len(tensors))]))
    return Program(tuple(insts), last_tensor, tuple(new_state), n_regs)


def fit_to_limits(key, program: Program, config: MutationConfig) -> Program:
    """`program` without dead code and with random state slots removed (`remove_state`) until
    it has at most `config.max_state`; ValueError if it still holds too many instructions."""
    rng = rng_from_key(key)
    program = program.without_dead_code()
    while program.num_state > config.max_state:
        for _ in range(config.max_tries):
            fields = _remove_state(rng, program, config)[0]
            try:
                program = program.replace(**fields).without_dead_code()
                break
            except ValueError:
                continue
        else:
            raise ValueError(f"cannot remove a state slot of\n{program.format()}")
    if len(program.instructions) > config.max_instructions:
        raise ValueError(
            f"a program of {len(program.instructions)} live instructions exceeds "
            f"max_instructions {config.max_instructions}"
        )
    return program
