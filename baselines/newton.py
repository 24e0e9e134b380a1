"""Full-batch second-order baselines: damped Newton and L-BFGS, with a backtracking Armijo line
search (Nocedal & Wright, "Numerical Optimization", 2006, ch. 3, 6 and 7)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

ObjFn = Callable[[optax.Params], jax.Array]


def _require_obj_fn(name: str, obj_fn: ObjFn | None, params: optax.Params | None) -> None:
    """Raise a ValueError naming what `name`'s update is missing."""
    if obj_fn is None:
        raise ValueError(
            f"{name} needs the loss: call update(..., obj_fn=f) with f(params) -> scalar "
            "(tasks.train passes it); it evaluates f for its derivatives and line search"
        )
    if params is None:
        raise ValueError(f"{name} needs params: call update(updates, state, params, ...)")


def flat_objective(obj_fn: ObjFn, params: optax.Params):
    """`(x, f, unravel)`: params as one vector `x` and `obj_fn` as a function `f` of it."""
    x, unravel = ravel_pytree(params)
    return x, (lambda v: obj_fn(unravel(v))), unravel


def backtracking(
    f: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    value: jax.Array,
    slope: jax.Array,
    d: jax.Array,
    c1: float = 1e-4,
    decrease_factor: float = 0.5,
    max_steps: int = 30,
) -> tuple[jax.Array, jax.Array]:
    """Armijo backtracking: `(t, found)`, t the first of 1, r, r^2, ... (r = decrease_factor,
    at most `max_steps` trials) with f(x + t d) <= value + c1 t slope; t = 0 when none is.

    A bounded `lax.while_loop`, so it runs under `jit`, `scan` and `vmap`.
    """

    def cond(carry):
        i, _, found = carry
        return (i < max_steps) & ~found

    def body(carry):
        i, t, _ = carry
        found = f(x + t * d) <= value + c1 * t * slope  # False for NaN
        return i + 1, jnp.where(found, t, t * decrease_factor), found

    init = (jnp.zeros([], jnp.int32), jnp.ones([], x.dtype), jnp.zeros([], bool))
    _, t, found = jax.lax.while_loop(cond, body, init)
    return jnp.where(found, t, jnp.zeros_like(t)), found


