"""Hand-written optimizers as programs: the warm starts of a search (Chen et al. 2023, "Symbolic
Discovery of Optimization Algorithms", start their search from AdamW).

Each factory returns a `Program` equal to the optax optimizer of the same name, or for `muon`,
`muon_adam` and `adafactor` to `baselines`', and `muon_adam_rms` and `orthogonal_adam` to their
formulas (the tests compare them); the learning rate is the program's input `lr`, the
hyperparameters are constants. An EMA `b m + (1 - b) g` is written
`interp_c(m, g; 1 - b)`: constants are float32, and storing the small rate `1 - b` keeps both
weights as exact as optax's (float32 `b = 0.999` is off by 1e-8, which is 1e-5 of `1 - b`).
"""

from __future__ import annotations

from collections.abc import Callable

from search.program import LR, NUM_FIXED, ONE, G, Instruction, Program, T, W

S1, S2 = NUM_FIXED, NUM_FIXED + 1
# Scratch registers for programs with one and with two state slots.
R1, R2, R3, R4, R5 = range(NUM_FIXED + 2, NUM_FIXED + 7)


def _rate(beta: float) -> float:
    """`1 - beta` without the double rounding noise (`1 - 0.9 = 0.09999999999999998`)."""
    return round(1 - beta, 15)


def _i(op: str, out: int, *args: int, c: float = 0.0) -> Instruction:
    return Instruction(op, out, args, c)


def sgd() -> Program:
    """`u = lr g`."""
    return Program((_i("mul", R1, LR, G),), update=R1)


def momentum(beta: float = 0.9) -> Program:
    """Heavy ball as optax's `sgd(momentum=beta)`: `s1 = g + beta s1`, `u = lr s1`."""
    return Program(
        (_i("scale_c", R1, S1, c=beta), _i("add", S1, G, R1), _i("mul", R1, LR, S1)),
        update=R1,
        new_state=(S1,),
    )


def signsgd() -> Program:
    """`u = lr sign(g)`."""
    return Program((_i("sign", R1, G), _i("mul", R1, LR, R1)), update=R1)


def _adam_direction(b1: float, b2: float, eps: float) -> tuple[Instruction, ...]:
    """Adam's `m_hat / (sqrt(v_hat) + eps)` into R1, updating s1 = m and s2 = v."""
    return (
        _i("interp_c", S1, S1, G, c=_rate(b1)),  # m = b1 m + (1 - b1) g
        _i("square", R1, G),
        _i("interp_c", S2, S2, R1, c=_rate(b2)),  # v = b2 v + (1 - b2) g^2
        _i("const", R2, c=b1),
        _i("power", R2, R2, T),
        _i("one_minus", R2, R2),  # 1 - b1^t
        _i("div", R1, S1, R2),  # m_hat
        _i("const", R3, c=b2),
        _i("power", R3, R3, T),
        _i("one_minus", R3, R3),  # 1 - b2^t
        _i("div", R4, S2, R3),  # v_hat
        _i("sqrt_abs", R4, R4),
        _i("add_c", R4, R4, c=eps),
        _i("div", R1, R1, R4),
    )


def adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Program:
    """Adam with bias correction: `u = lr m_hat / (sqrt(v_hat) + eps)`."""
    body = (*_adam_direction(b1, b2, eps), _i("mul", R1, LR, R1))
    return Program(body, update=R1, new_state=(S1, S2))


def adamw(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 1e-4
) -> Program:
    """AdamW: `u = lr (m_hat / (sqrt(v_hat) + eps) + weight_decay w)` (optax's default decay)."""
    body = (
        *_adam_direction(b1, b2, eps),
        _i("scale_c", R2, W, c=weight_decay),
        _i("add", R1, R1, R2),
        _i("mul", R1, LR, R1),
    )
    return Program(body, update=R1, new_state=(S1, S2))


def lion(b1: float = 0.9, b2: float = 0.99, weight_decay: float = 1e-3) -> Program:
    """Lion: `u = lr (sign((1 - b1) g + b1 m) + weight_decay w)`, `m = (1 - b2) g + b2 m`."""
    body = (
        _i("interp_c", R1, S1, G, c=_rate(b1)),
        _i("sign", R1, R1),
        _i("scale_c", R2, W, c=weight_decay),
        _i("add", R1, R1, R2),
        _i("interp_c", S1, S1, G, c=_rate(b2)),
        _i("mul", R1, LR, R1),
    )
    return Program(body, update=R1, new_state=(S1,))


