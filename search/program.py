"""Update rules as typed straight-line programs over registers (Chen et al. 2023, "Symbolic
Discovery of Optimization Algorithms": a program maps `(w, g, lr, state)` to an update).

A program reads the weight `w`, gradient `g` (tensors), learning rate `lr`, step `t` (1 at the
first update) and the constants `one, half, two, eps` (scalars), plus `k` state tensors `s1..sk`
(zero before the first update). Its instructions `out = op(args...; c)` run in order; then the
register `update` holds `u` and the registers `new_state` hold the next `s1..sk`, and the weight
moves by `w <- w - u`. Register layout: 0 `w`, 1 `g`, 2 `lr`, 3 `t`, 4-7 the constants (read-only),
8.. the state slots, then scratch registers up to `num_registers`. State and scratch registers may
be overwritten. Building a `Program` checks it completely (ops, arities, operand kinds, registers
read before they are written, outputs), so an invalid program never reaches an evaluation.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import numpy as np

from search.ops import OPS, SCALAR, TENSOR, get_op, result_kind

INPUTS = (("w", TENSOR), ("g", TENSOR), ("lr", SCALAR), ("t", SCALAR))
CONSTANTS = (("one", 1.0), ("half", 0.5), ("two", 2.0), ("eps", 1e-8))
NUM_FIXED = len(INPUTS) + len(CONSTANTS)
MAX_INSTRUCTIONS = 64
MAX_REGISTERS = 64
MAX_STATE = 8
MAX_CONST = 1e30  # constants are float32 on the device
JSON_KEYS = ("instructions", "update", "new_state", "num_registers")
INSTRUCTION_KEYS = ("op", "out", "args", "const")

W, G, LR, T, ONE, HALF, TWO, EPS = range(NUM_FIXED)


def state_register(i: int) -> int:
    """The register of state slot `i` (0-based)."""
    return NUM_FIXED + i


def register_name(r: int, num_state: int) -> str:
    """`w`, `g`, `lr`, `t`, a constant's name, `s1..sk` for the state, else `r<r>`."""
    fixed = [name for name, _ in INPUTS] + [name for name, _ in CONSTANTS]
    if r < NUM_FIXED:
        return fixed[r]
    if r < NUM_FIXED + num_state:
        return f"s{r - NUM_FIXED + 1}"
    return f"r{r}"


def _is_int(x: Any) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool | np.bool_)


