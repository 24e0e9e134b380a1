"""The task interface: what an optimizer is asked to minimise (learned_optimization's `Task`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
Params = PyTree
Batch = PyTree
Aux = dict[str, jax.Array]
SPLITS = ("train", "valid", "test")


@dataclasses.dataclass(frozen=True)
class LayeredNet:
    """How a task's network splits into dense layers, for estimators such as feedback alignment.

    `layer_names[i]` names the params entry `{"w": [in, out], "b": [out]}` of layer i; the hidden
    layers apply `activation`; `logits_loss(logits, batch)` is the loss of the last layer's output.
    """

    layer_names: tuple[str, ...]
    activation: Callable[[jax.Array], jax.Array]
    inputs: Callable[[Batch], jax.Array]
    logits_loss: Callable[[jax.Array, Batch], jax.Array]


@dataclasses.dataclass(frozen=True)
class Task:
    """A minimisation problem: pure `init`, `loss` and batch sampling over in-memory data.

    `data` is the only array field: it is a pytree leaf, so a task passed as a `jax.jit` argument
    sends its dataset as a buffer instead of baking it into the compiled program. Everything else
    (functions, sizes, names) is static.

    Attributes:
      name: registry name or a description.
      init: `init(key) -> params`.
      loss: `loss(params, key, batch) -> (loss, aux)`, `aux` a dict of scalars (e.g. accuracy).
      sampler: `sampler(data, key, split, batch_size) -> batch`, traceable; `split` is static.
      data: arrays the sampler reads (a pytree; `()` for closed-form problems).
      batch_size: training batch size.
      eval_batch_size: examples per evaluation; a dataset split no larger is used whole, in order.
      layered: the dense-layer structure, for tasks built on a plain MLP; else None.
    """

    name: str
    init: Callable[[jax.Array], Params]
    loss: Callable[[Params, jax.Array, Batch], tuple[jax.Array, Aux]]
    sampler: Callable[[PyTree, jax.Array, str, int], Batch]
    data: PyTree = ()
    batch_size: int = 1
    eval_batch_size: int = 1
    layered: LayeredNet | None = None

    def sample_batch(self, key: jax.Array, split: str = "train", batch_size: int | None = None):
        """A batch of `split` drawn from `key` (traceable)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return self.sampler(self.data, key, split, batch_size or self.batch_size)

    def evaluate(self, params: Params, key: jax.Array, split: str = "test") -> dict[str, jax.Array]:
        """Loss and aux metrics (accuracy where it applies) on `eval_batch_size` examples."""
        batch_key, loss_key = jax.random.split(key)
        batch = self.sample_batch(batch_key, split, self.eval_batch_size)
        loss, aux = self.loss(params, loss_key, batch)
        return {"loss": loss, **aux}

    def replace(self, **changes) -> Task:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    Task,
    data_fields=["data"],
    meta_fields=[
        "name",
        "init",
        "loss",
        "sampler",
        "batch_size",
        "eval_batch_size",
        "layered",
    ],
)


@dataclasses.dataclass(frozen=True)
class TaskFamily:
    """A distribution over tasks: `sample(key) -> config` and `task(config) -> Task`.

    Configs are plain JSON-compatible dicts (they are logged and stored with results), drawn on
    the host: call `sample` outside `jax.jit`.
    """

    name: str
    sample: Callable[[jax.Array], dict[str, Any]]
    task: Callable[[dict[str, Any]], Task]


def num_params(params: Params) -> int:
    """Total number of scalars in a params pytree."""
    return sum(int(jnp.size(leaf)) for leaf in jax.tree_util.tree_leaves(params))
