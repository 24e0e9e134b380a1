"""Pruning a found rule down to the instructions its fitness needs (Chen et al. 2023, "Symbolic
Discovery of Optimization Algorithms", simplify the evolved program before reading it).

A removal drops one instruction by forwarding one of its operands of the same kind to its
readers (`u = clip(x, b)` becomes `u = x`); every candidate program is checked and canonical. Each
round scores all removals of the current program in ONE call of `fitness`, so a vmapped
population evaluator fits in directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from search.canonical import canonicalize
from search.ops import OPS, SCALAR, TENSOR, result_kind
from search.program import CONSTANTS, INPUTS, NUM_FIXED, Instruction, Program

Fitness = Callable[[Sequence[Program]], np.ndarray]


def _rule_key(program: Program) -> tuple:
    """The rule without the register file size (canonical programs compare by it)."""
    return program.instructions, program.update, program.new_state


def removals(program: Program) -> list[Program]:
    """The distinct canonical programs that forward one operand of one instruction of
    `program` (canonical) to its readers, in instruction order."""
    kinds = [kind for _, kind in INPUTS] + [SCALAR] * len(CONSTANTS)
    kinds += [TENSOR] * program.num_state
    kinds += [None] * (program.num_registers - NUM_FIXED - program.num_state)
    seen = {_rule_key(program)}
    out = []
    for n, inst in enumerate(program.instructions):
        op = OPS[inst.op]
        kind = result_kind(op, tuple(kinds[a] for a in inst.args))
        for a in dict.fromkeys(inst.args):
            if kinds[a] != kind:
                continue
            body = list(program.instructions)
            body[n] = Instruction("copy", inst.out, (a,))
            candidate = canonicalize(program.replace(instructions=tuple(body)))
            if _rule_key(candidate) not in seen:
                seen.add(_rule_key(candidate))
                out.append(candidate)
        kinds[inst.out] = kind
    return out


def _scores(fitness: Fitness, programs: list[Program]) -> np.ndarray:
    scores = np.asarray(fitness(programs), np.float64)
    if scores.shape != (len(programs),):
        raise ValueError(
            f"fitness must return one number per program: {len(programs)} programs, "
            f"got shape {scores.shape}"
        )
    return scores


def simplify(program: Program, fitness: Fitness, *, tolerance: float = 0.0) -> Program:
    """The smallest rule greedy pruning of `program` finds within `tolerance` of its fitness.

    Starting from `canonicalize(program)`, each round scores every removal (see `removals`) of
    the current program in one call `fitness(candidates)` (lower is better) and keeps the
    acceptable one (score at most the original's plus `tolerance`; NaN never is) with the fewest
    instructions, then the lowest score; it stops when none is acceptable. The original is
    scored once, in the first call, as its first entry.

    Args:
      program: the rule to prune.
      fitness: maps a sequence of programs to an array of as many scores.
      tolerance: how much worse than the original the result may score.

    Returns:
      A valid canonical program scoring at most the original's score plus `tolerance` (the
      canonical original when no removal is acceptable).
    """
    current = canonicalize(program)
    reference = None
    while candidates := removals(current):
        batch = candidates if reference is not None else [current, *candidates]
        scores = _scores(fitness, batch)
        if reference is None:
            reference, scores = scores[0], scores[1:]
        ok = [n for n, s in enumerate(scores) if s <= reference + tolerance]
        if not ok:
            break
        best = min(ok, key=lambda n: (len(candidates[n].instructions), scores[n], n))
        current = candidates[best]
    return current