@dataclasses.dataclass(frozen=True)
class Instruction:
    """`out = op(*args; const)`; `const` is read only by ops with `uses_const`."""

    op: str
    out: int
    args: tuple[int, ...] = ()
    const: float = 0.0

    def __post_init__(self):
        if not isinstance(self.op, str):
            raise ValueError(f"op must be an op name, got {type(self.op).__name__}")
        if not _is_int(self.out):
            raise ValueError(f"out must be a register number, got {self.out!r:.40}")
        if not isinstance(self.args, tuple | list) or not all(_is_int(a) for a in self.args):
            raise ValueError(f"args must be register numbers, got {self.args!r:.60}")
        if not isinstance(self.const, int | float) or isinstance(self.const, bool):
            raise ValueError(f"const must be a number, got {self.const!r:.40}")
        try:
            const = float(self.const)
        except OverflowError:
            const = math.inf
        if not abs(const) <= MAX_CONST:  # also rejects NaN and inf
            raise ValueError(
                f"const must be finite and at most {MAX_CONST:g} in size, got {self.const!r:.40}"
            )
        object.__setattr__(self, "out", int(self.out))
        object.__setattr__(self, "args", tuple(int(a) for a in self.args))
        object.__setattr__(self, "const", const)

    def replace(self, **changes) -> Instruction:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Program:
    """Straight-line instructions plus designated outputs; checked on construction.

    Attributes:
      instructions: run in order.
      update: the register holding the update `u` (`w <- w - u`) after the last instruction.
      new_state: the registers holding the next state `s1..sk`; `k = len(new_state)`.
      num_registers: size of the register file (inputs, constants, state and scratch).
    """

    instructions: tuple[Instruction, ...]
    update: int
    new_state: tuple[int, ...] = ()
    num_registers: int = 24

    def __post_init__(self):
        object.__setattr__(self, "instructions", tuple(self.instructions))
        object.__setattr__(self, "new_state", tuple(self.new_state))
        check_program(self)
        object.__setattr__(self, "update", int(self.update))
        object.__setattr__(self, "new_state", tuple(int(r) for r in self.new_state))
        object.__setattr__(self, "num_registers", int(self.num_registers))

    @property
    def num_state(self) -> int:
        return len(self.new_state)

    def replace(self, **changes) -> Program:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

    def live_indices(self) -> tuple[int, ...]:
        """Indices of the instructions the outputs depend on (the others are dead code)."""
        needed = {self.update, *self.new_state}
        live = []
        for i in reversed(range(len(self.instructions))):
            inst = self.instructions[i]
            if inst.out in needed:
                live.append(i)
                needed.discard(inst.out)
                needed.update(inst.args)
        return tuple(reversed(live))

    def live_instructions(self) -> tuple[Instruction, ...]:
        """The instructions the outputs depend on, in order."""
        return tuple(self.instructions[i] for i in self.live_indices())

    def without_dead_code(self) -> Program:
        """The same rule with its dead instructions removed."""
        return self.replace(instructions=self.live_instructions())

    def register_kinds(self) -> tuple[str | None, ...]:
        """Kind of every register after the last instruction (None: never written)."""
        return check_program(self)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data: `{"instructions": [{"op", "out", "args", "const"}], ...}`."""
        return {
            "instructions": [
                {"op": i.op, "out": i.out, "args": list(i.args), "const": i.const}
                for i in self.instructions
            ],
            "update": self.update,
            "new_state": list(self.new_state),
            "num_registers": self.num_registers,
        }

    @classmethod
    def from_json(cls, data: Any) -> Program:
        """The program of `to_json` data; anything else raises ValueError."""
        _check_keys(data, JSON_KEYS, JSON_KEYS, "program")
        instructions = data["instructions"]
        if not isinstance(instructions, list):
            raise ValueError("program 'instructions' must be a list")
        if len(instructions) > MAX_INSTRUCTIONS:
            raise ValueError(f"{len(instructions)} instructions; at most {MAX_INSTRUCTIONS}")
        insts = []
        for n, item in enumerate(instructions):
            _check_keys(item, INSTRUCTION_KEYS, ("op", "out", "args"), f"instruction {n}")
            if not isinstance(item["args"], list):
                raise ValueError(f"instruction {n}: 'args' must be a list")
            try:
                insts.append(
                    Instruction(item["op"], item["out"], item["args"], item.get("const", 0.0))
                )
            except ValueError as e:
                raise ValueError(f"instruction {n}: {e}") from None
        if not isinstance(data["new_state"], list):
            raise ValueError("program 'new_state' must be a list")
        return cls(tuple(insts), data["update"], tuple(data["new_state"]), data["num_registers"])

    def format(self) -> str:
        """One line per instruction, e.g. `s1 = interp_c(g, s1; 0.9)`, then the outputs."""
        k = self.num_state
        lines = []
        for inst in self.instructions:
            args = ", ".join(register_name(a, k) for a in inst.args)
            const = f"; {inst.const:g}" if OPS[inst.op].uses_const else ""
            lines.append(f"{register_name(inst.out, k)} = {inst.op}({args}{const})")
        state = ", ".join(register_name(r, k) for r in self.new_state)
        lines.append(f"return update={register_name(self.update, k)}, state=({state})")
        return "\n".join(lines)


def _check_keys(data: Any, allowed: tuple[str, ...], required: tuple[str, ...], what: str):
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(allowed), key=str)
    if unknown:
        raise ValueError(f"{what} has unknown keys {unknown}; allowed: {list(allowed)}")
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{what} lacks {missing}")


def check_program(program: Program) -> tuple[str | None, ...]:
    """Raise ValueError unless `program` is well formed and well typed; return register kinds."""
    n_regs, k = program.num_registers, program.num_state
    if not _is_int(n_regs) or not NUM_FIXED + k <= n_regs <= MAX_REGISTERS:
        bounds = f"[{NUM_FIXED + k}, {MAX_REGISTERS}]"
        raise ValueError(f"num_registers must be an int in {bounds}, got {n_regs!r:.40}")
    if k > MAX_STATE:
        raise ValueError(f"{k} state slots; at most {MAX_STATE}")
    if len(program.instructions) > MAX_INSTRUCTIONS:
        raise ValueError(f"{len(program.instructions)} instructions; at most {MAX_INSTRUCTIONS}")
    kinds: list[str | None] = [kind for _, kind in INPUTS] + [SCALAR] * len(CONSTANTS)
    kinds += [TENSOR] * k + [None] * (n_regs - NUM_FIXED - k)

    def name(r):
        return f"register {r} ({register_name(r, k)})"

    for n, inst in enumerate(program.instructions):
        if not isinstance(inst, Instruction):
            raise ValueError(f"instruction {n} is a {type(inst).__name__}, not an Instruction")
        where = f"instruction {n} ({inst.op})"
        op = get_op(inst.op)
        if len(inst.args) != op.arity:
            raise ValueError(
                f"{where}: op {op.name!r} takes {op.arity} operands, got {len(inst.args)}"
            )
        for a in inst.args:
            if not 0 <= a < n_regs:
                raise ValueError(f"{where}: register {a} out of range [0, {n_regs})")
            if kinds[a] is None:
                raise ValueError(f"{where}: reads {name(a)} before it is written")
        if not NUM_FIXED <= inst.out < n_regs:
            raise ValueError(
                f"{where}: writes register {inst.out}; writable registers are "
                f"[{NUM_FIXED}, {n_regs}) (0-{NUM_FIXED - 1} are read-only inputs)"
            )
        try:
            kinds[inst.out] = result_kind(op, tuple(kinds[a] for a in inst.args))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    outputs = [("update", program.update)]
    outputs += [(f"new_state[{i}]", r) for i, r in enumerate(program.new_state)]
    for what, r in outputs:
        if not _is_int(r) or not 0 <= r < n_regs:
            raise ValueError(f"output {what} must be a register in [0, {n_regs}), got {r!r:.40}")
        if kinds[r] != TENSOR:
            state = "never written" if kinds[r] is None else f"a {kinds[r]}"
            raise ValueError(f"output {what}: {name(r)} must hold a tensor, but it is {state}")
    return tuple(kinds)