def muon(beta: float = 0.95, nesterov: bool = True) -> Program:
    """Muon (Jordan et al. 2024) as `baselines.muon` runs it on matrices: `m = beta m + (1 - beta)
    g`, `u = lr newton_schulz(beta m + (1 - beta) g)` (of `m` without `nesterov`), where the op
    `newton_schulz` of an `r x n` matrix is `sqrt(max(1, n / r))` times Muon's Newton-Schulz
    iteration. Vectors and scalars, which `baselines.muon` gives to AdamW, step by
    `lr m / rms(m)` (the op's rule for one row)."""
    lookahead = (_i("interp_c", R1, S1, G, c=_rate(beta)),) if nesterov else ()
    body = (
        _i("interp_c", S1, S1, G, c=_rate(beta)),
        *lookahead,
        _i("newton_schulz", R1, R1 if nesterov else S1),
        _i("mul", R1, LR, R1),
    )
    return Program(body, update=R1, new_state=(S1,))


def muon_adam(
    beta: float = 0.95, b2: float = 0.999, eps: float = 1e-8, nesterov: bool = True
) -> Program:
    """Muon with Adam for the other tensors, as `baselines.muon(adam_b1=beta)` runs it (with
    every tensor of two or more axes its matrices): the `muon` program's update on a matrix
    (`is_matrix` > 0), Adam's `lr m_hat / (sqrt(v_hat) + eps)` on a vector or scalar; both
    read one momentum `m = beta m + (1 - beta) g`."""
    muon_input = _i("interp_c", R2, S1, G, c=_rate(beta)) if nesterov else _i("copy", R2, S1)
    body = (
        *_adam_direction(beta, b2, eps),
        muon_input,
        _i("newton_schulz", R2, R2),
        _i("is_matrix", R3, G),
        _i("select", R1, R3, R2, R1),
        _i("mul", R1, LR, R1),
    )
    return Program(body, update=R1, new_state=(S1, S2))


MATCHED_RMS = 0.2
"""The entry RMS that `muon_adam_rms` and `orthogonal_adam` give an orthogonalized matrix step,
about AdamW's (Liu et al. 2025, "Muon is Scalable for LLM Training"), so that one learning rate
serves the matrices and the vectors, and AdamW's serves both."""


def _matched_matrix_step(direction: int, vector_step: int) -> tuple[Instruction, ...]:
    """R1 = `MATCHED_RMS normalize(newton_schulz(direction))` on a matrix, `vector_step` on a
    vector or scalar."""
    return (
        _i("newton_schulz", R2, direction),
        _i("normalize", R2, R2),
        _i("scale_c", R2, R2, c=MATCHED_RMS),
        _i("is_matrix", R3, G),
        _i("select", R1, R3, R2, vector_step),
    )


def muon_adam_rms(beta: float = 0.95, b2: float = 0.999, eps: float = 1e-8) -> Program:
    """`muon_adam` with the matrix step rescaled to AdamW's size: `u = lr 0.2 O / rms(O)`, `O` the
    Newton-Schulz orthogonalization of the Nesterov momentum `beta m + (1 - beta) g`, on a
    matrix; Adam's `lr m_hat / (sqrt(v_hat) + eps)` on a vector or scalar (Liu et al. 2025's
    Muon with one learning rate for both)."""
    body = (
        *_adam_direction(beta, b2, eps),
        _i("interp_c", R2, S1, G, c=_rate(beta)),
        *_matched_matrix_step(R2, R1),
        _i("mul", R1, LR, R1),
    )
    return Program(body, update=R1, new_state=(S1, S2))


def orthogonal_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Program:
    """Adam's direction `d = m_hat / (sqrt(v_hat) + eps)`, orthogonalized on a matrix: `u = lr
    0.2 O / rms(O)`, `O` the Newton-Schulz orthogonalization of `d`; `u = lr d` on a vector or
    scalar: the direction of `l2o.optimizers.celo` without its learned network, at AdamW's step
    size."""
    body = (*_adam_direction(b1, b2, eps), *_matched_matrix_step(R1, R1), _i("mul", R1, LR, R1))
    return Program(body, update=R1, new_state=(S1, S2))


def _scratch_from(instructions: tuple[Instruction, ...], first: int) -> tuple[Instruction, ...]:
    """`instructions` written for two state slots, with their scratch registers `R1, R2, ...`
    moved to `first, first + 1, ...` (to make room for more slots)."""

    def move(r: int) -> int:
        return r - R1 + first if r >= R1 else r

    return tuple(x.replace(out=move(x.out), args=tuple(map(move, x.args))) for x in instructions)


def orthogonal_adam_hd(
    kappa: float = 3e-3,
    omega: float = 0.5,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> Program:
    """`orthogonal_adam` with a per-tensor step size adapted by multiplicative hypergradient
    descent (Baydin et al. 2018, "Online Learning Rate Adaptation with Hypergradient
    Descent"): `h <- clip(h + kappa cos(g, d_prev), -10, 10)`, `u = lr exp(h) d`, where `d` is
    the step before `lr` and `d_prev` the last one. On a matrix `d = omega 0.2 O / rms(O) + (1 -
    omega) a`, `a` Adam's direction and `O` its orthogonalization (`omega = 1`:
    `orthogonal_adam`'s step; half of each by default, which on the held-out suite kept
    orthogonalization's gains on the image MLPs without its loss on grey CIFAR-10); `d = a`
    on a vector or scalar. The step grows while each gradient still points along the last step
    and shrinks when they disagree (`h` starts at 0: `lr` is the first step's size)."""
    s3, s4 = NUM_FIXED + 2, NUM_FIXED + 3
    d, c = NUM_FIXED + 4, NUM_FIXED + 5
    *matrix_step, choose = _matched_matrix_step(R1, R1)
    blend = (_i("interp_c", R2, R1, R2, c=omega),) if omega != 1.0 else ()
    direction = _scratch_from((*_adam_direction(b1, b2, eps), *matrix_step, *blend, choose), d)
    body = (
        *direction,
        _i("cosine", c, G, s4),  # 0 at the first step (s4 = 0)
        _i("scale_c", c, c, c=kappa),
        _i("add", s3, s3, c),
        _i("clip_c", s3, s3, c=10.0),
        _i("copy", s4, d),
        _i("exp", c, s3),
        _i("mul", d, d, c),
        _i("mul", d, LR, d),
    )
    return Program(body, update=d, new_state=(S1, S2, s3, s4))


def adafactor(decay_rate: float = 0.8, eps: float = 1e-30, eps_scale: float = 1e-3) -> Program:
    """Adafactor as `baselines.adafactor` with its defaults (factored, update clipping at 1,
    relative step sizes, no momentum): `R`, `C` EMAs of the row and column means of `g^2 + eps`
    at the rate `t^(-decay_rate)` (the ops `row_rms`, `col_rms` squared), `U = g / sqrt(R C /
    mean(R))`, `u = lr max(eps_scale, rms(w)) U / max(1, rms(U))`. The slots hold `R` and `C`
    repeated over the tensor's shape (the rule, not the memory, of Adafactor); a vector's
    `R C / mean(R)` is its full second moment, as in Adafactor. `U` is computed as
    `g rms(sqrt(R)) / (sqrt(R) sqrt(C))`, whose divisors stay above the ops' `TINY` for
    gradients down to 1e-11."""
    body = (
        _i("pow_c", R2, T, c=-decay_rate),  # the EMAs' rate 1 - beta2_t, 1 at t = 1
        _i("row_rms", R1, G),
        _i("square", R1, R1),
        _i("add_c", R1, R1, c=eps),
        _i("interpolate", S1, S1, R1, R2),  # R
        _i("col_rms", R1, G),
        _i("square", R1, R1),
        _i("add_c", R1, R1, c=eps),
        _i("interpolate", S2, S2, R1, R2),  # C
        _i("sqrt_abs", R3, S1),
        _i("div", R1, G, R3),
        _i("rms", R4, R3),  # sqrt(mean(R))
        _i("mul", R1, R1, R4),
        _i("sqrt_abs", R3, S2),
        _i("div", R1, R1, R3),  # U = g sqrt(mean(R)) / (sqrt(R) sqrt(C))
        _i("rms", R3, R1),
        _i("max", R3, R3, ONE),
        _i("div", R1, R1, R3),  # U / max(1, rms(U))
        _i("rms", R3, W),
        _i("const", R5, c=eps_scale),
        _i("max", R3, R3, R5),
        _i("mul", R1, R1, R3),
        _i("mul", R1, LR, R1),
    )
    return Program(body, update=R1, new_state=(S1, S2))


PROGRAMS: dict[str, Callable[..., Program]] = {
    "sgd": sgd,
    "momentum": momentum,
    "signsgd": signsgd,
    "adam": adam,
    "adamw": adamw,
    "lion": lion,
    "muon": muon,
    "muon_adam": muon_adam,
    "muon_adam_rms": muon_adam_rms,
    "orthogonal_adam": orthogonal_adam,
    "orthogonal_adam_hd": orthogonal_adam_hd,
    "adafactor": adafactor,
}


def get_program(name: str, **hparams) -> Program:
    """The warm-start program `name` with keyword `hparams`; unknown names list the valid ones."""
    if name not in PROGRAMS:
        raise ValueError(f"unknown program {name!r}; valid programs: {', '.join(PROGRAMS)}")
    return PROGRAMS[name](**hparams)
