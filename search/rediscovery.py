"""How close a found rule is to the classic ones, by what it does (Chen et al. 2023, "Symbolic
Discovery of Optimization Algorithms", relate Lion to signSGD, momentum and Adam).

Every rule is fed one fixed probe stream of weights and gradients, so all of them see identical
inputs at every step whatever they would have done; their update directions are compared step by
step with the cosine and the cosines averaged.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from search.canonical import probe_shapes, probe_updates
from search.program import Program, state_register
from search.programs_library import get_program

REFERENCES = ("sgd", "momentum", "signsgd", "adam", "lion")
PROBE_LEARNING_RATE = 1e-2
PROBE_PARAMS = 32  # the shapes of `search.canonical.behaviour_fingerprints`: one compilation
CURVATURES = (0.1, 10.0)  # range of the quadratic's curvatures (log-uniform)
PATH_STEP = 0.02  # gradient descent step of the weights' path
NOISE_SCALE = 0.05
NOISE_CORRELATION = 0.8  # from one step to the next


def reference_programs() -> dict[str, Program]:
    """The warm-start programs of `REFERENCES`, default hyperparameters."""
    return {name: get_program(name) for name in REFERENCES}


def probe_stream(num_steps: int, seed: int):
    """Weights and gradients `(ws, gs)`, `[num_steps, ...]`, on a random diagonal quadratic.

    Curvatures `h` are log-uniform in `CURVATURES`; the weights follow gradient descent on the
    quadratic (`w <- w - PATH_STEP h w`, so stiff coordinates settle and flat ones do not); the
    gradients `h w + NOISE_SCALE n` add noise `n` correlated over time (`NOISE_CORRELATION`).
    Gradients of a coordinate keep their sign but their scales differ by orders of magnitude
    and change over time: scale-free rules (sign, Adam) part from linear ones (SGD), rules
    with memory (momentum, moments) from memoryless ones. Two tensors, as
    `probe_shapes(PROBE_PARAMS)`.
    """
    shapes = probe_shapes(PROBE_PARAMS)
    size = sum(int(np.prod(s)) for s in shapes.values())
    k_h, k_w, k_n = jax.random.split(jax.random.key(seed), 3)
    low, high = np.log(CURVATURES)
    h = np.exp(np.asarray(jax.random.uniform(k_h, (size,), minval=low, maxval=high)))
    w = np.asarray(jax.random.normal(k_w, (size,)))
    shocks = np.asarray(jax.random.normal(k_n, (num_steps, size)))
    rho = NOISE_CORRELATION
    noise = shocks[0]
    ws, gs = [], []
    for t in range(num_steps):
        noise = noise if t == 0 else rho * noise + np.sqrt(1 - rho**2) * shocks[t]
        ws.append(w)
        gs.append(h * w + NOISE_SCALE * noise)
        w = w - PATH_STEP * h * w

    def split(rows):
        flat = np.stack(rows).astype(np.float32)
        ends = np.cumsum([int(np.prod(s)) for s in shapes.values()])
        parts = np.split(flat, ends[:-1], axis=1)
        return {
            k: p.reshape(num_steps, *s) for (k, s), p in zip(shapes.items(), parts, strict=True)
        }

    return split(ws), split(gs)


@functools.lru_cache(maxsize=4)
def _stream(num_steps: int, seed: int):
    return probe_stream(num_steps, seed)


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over steps of the cosine between `a[t]` and `b[t]` (`[steps, n]`); a step where
    either is zero or not finite counts as 0."""
    with np.errstate(all="ignore"):
        a, b = a.astype(np.float64), b.astype(np.float64)
        cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(np.mean(np.where(np.isfinite(cos), cos, 0.0)))


def rediscovery_similarity(
    program: Program, *, num_steps: int = 50, seed: int = 0
) -> dict[str, float]:
    """Mean cosine similarity between `program`'s updates and each reference rule's.

    All rules run at `lr = PROBE_LEARNING_RATE` on `probe_stream(num_steps, seed)`: identical
    weights and gradients at every step (the stream does not follow any rule's updates), so the
    cosine at step `t` compares what two rules do with the same history; the similarity is the
    mean over steps, in `[-1, 1]`. It measures the direction only (a rule and its rescaling score
    1) and per step, across both tensors at once.

    Returns:
      `{reference name: similarity}` for the names of `REFERENCES`.
    """
    references = reference_programs()
    ws, gs = _stream(num_steps, seed)
    updates = probe_updates([program, *references.values()], ws, gs, PROBE_LEARNING_RATE)
    return {name: _mean_cosine(updates[0], updates[n]) for n, name in enumerate(references, 1)}


def closest_reference(program: Program) -> tuple[str, float]:
    """The reference rule most similar to `program` (`rediscovery_similarity`) and the score."""
    scores = rediscovery_similarity(program)
    name = max(scores, key=scores.get)
    return name, scores[name]


def is_sign_momentum(program: Program) -> bool:
    """Whether the update passes through `sign` of a value that depends on the incoming state
    (Lion's `sign((1 - b1) g + b1 m)`; signSGD's `sign(g)` does not count).

    Read from the live instructions in order: a register depends on the state if an operand
    does (state slots do on entry), and carries a state sign if an operand does or it is
    `sign` of a state-dependent operand. Only the op `sign` counts (not, e.g., `x / |x|`)."""
    slots = {state_register(i) for i in range(program.num_state)}
    on_state = {r: r in slots for r in range(program.num_registers)}
    signed = dict.fromkeys(range(program.num_registers), False)
    for inst in program.live_instructions():
        depends = any(on_state[a] for a in inst.args)
        signed[inst.out] = any(signed[a] for a in inst.args) or (inst.op == "sign" and depends)
        on_state[inst.out] = depends
    return signed[program.update]
