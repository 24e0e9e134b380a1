"""Hand-written baseline optimizers as optax transforms, by name."""

from baselines.registry import OPTIMIZERS, get_optimizer, list_optimizers, optimizer_hparams

__all__ = ["OPTIMIZERS", "get_optimizer", "list_optimizers", "optimizer_hparams"]
