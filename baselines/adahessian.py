"""AdaHessian: Adam with a Hutchinson estimate of the Hessian diagonal in place of g^2 (Yao et al.
2021, "ADAHESSIAN: An Adaptive Second Order Optimizer for Machine Learning")."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any
ObjFn = Callable[[optax.Params], jax.Array]
CONV_NDIM = 4  # a 2-D convolution kernel; haiku stores it as (height, width, in, out)
CONV_SPATIAL_AXES = (0, 1)


class AdaHessianState(NamedTuple):
    """Step count, the moving averages of the gradient (`mu`) and of the squared Hessian
    diagonal (`nu`), and the key of the Rademacher probes."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    key: jax.Array


def rademacher_like(key: jax.Array, params: optax.Params, num_samples: int = 1) -> PyTree:
    """`num_samples` Rademacher vectors (entries +-1) shaped like `params`, stacked on axis 0.

    Each entry is one random bit (32 per uint32 word), so drawing them costs 1/32 of
    `jax.random.rademacher`, which spends a whole random word on each.
    """

    def probe(leaf, k):
        shape = (num_samples, *jnp.shape(leaf))
        size = math.prod(shape)
        words = jax.random.bits(k, (-(-size // 32),), jnp.uint32)
        shifts = jnp.arange(32, dtype=jnp.uint32)
        bits = (words[:, None] >> shifts[None, :]) & 1
        z = 1 - 2 * bits.reshape(-1)[:size].astype(jnp.int32)
        return z.reshape(shape).astype(jnp.result_type(leaf))

    return jax.tree.map(probe, params, optax.tree.split_key_like(key, params))


def hutchinson(
    obj_fn: ObjFn, params: optax.Params, key: jax.Array, num_samples: int = 1
) -> tuple[optax.Updates, PyTree]:
    """Gradient of `obj_fn` and the Hutchinson estimate mean_j z_j * (H z_j) of diag(H).

    One forward-over-reverse pass (`jax.jvp` of `jax.grad`) gives both the gradient and the
    Hessian-vector products, so the estimate costs about one extra backward pass.
    """
    z = rademacher_like(key, params, num_samples)

    def grad_and_hvp(z_j):
        return jax.jvp(jax.grad(obj_fn), (params,), (z_j,))

    grads, hz = jax.vmap(grad_and_hvp, out_axes=(None, 0))(z)
    diag = jax.tree.map(lambda z_, hz_: jnp.mean(z_ * hz_, axis=0), z, hz)
    return grads, diag


def spatial_average(diag: PyTree, axes: Sequence[int] = CONV_SPATIAL_AXES) -> PyTree:
    """Average each 4-D (convolution kernel) leaf over its spatial `axes` (paper eq. 9)."""

    def average(d):
        if d.ndim != CONV_NDIM:
            return d
        return jnp.broadcast_to(jnp.mean(d, axis=tuple(axes), keepdims=True), d.shape)

    return jax.tree.map(average, diag)


def scale_by_adahessian(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-4,
    hessian_power: float = 1.0,
    num_samples: int = 1,
    spatial_averaging: bool = True,
    use_obj_fn_grad: bool = True,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """Rescale by the bias-corrected moments of AdaHessian: mu_hat / (nu_hat^(k/2) + eps).

    `update` needs the keyword-only extra argument `obj_fn` (the loss as a function of params);
    see `adahessian` for the rule and the arguments.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")

    def init_fn(params):
        return AdaHessianState(
            count=jnp.zeros([], jnp.int32),
            mu=optax.tree.zeros_like(params),
            nu=optax.tree.zeros_like(params),
            key=jax.random.key(seed),
        )

    def update_fn(updates, state, params=None, *, obj_fn: ObjFn | None = None, **extra_args):
        del extra_args
        if obj_fn is None:
            raise ValueError(
                "AdaHessian needs the loss: call update(..., obj_fn=f) with f(params) -> scalar "
                "(tasks.train passes it); it estimates diag(H) from Hessian-vector products of f"
            )
        if params is None:
            raise ValueError("AdaHessian needs params: call update(updates, state, params, ...)")
        key, probe_key = jax.random.split(state.key)
        grads, diag = hutchinson(obj_fn, params, probe_key, num_samples)
        g = grads if use_obj_fn_grad else updates
        d = spatial_average(diag) if spatial_averaging else diag
        mu = optax.tree.update_moment(g, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(d, state.nu, b2, 2)
        count = optax.safe_increment(state.count)
        mu_hat = optax.tree.bias_correction(mu, b1, count)
        nu_hat = optax.tree.bias_correction(nu, b2, count)
        updates = jax.tree.map(
            lambda m, v: m / (jnp.power(v, hessian_power / 2) + eps), mu_hat, nu_hat
        )
        updates = optax.tree.cast_like(updates, params)
        return updates, AdaHessianState(count=count, mu=mu, nu=nu, key=key)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def adahessian(
    learning_rate: optax.ScalarOrSchedule = 0.15,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-4,
    hessian_power: float = 1.0,
    weight_decay: float = 0.0,
    num_samples: int = 1,
    spatial_averaging: bool = True,
    use_obj_fn_grad: bool = True,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    r"""AdaHessian: Adam whose second moment tracks the squared Hessian diagonal.

    With Rademacher probes z_j (entries +-1, drawn from the key in the state), H the Hessian of
    `obj_fn` at theta_{t-1} and k the Hessian power:

    .. math::
      D_t = \tfrac{1}{S}\sum_{j=1}^{S} z_j \odot (H z_j), \qquad
      D^{(s)}_t = \text{mean of } D_t \text{ over each convolution kernel's spatial block} \\
      \mu_t = b_1 \mu_{t-1} + (1 - b_1) g_t, \qquad
      \nu_t = b_2 \nu_{t-1} + (1 - b_2) D^{(s)}_t \odot D^{(s)}_t \\
      \hat\mu_t = \mu_t / (1 - b_1^t), \qquad \hat\nu_t = \nu_t / (1 - b_2^t) \\
      \theta_t = \theta_{t-1} - \eta_t \big(\hat\mu_t / (\hat\nu_t^{k/2} + \epsilon)
        + \lambda \theta_{t-1}\big)

    E[z z^T] = I makes D_t unbiased for diag(H), with variance sum_{j != i} H_ij^2 / S per
    entry. The gradient g_t and all H z_j come from one forward-over-reverse pass over
    `obj_fn`, so a step costs about one backward pass more than Adam. The spatial average is
    the paper's eq. 9 (signed, over the D_t entries of each block); the authors' code averages
    |H z| instead, which is the same for blocks of size 1.

    `update` takes the loss as the keyword-only extra argument `obj_fn(params) -> scalar`
    (`tasks.train` passes the current batch's loss) and raises a ValueError without it.

    Args:
      learning_rate: eta, a scalar or a schedule.
      b1: decay of the gradient's moving average.
      b2: decay of the moving average of the squared Hessian diagonal.
      eps: added to the denominator.
      hessian_power: k in (0, 1]; 1 is the full Newton-like scaling.
      weight_decay: lambda, decoupled (applied after the preconditioning, as in AdamW).
      num_samples: S, Rademacher probes per step.
      spatial_averaging: average D_t over the spatial axes (0, 1) of every 4-D leaf (a
        convolution kernel in haiku's (h, w, in, out) layout); the other leaves use blocks of 1.
      use_obj_fn_grad: use the gradient of `obj_fn` from the Hessian-vector pass (then the
        caller's own gradient is dead code under `jax.jit`); False uses the incoming updates,
        e.g. from another gradient estimator.
      seed: of the Rademacher probes' key (kept in the state, split at each update).

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      Yao, Gholami, Shen, Mustafa, Keutzer & Mahoney, "ADAHESSIAN: An Adaptive Second Order
      Optimizer for Machine Learning", AAAI 2021 (arXiv:2006.00719). Defaults (lr 0.15,
      betas (0.9, 0.999), eps 1e-4, k 1, weight decay 0) from the authors' reference code.
      Hutchinson, "A stochastic estimator of the trace of the influence matrix for Laplacian
      smoothing splines", 1990.
    """
    return optax.chain(
        scale_by_adahessian(
            b1, b2, eps, hessian_power, num_samples, spatial_averaging, use_obj_fn_grad, seed
        ),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )
