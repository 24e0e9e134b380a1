"""Gradient estimators `grad_fn(task, params, key, batch) -> (loss, grads)` (seed 004).

Besides exact backpropagation: the forward gradient (Baydin et al. 2022), an unbiased estimate
from one forward-mode pass, and direct feedback alignment (Nokland 2016), which sends the output
error to every hidden layer through fixed random matrices. Any estimator works with any
optimizer: `tasks.train(task, optimizer, num_steps, key, grad_fn=dfa())`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from tasks import backprop
from tasks.base import Params, Task
from tasks.registry import build_registered
from tasks.train import GradFn


def backpropagation() -> GradFn:
    """Exact gradients by reverse-mode autodiff: `tasks.backprop`."""
    return backprop


def forward_gradient(num_tangents: int = 1) -> GradFn:
    """Forward gradient: g = (1/k) sum_i (grad f . v_i) v_i with tangents v_i ~ N(0, I).

    Each directional derivative d_i = grad f . v_i comes from one `jax.jvp` of the batch loss (a
    forward-mode pass, no backpropagation); v_i spans the whole params pytree. Since
    E[v v^T] = I, E[d v] = grad f: the estimate is unbiased, with covariance
    (||grad f||^2 I + grad f grad f^T) / k for k = `num_tangents`, i.e. total variance
    (n + 1) ||grad f||^2 / k in n parameters. The k tangent passes are vmapped.

    Args:
      num_tangents: k, the number of random directions averaged per step.

    Returns:
      `grad_fn(task, params, key, batch) -> (loss, grads)`; `key` is split into the loss key and
      the tangent keys.

    References:
      Baydin, Pearlmutter, Syme, Wood & Torr 2022, "Gradients without Backpropagation",
      https://arxiv.org/abs/2202.08587
    """
    if num_tangents < 1:
        raise ValueError(f"forward_gradient needs num_tangents >= 1, got {num_tangents}")

    def grad_fn(task: Task, params: Params, key: jax.Array, batch) -> tuple[jax.Array, Params]:
        loss_key, tangent_key = jax.random.split(key)

        def loss_fn(p):
            return task.loss(p, loss_key, batch)[0]

        # One draw for all k tangents: a single PRNG call compiles much faster than one per leaf.
        flat, unravel = ravel_pytree(params)
        v_KxN = jax.random.normal(tangent_key, (num_tangents, flat.size), flat.dtype)

        def directional(v_N):
            v = unravel(v_N)
            loss, d = jax.jvp(loss_fn, (params,), (v,))
            return loss, d * v_N

        losses, estimates_KxN = jax.vmap(directional)(v_KxN)
        return losses[0], unravel(jnp.mean(estimates_KxN, axis=0))

    return grad_fn


def feedback_matrices(seed: int, num_outputs: int, widths: tuple[int, ...]) -> list[jax.Array]:
    """Fixed B_l ~ N(0, 1 / width_l) of shape [num_outputs, width_l], one per hidden layer."""
    base = jax.random.key(seed)
    return [
        jax.random.normal(jax.random.fold_in(base, l), (num_outputs, w), jnp.float32)
        / jnp.sqrt(jnp.float32(w))
        for l, w in enumerate(widths)
    ]


def dfa(seed: int = 0) -> GradFn:
    """Direct feedback alignment: hidden layers learn from the output error through fixed B_l.

    Forward pass a_l = h_{l-1} W_l + b_l, h_l = f(a_l) (h_0 the inputs), logits a_L. With
    e = dL/da_L (autodiff of the loss w.r.t. the logits only; it carries the batch mean's 1/B),
    the output layer gets its true gradient dW_L = h_{L-1}^T e, db_L = sum_batch e, and each
    hidden layer l gets delta_l = (e B_l) * f'(a_l), dW_l = h_{l-1}^T delta_l,
    db_l = sum_batch delta_l, where B_l [num_outputs, width_l] is fixed and random, replacing
    the backpropagated W_L^T ... W_{l+1}^T. The forward weights come to align with the feedback,
    so the update points downhill (Nokland 2016). f' is the elementwise derivative of the
    task's activation, by `jax.jvp`, so any activation works.

    Scale: B_l ~ N(0, 1 / width_l), the scale of the transpose of a fan-in (LeCun) initialised
    layer, so that e B_l is about the size of the backpropagated signal at initialisation (on
    the digits MLP the hidden-layer gradient norms differ by less than 2x) and backprop's
    learning rates are a good start. B_l is drawn from `fold_in(key(seed), l)`, never from the
    per-step key, so it is the same at every step.

    Args:
      seed: seed of the feedback matrices.

    Returns:
      `grad_fn(task, params, key, batch) -> (loss, grads)` for tasks with `task.layered`; params
      outside the dense layers get zero gradients; the loss is `logits_loss` of this forward pass.

    Raises:
      ValueError: when the task has no layered MLP (`task.layered is None`).

    References:
      Nokland 2016, "Direct Feedback Alignment Provides Learning in Deep Neural Networks",
      https://arxiv.org/abs/1609.01596
    """

    def grad_fn(task: Task, params: Params, key: jax.Array, batch) -> tuple[jax.Array, Params]:
        del key
        net = task.layered
        if net is None:
            raise ValueError(
                f"task {task.name!r} has no layered MLP; DFA needs one; "
                "use backprop or forward_gradient"
            )
        missing = [name for name in net.layer_names if name not in params]
        if missing:
            raise ValueError(f"task {task.name!r}: params have no dense layers {missing}")
        layers = [params[name] for name in net.layer_names]

        h_BxD = net.inputs(batch)
        inputs, preacts = [], []
        for layer in layers[:-1]:
            inputs.append(h_BxD)
            a_BxH = h_BxD @ layer["w"] + layer["b"][None, :]
            preacts.append(a_BxH)
            h_BxD = net.activation(a_BxH)
        inputs.append(h_BxD)
        logits_BxC = h_BxD @ layers[-1]["w"] + layers[-1]["b"][None, :]
        loss, e_BxC = jax.value_and_grad(net.logits_loss)(logits_BxC, batch)

        widths = tuple(a.shape[-1] for a in preacts)
        feedback = feedback_matrices(seed, logits_BxC.shape[-1], widths)
        deltas = []
        for a_BxH, B_CxH in zip(preacts, feedback, strict=True):
            slope = jax.jvp(net.activation, (a_BxH,), (jnp.ones_like(a_BxH),))[1]
            deltas.append((e_BxC @ B_CxH) * slope)
        deltas.append(e_BxC)

        grads = dict(jax.tree.map(jnp.zeros_like, params))
        for name, layer, h_BxD, delta in zip(net.layer_names, layers, inputs, deltas, strict=True):
            grads[name] = {
                "w": (h_BxD.T @ delta).astype(layer["w"].dtype),
                "b": jnp.sum(delta, axis=0).astype(layer["b"].dtype),
            }
        return loss, grads

    return grad_fn


ESTIMATORS: dict[str, Callable[..., GradFn]] = {
    "backprop": backpropagation,
    "forward": forward_gradient,
    "dfa": dfa,
}


def list_estimators() -> list[str]:
    """Names of all gradient estimators."""
    return sorted(ESTIMATORS)


def get_estimator(name: str, **kwargs) -> GradFn:
    """The grad_fn of estimator `name` built with keyword `kwargs` (e.g. `num_tangents=4`)."""
    return build_registered(ESTIMATORS, name, "gradient estimator", "estimators", **kwargs)