def scale_by_newton(
    damping: float = 1e-4,
    linesearch: bool = True,
    c1: float = 1e-4,
    decrease_factor: float = 0.5,
    max_backtracking_steps: int = 30,
) -> optax.GradientTransformationExtraArgs:
    """Rescale to the damped Newton step t (H + mu I)^{-1} g (see `newton`); needs `obj_fn`."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, *, obj_fn: ObjFn | None = None, **extra_args):
        del updates, extra_args
        _require_obj_fn("Newton", obj_fn, params)
        x, f, unravel = flat_objective(obj_fn, params)
        value, g = jax.value_and_grad(f)(x)
        H_NxN = jax.hessian(f)(x)
        lam, V_NxN = jnp.linalg.eigh(0.5 * (H_NxN + H_NxN.T))
        mu = damping + jnp.maximum(0.0, -lam[0])
        d = -V_NxN @ ((V_NxN.T @ g) / (lam + mu))
        d = jnp.where(jnp.all(jnp.isfinite(d)) & (g @ d < 0), d, -g)  # e.g. damping 0, H singular
        if linesearch:
            t, _ = backtracking(f, x, value, g @ d, d, c1, decrease_factor, max_backtracking_steps)
        else:
            t = jnp.ones([], x.dtype)
        return unravel(-t * d), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def newton(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    damping: float = 1e-4,
    linesearch: bool = True,
    c1: float = 1e-4,
    decrease_factor: float = 0.5,
    max_backtracking_steps: int = 30,
) -> optax.GradientTransformationExtraArgs:
    r"""Damped Newton's method with the exact Hessian of the flattened params.

    .. math::
      d_k = -(H_k + \mu_k I)^{-1} g_k, \qquad
      \mu_k = \text{damping} + \max(0, -\lambda_{\min}(H_k)) \\
      \theta_{k+1} = \theta_k + \eta_k t_k d_k, \qquad
      t_k = \max\{r^i : f(\theta_k + r^i d_k) \le f(\theta_k) + c_1 r^i g_k^\top d_k\}

    On a quadratic with `damping` -> 0 one step lands on the minimiser. The shift mu keeps
    H + mu I positive definite, so d_k is a descent direction even where H is indefinite (far
    from a minimum, near saddle points); the line search then guards against overlong steps.

    Caveats: H has n^2 entries and the eigendecomposition costs O(n^3), so this is for small
    problems (a few thousand parameters at most), and both assume a deterministic full-batch
    `obj_fn`: with mini-batch noise the Hessian and the line search see a different function
    at every step.

    `update` takes the loss as the keyword-only extra argument `obj_fn(params) -> scalar`
    (`tasks.train` passes it) and raises a ValueError without it; the incoming gradient is
    not used.

    Args:
      learning_rate: eta, multiplies the accepted step; 1 is the classic method.
      damping: smallest shift added to the Hessian's eigenvalues.
      linesearch: backtrack from t = 1 until the Armijo condition holds; else t = 1.
      c1: Armijo sufficient-decrease constant.
      decrease_factor: r, the step's shrink factor per trial.
      max_backtracking_steps: trials before giving up (the step is then 0).

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      Nocedal & Wright, "Numerical Optimization", 2nd ed. 2006: ch. 3 (line search, Newton
      with Hessian modification), ch. 4 (Levenberg-Marquardt shifts).
    """
    return optax.chain(
        scale_by_newton(damping, linesearch, c1, decrease_factor, max_backtracking_steps),
        optax.scale_by_learning_rate(learning_rate),
    )


class LbfgsState(NamedTuple):
    """Memory of L-BFGS: the last `memory_size` pairs s_i = x_{i+1} - x_i, y_i = g_{i+1} - g_i
    (rows of `s`, `y`, ring buffer with next slot `head`), rho_i = 1 / s_i'y_i (0 in empty
    slots), and the previous flat params and gradient."""

    count: jax.Array
    params: jax.Array
    grad: jax.Array
    s: jax.Array
    y: jax.Array
    rho: jax.Array
    head: jax.Array


def two_loop(g: jax.Array, s_MxN, y_MxN, rho_M, head: jax.Array, gamma: jax.Array) -> jax.Array:
    """H_k g by the two-loop recursion, H_0 = gamma I; slots with rho = 0 are skipped."""
    m = rho_M.shape[0]
    newest_first = (head - 1 - jnp.arange(m)) % m

    def backward(q, i):
        alpha = rho_M[i] * (s_MxN[i] @ q)
        return q - alpha * y_MxN[i], alpha

    q, alphas = jax.lax.scan(backward, g, newest_first)

    def forward(r, i_alpha):
        i, alpha = i_alpha
        beta = rho_M[i] * (y_MxN[i] @ r)
        return r + (alpha - beta) * s_MxN[i], None

    r, _ = jax.lax.scan(forward, gamma * q, (newest_first[::-1], alphas[::-1]))
    return r


def scale_by_lbfgs(
    memory_size: int = 10,
    c1: float = 1e-4,
    decrease_factor: float = 0.5,
    max_backtracking_steps: int = 30,
) -> optax.GradientTransformationExtraArgs:
    """Rescale to the L-BFGS step t H_k g_k after an Armijo line search (see `lbfgs`)."""
    if memory_size < 1:
        raise ValueError(f"memory_size must be >= 1, got {memory_size}")

    def init_fn(params):
        x, _ = ravel_pytree(params)
        m, n = memory_size, x.size
        return LbfgsState(
            count=jnp.zeros([], jnp.int32),
            params=jnp.zeros_like(x),
            grad=jnp.zeros_like(x),
            s=jnp.zeros((m, n), x.dtype),
            y=jnp.zeros((m, n), x.dtype),
            rho=jnp.zeros((m,), x.dtype),
            head=jnp.zeros([], jnp.int32),
        )

    def update_fn(updates, state, params=None, *, obj_fn: ObjFn | None = None, **extra_args):
        del updates, extra_args
        _require_obj_fn("L-BFGS", obj_fn, params)
        x, f, unravel = flat_objective(obj_fn, params)
        value, g = jax.value_and_grad(f)(x)

        # Store the pair of the previous step if it has positive curvature s'y > 0.
        s_new, y_new = x - state.params, g - state.grad
        sy = s_new @ y_new
        keep = (state.count > 0) & (sy > 1e-10 * jnp.linalg.norm(s_new) * jnp.linalg.norm(y_new))
        s = jnp.where(keep, state.s.at[state.head].set(s_new), state.s)
        y = jnp.where(keep, state.y.at[state.head].set(y_new), state.y)
        rho = jnp.where(keep, state.rho.at[state.head].set(1.0 / sy), state.rho)
        head = jnp.where(keep, (state.head + 1) % memory_size, state.head)

        # H_0 = gamma I with gamma = s'y / y'y of the newest pair; a unit-length step if none.
        newest = (head - 1) % memory_size
        g_norm = jnp.linalg.norm(g)
        gamma_0 = jnp.where(g_norm > 0, 1.0 / g_norm, 1.0)
        yy = y[newest] @ y[newest]
        gamma = jnp.where(
            rho[newest] > 0, (s[newest] @ y[newest]) / jnp.where(yy > 0, yy, 1.0), gamma_0
        )
        d = -two_loop(g, s, y, rho, head, gamma)

        # Not a descent direction (or not finite): forget the memory, use -g.
        reset = ~(g @ d < 0)
        d = jnp.where(reset, -gamma_0 * g, d)
        t, found = backtracking(f, x, value, g @ d, d, c1, decrease_factor, max_backtracking_steps)
        # A failed line search also empties the memory, so the next step is steepest descent.
        reset = reset | ~found
        new_state = LbfgsState(
            count=optax.safe_increment(state.count),
            params=x,
            grad=g,
            s=jnp.where(reset, jnp.zeros_like(s), s),
            y=jnp.where(reset, jnp.zeros_like(y), y),
            rho=jnp.where(reset, jnp.zeros_like(rho), rho),
            head=jnp.where(reset, jnp.zeros_like(head), head),
        )
        return unravel(-t * d), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def lbfgs(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    memory_size: int = 10,
    c1: float = 1e-4,
    decrease_factor: float = 0.5,
    max_backtracking_steps: int = 30,
) -> optax.GradientTransformationExtraArgs:
    r"""Limited-memory BFGS with a backtracking Armijo line search on `obj_fn`.

    With the last m pairs s_i = \theta_{i+1} - \theta_i, y_i = g_{i+1} - g_i (kept only if
    s_i^T y_i > 0), H_k is the BFGS inverse-Hessian approximation built from
    H_k^0 = \gamma_k I, applied to g_k by the two-loop recursion in O(m n):

    .. math::
      \gamma_k = \frac{s_{k-1}^\top y_{k-1}}{y_{k-1}^\top y_{k-1}}, \qquad
      d_k = -H_k g_k \\
      \theta_{k+1} = \theta_k + \eta_k t_k d_k, \qquad
      t_k = \max\{r^i : f(\theta_k + r^i d_k) \le f(\theta_k) + c_1 r^i g_k^\top d_k\}

    The pairs come from the params and gradients actually seen at consecutive steps, so a
    learning rate or schedule is accounted for. Without pairs (the first step, or after a
    non-descent direction or a failed line search, which empty the memory) d_k = -g_k / |g_k|.

    Caveats: L-BFGS needs a deterministic, full-batch `obj_fn`. With mini-batch noise the
    differences y_i mix curvature with noise, the curvature pairs and the line search become
    meaningless and the method breaks down; use it on small full-batch problems. The memory
    costs 2 m n numbers (m = 10 is the usual choice; larger m approaches BFGS).

    `update` takes the loss as the keyword-only extra argument `obj_fn(params) -> scalar`
    (`tasks.train` passes it) and raises a ValueError without it; the incoming gradient is
    not used.

    Args:
      learning_rate: eta, multiplies the accepted step; 1 is the classic method.
      memory_size: m, the number of stored pairs.
      c1: Armijo sufficient-decrease constant.
      decrease_factor: r, the step's shrink factor per trial.
      max_backtracking_steps: trials before giving up (the step is then 0).

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      Liu & Nocedal, "On the limited memory BFGS method for large scale optimization",
      Mathematical Programming 45, 1989. Nocedal & Wright, "Numerical Optimization", 2nd ed.
      2006, algorithm 7.4 (two-loop recursion) and eq. 7.20 (the scaling gamma_k).
    """
    return optax.chain(
        scale_by_lbfgs(memory_size, c1, decrease_factor, max_backtracking_steps),
        optax.scale_by_learning_rate(learning_rate),
    )
