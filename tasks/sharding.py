"""Scale-out over devices through JAX's SPMD runtime (GSPMD, Xu et al. 2021): a 1-D mesh over every
device, a population axis split over it, and data-parallel gradients for one big task.

The mesh spans `jax.devices()`, which after `jax.distributed.initialize` holds the devices of every
process, so one code path serves one CPU, several accelerators and several hosts. A population
(seeds, learning rates, programs, ES particles) is padded to a multiple of the device count with
copies of its last member, each device runs its block of the vmapped function (`jax.shard_map`),
and the results are unpadded and replicated on every device, so that every process can read them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tasks.base import Batch, Params, Task
from tasks.train import GradFn, backprop

PyTree = Any
AXIS = "devices"


def device_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh (axis `AXIS`) over `devices`; by default every device of every process."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def split(mesh: Mesh) -> NamedSharding:
    """The leading axis is split over the devices of `mesh`, in order."""
    return NamedSharding(mesh, P(AXIS))


def put_replicated(tree: PyTree, mesh: Mesh) -> PyTree:
    """`tree`, whose value every process holds alike, as arrays replicated on all devices of
    `mesh` (through the host: a process cannot place its own arrays on other processes')."""

    def leaf(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(
                leaf(jax.random.key_data(x)), impl=jax.random.key_impl(x)
            )
        return jax.device_put(np.asarray(x), replicated(mesh))

    return jax.tree.map(leaf, tree)


def padded_size(size: int, mesh: Mesh) -> int:
    """`size` rounded up to a multiple of the device count."""
    return -(-size // mesh.size) * mesh.size


def pad(tree: PyTree, size: int) -> PyTree:
    """Leading axes padded to `size` with copies of the last entry (traceable; keys too)."""

    def leaf(x):
        extra = size - x.shape[0]
        if extra == 0:
            return x
        return jnp.concatenate([x, jnp.broadcast_to(x[-1:], (extra, *x.shape[1:]))])

    return jax.tree.map(leaf, tree)


def unpad(tree: PyTree, size: int) -> PyTree:
    """The first `size` entries of every leading axis."""
    return jax.tree.map(lambda x: x[:size], tree)


def shard_population(
    fn: Callable[..., PyTree], mesh: Mesh, in_axes: Sequence[int | None]
) -> Callable[..., PyTree]:
    """`fn` with the population axis split over the devices of `mesh`; call it inside `jax.jit`.

    Args:
      fn: a function batched over the leading (population) axis of each argument whose
        `in_axes` entry is 0, the others shared by all members (e.g. a `jax.vmap`); every output
        has the population axis first. Members must not interact: each device runs `fn` on its
        own block.
      mesh: a 1-D mesh such as `device_mesh()`.
      in_axes: 0 (split) or None (replicated) per positional argument.

    Returns:
      A function of the same arguments and outputs as `fn`; the population is padded to a
      multiple of the device count (copies of the last member, dropped again), and the outputs
      are replicated on every device.
    """
    in_axes = tuple(in_axes)
    if any(axis not in (0, None) for axis in in_axes) or 0 not in in_axes:
        raise ValueError(f"in_axes must be 0 or None, at least one 0; got {in_axes}")
    specs = tuple(P(AXIS) if axis == 0 else P() for axis in in_axes)
    mapped = jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=P(AXIS), check_vma=False)

    def run(*args):
        if len(args) != len(in_axes):
            raise TypeError(f"expected {len(in_axes)} arguments, got {len(args)}")
        sizes = {
            x.shape[0]
            for a, axis in zip(args, in_axes, strict=True)
            if axis == 0
            for x in jax.tree.leaves(a)
        }
        if len(sizes) != 1:
            raise ValueError(f"population arguments disagree on their leading size: {sizes}")
        size = sizes.pop()
        full = padded_size(size, mesh)
        args = [pad(a, full) if axis == 0 else a for a, axis in zip(args, in_axes, strict=True)]
        out = unpad(mapped(*args), size)
        return jax.lax.with_sharding_constraint(out, replicated(mesh))

    return run


def data_parallel(mesh: Mesh | None = None, grad_fn: GradFn = backprop) -> GradFn:
    """`grad_fn` with the training batch split over the devices of `mesh`, params replicated.

    XLA's SPMD partitioner computes the loss's reduction over the batch as per-device partial
    sums and one all-reduce, so the gradient is that of the whole batch: the single-device run
    up to float rounding. Pass it as `grad_fn` to `train` or `unroll` inside `jax.jit`. Batch
    leaves with a leading axis must have it divisible by the device count.

    Args:
      mesh: the devices (default: `device_mesh()`, every device).
      grad_fn: the gradient estimator to partition (default: backprop).

    Returns:
      A `grad_fn(task, params, key, batch) -> (loss, grads)` with replicated outputs.
    """
    mesh = device_mesh() if mesh is None else mesh

    def batch_sharding(x):
        if jnp.ndim(x) == 0:
            return replicated(mesh)
        if x.shape[0] % mesh.size:
            raise ValueError(
                f"batch axis of size {x.shape[0]} does not split over {mesh.size} devices"
            )
        return split(mesh)

    def grad(task: Task, params: Params, key: jax.Array, batch: Batch):
        batch = jax.lax.with_sharding_constraint(batch, jax.tree.map(batch_sharding, batch))
        params = jax.lax.with_sharding_constraint(params, replicated(mesh))
        loss, grads = grad_fn(task, params, key, batch)
        return loss, jax.lax.with_sharding_constraint(grads, replicated(mesh))

    return grad
