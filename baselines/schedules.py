"""Learning-rate schedules `count -> lr` and reduce-on-plateau (seeds 000, 001; Goyal et al. 2017).

Every schedule follows optax's `Schedule` convention: a pure function of the step `count` built
from jnp operations only, so it runs under `jax.jit` and `jax.vmap`, and its hyperparameters
(`learning_rate`, `factor`, `alpha`, ...) may be traced arrays. Pass one as the `learning_rate`
of any optax optimizer. The formulas follow the seed lectures 000 and 001.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from tasks.registry import build_registered

Scalar = float | jax.Array


def _float(count) -> jax.Array:
    return jnp.asarray(count, jnp.float32)


def constant(learning_rate: Scalar) -> optax.Schedule:
    """eta_t = eta_0 for every t."""

    def schedule(count):
        return jnp.asarray(learning_rate, jnp.float32) * jnp.ones_like(_float(count))

    return schedule


def step(
    learning_rate: Scalar,
    factor: Scalar = 0.1,
    step_size: int | None = None,
    boundaries: Sequence[int] | None = None,
) -> optax.Schedule:
    """Step decay: multiply eta by `factor` every `step_size` steps, or at each of `boundaries`.

    eta_t = eta_0 * factor ** floor(t / step_size), or eta_0 * factor ** #{b in boundaries: t >= b}.
    The lectures' ResNet recipe is `boundaries=(T // 2, 3 * T // 4)`, `factor=0.1` (seeds 000, 001;
    He et al. 2016). Give exactly one of `step_size` and `boundaries`.
    """
    if (step_size is None) == (boundaries is None):
        raise ValueError("step: give exactly one of step_size and boundaries")
    if boundaries is not None:
        bounds = tuple(boundaries)

        def num_decays(t):
            return sum((jnp.where(t >= b, 1.0, 0.0) for b in bounds), jnp.zeros_like(t))

    else:

        def num_decays(t):
            return jnp.floor(t / step_size)

    def schedule(count):
        return learning_rate * jnp.power(factor, num_decays(_float(count)))

    return schedule


def exponential(
    learning_rate: Scalar, decay_rate: Scalar = 0.99, transition_steps: Scalar = 1
) -> optax.Schedule:
    """Exponential decay: eta_t = eta_0 * decay_rate ** (t / transition_steps) (seed 001).

    The lecture's eta_t = alpha^t eta_0 is `transition_steps=1`; it equals
    `optax.exponential_decay(eta_0, transition_steps, decay_rate)`.
    """

    def schedule(count):
        return learning_rate * jnp.power(decay_rate, _float(count) / transition_steps)

    return schedule


def cosine(learning_rate: Scalar, decay_steps: Scalar, alpha: Scalar = 0.0) -> optax.Schedule:
    """Cosine decay to the floor eta_min = alpha * eta_0 after `decay_steps` = T steps.

    eta_t = eta_min + (eta_0 - eta_min) * (1 + cos(pi * min(t, T) / T)) / 2, constant after T
    (seeds 000, 001; Loshchilov & Hutter 2017, "SGDR"). Equals `optax.cosine_decay_schedule`.
    """

    def schedule(count):
        t = jnp.minimum(_float(count), decay_steps)
        decay = 0.5 * (1.0 + jnp.cos(jnp.pi * t / decay_steps))
        return learning_rate * (alpha + (1.0 - alpha) * decay)

    return schedule


def linear(learning_rate: Scalar, decay_steps: Scalar, alpha: Scalar = 0.0) -> optax.Schedule:
    """Linear decay to alpha * eta_0 after `decay_steps` = T steps, constant afterwards.

    eta_t = eta_0 * (1 - (1 - alpha) * min(t, T) / T); `alpha=0` is the lecture's
    eta_0 (1 - t / T) (seed 000). Equals `optax.linear_schedule(eta_0, alpha * eta_0, T)`.
    """

    def schedule(count):
        frac = jnp.minimum(_float(count), decay_steps) / decay_steps
        return learning_rate * (1.0 - (1.0 - alpha) * frac)

    return schedule


def inverse_sqrt(learning_rate: Scalar, warmup_steps: Scalar = 1) -> optax.Schedule:
    """Inverse square root decay: eta_t = eta_0 * rsqrt(max(t, w) / w), w = `warmup_steps`.

    Constant eta_0 for the first w steps, then eta_0 * sqrt(w / t); `w=1` is the lecture's
    eta_0 / sqrt(t) (seed 000) with eta_0 at t = 0 (Vaswani et al. 2017, without the ramp:
    compose with `warmup(inverse_sqrt(eta_0, w), w)` for the Transformer schedule's shape).
    """

    def schedule(count):
        return learning_rate * jax.lax.rsqrt(
            jnp.maximum(_float(count), warmup_steps) / warmup_steps
        )

    return schedule


def warmup(
    schedule: optax.Schedule, warmup_steps: Scalar, init_value: Scalar = 0.0
) -> optax.Schedule:
    """Linear warm-up from `init_value` to `schedule(0)` over W = `warmup_steps`, then `schedule`.

    eta_t = init + (schedule(0) - init) * t / W for t < W, and schedule(t - W) afterwards, so the
    decay starts when the warm-up ends (Goyal et al. 2017, "Accurate, Large Minibatch SGD";
    seeds 000, 001). `warmup(cosine(peak, T - W, alpha), W, init)` equals
    `optax.warmup_cosine_decay_schedule(init, peak, W, T, alpha * peak)`.
    """

    def warmed(count):
        t = _float(count)
        peak = schedule(jnp.zeros_like(t))
        ramp = init_value + (peak - init_value) * t / jnp.maximum(warmup_steps, 1)
        return jnp.where(t < warmup_steps, ramp, schedule(jnp.maximum(t - warmup_steps, 0.0)))

    return warmed


class ReduceOnPlateauState(NamedTuple):
    """Best loss so far, non-improving steps since, cooldown steps left, and the update scale."""

    best_loss: jax.Array
    plateau_count: jax.Array
    cooldown_count: jax.Array
    scale: jax.Array


def reduce_on_plateau(
    factor: Scalar = 0.1,
    patience: int = 10,
    cooldown: int = 0,
    rtol: Scalar = 1e-4,
    atol: Scalar = 0.0,
    min_scale: Scalar = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """Reduce on plateau: scale updates by `factor` once the loss stops improving (seed 001).

    A loss L_t improves when L_t < best - atol - rtol * |best|; then best <- L_t and the plateau
    count p resets, else p <- p + 1. When p reaches `patience`, scale <- max(scale * factor,
    min_scale), p <- 0, and the next `cooldown` steps ignore non-improving losses. Updates are
    multiplied by the scale of the current step, so put it after the optimizer in a chain:
    `optax.chain(optax.sgd(lr), reduce_on_plateau())`. It reads the keyword extra arg `loss`
    (the training loss `tasks.train` passes; a smoothed or validation loss works too).
    Matches `optax.contrib.reduce_on_plateau` with `accumulation_size=1` for positive losses.

    Args:
      factor: multiplier of the scale on each plateau, in (0, 1).
      patience: non-improving steps before a reduction.
      cooldown: steps after a reduction during which non-improving losses are not counted.
      rtol: relative improvement threshold.
      atol: absolute improvement threshold.
      min_scale: the scale never goes below this.

    Returns:
      An `optax.GradientTransformationExtraArgs` whose update needs `loss=`.
    """

    def init_fn(params):
        del params
        return ReduceOnPlateauState(
            best_loss=jnp.asarray(jnp.inf, jnp.float32),
            plateau_count=jnp.zeros((), jnp.int32),
            cooldown_count=jnp.zeros((), jnp.int32),
            scale=jnp.ones((), jnp.float32),
        )

    def update_fn(updates, state, params=None, *, loss, **extra_args):
        del params, extra_args
        loss = jnp.asarray(loss, jnp.float32)
        best = state.best_loss
        threshold = jnp.where(jnp.isfinite(best), best - atol - rtol * jnp.abs(best), jnp.inf)
        improved = loss < threshold  # a NaN loss never improves
        best = jnp.where(improved, loss, best)
        plateau = jnp.where(improved, 0, state.plateau_count + 1)
        in_cooldown = state.cooldown_count > 0
        reduce = jnp.logical_and(~in_cooldown, plateau >= patience)
        scale = jnp.where(reduce, jnp.maximum(state.scale * factor, min_scale), state.scale)
        plateau = jnp.where(jnp.logical_or(in_cooldown, reduce), 0, plateau)
        cooldown_count = jnp.where(
            in_cooldown, state.cooldown_count - 1, jnp.where(reduce, cooldown, 0)
        ).astype(jnp.int32)
        scale = scale.astype(jnp.float32)
        new_state = ReduceOnPlateauState(best, plateau.astype(jnp.int32), cooldown_count, scale)
        updates = jax.tree.map(lambda u: (scale * u).astype(u.dtype), updates)
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


SCHEDULES: dict[str, Callable[..., optax.Schedule]] = {
    "constant": constant,
    "step": step,
    "exponential": exponential,
    "cosine": cosine,
    "linear": linear,
    "inverse_sqrt": inverse_sqrt,
}


def list_schedules() -> list[str]:
    """Names of all schedules."""
    return sorted(SCHEDULES)


def get_schedule(name: str, **kwargs) -> optax.Schedule:
    """Schedule `name` built from keyword `kwargs`, e.g. `learning_rate=0.1, decay_steps=100`.

    Wrap the result in `warmup(...)` for a linear warm-up.
    """
    return build_registered(SCHEDULES, name, "schedule", "schedules", **kwargs)
