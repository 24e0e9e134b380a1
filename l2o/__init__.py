"""Learned optimizers, meta-training, evaluation, reports and the `l2o` command line."""

from __future__ import annotations

TYPE_CHECKING = False  # not `typing`'s: the `l2o` command imports this package before it can
# catch signals (l2o/cli/__main__.py), so it imports nothing
if TYPE_CHECKING:
    import os

    import optax


def load_optimizer(
    path: str | os.PathLike, num_steps: int | None = None, learning_rate: float | None = None
) -> optax.GradientTransformationExtraArgs:
    """The meta-trained optimizer stored at `path` (see `l2o.optimizers.file_format`).

    `num_steps`: the training run's length, for optimizers that read the training fraction
    (without it, and without a `num_steps` extra to `update`, they warn and assume the horizon
    of their config). `learning_rate`: for optimizers with an external learning rate (`celo`).
    Raises a ValueError naming the file if it is missing, malformed or does not match its
    architecture.
    """
    from l2o.optimizers.file_format import load_optimizer as load

    return load(path, num_steps=num_steps, learning_rate=learning_rate)


__all__ = ["load_optimizer"]
