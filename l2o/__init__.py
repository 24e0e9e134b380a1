"""Learned optimizers, meta-training, evaluation, reports and the `l2o` command line."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import os

    import optax


def load_optimizer(path: str | os.PathLike) -> optax.GradientTransformationExtraArgs:
    """The meta-trained optimizer stored at `path` (see `l2o.optimizers.file_format`).

    Raises a ValueError naming the file if it is missing, malformed or does not match its
    architecture.
    """
    from l2o.optimizers.file_format import load_optimizer as load

    return load(path)


__all__ = ["load_optimizer"]
