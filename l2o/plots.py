"""PNG figures for reports (matplotlib, Agg backend), written atomically."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from l2o.io import write_bytes_atomic  # noqa: E402
from l2o.metrics import default_window, smooth  # noqa: E402


def _save(fig, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())


def _panels(count: int, width: float = 4.2, height: float = 3.4, columns: int = 4):
    cols = min(count, columns)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:count])


def loss_curves(path: str | os.PathLike, curves: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """One panel per task: each optimizer's train loss, mean over seeds with a min-max band.

    `curves[task][optimizer]` is a `[seeds, steps]` array.
    """
    fig, axes = _panels(len(curves))
    for ax, (task, by_optimizer) in zip(axes, curves.items(), strict=True):
        for name, losses in by_optimizer.items():
            losses = np.asarray(losses, np.float64)
            losses = smooth(losses, default_window(losses.shape[-1]))
            steps = np.arange(1, losses.shape[-1] + 1)
            (line,) = ax.plot(steps, losses.mean(0), label=name, lw=1.4)
            ax.fill_between(steps, losses.min(0), losses.max(0),
                            color=line.get_color(), alpha=0.2, lw=0)  # fmt: skip
        ax.set_title(task)
        ax.set_xlabel("step")
        if all(np.nanmin(np.asarray(v)) > 0 for v in by_optimizer.values()):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("train loss (smoothed)")
    axes[-1].legend(fontsize=8)
    _save(fig, path)


def performance_profile(
    path: str | os.PathLike, taus: np.ndarray, rho: Mapping[str, np.ndarray], cost: str
) -> None:
    """Dolan-More performance profile: share of tasks within a factor tau of the best."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, values in rho.items():
        ax.step(taus, values, where="post", label=name, lw=1.6)
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("tau (cost / best cost)")
    ax.set_ylabel("fraction of tasks")
    ax.set_title(f"performance profile\ncost: {cost}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def lr_sensitivity(
    path: str | os.PathLike, by_task: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]]
) -> None:
    """Final validation loss against learning rate, per task and optimizer."""
    fig, axes = _panels(len(by_task))
    for ax, (task, by_optimizer) in zip(axes, by_task.items(), strict=True):
        for name, (lrs, losses) in by_optimizer.items():
            losses = np.asarray(losses, np.float64)
            ax.plot(lrs, np.where(np.isfinite(losses), losses, np.nan), marker=".", label=name)
        ax.set_xscale("log")
        ax.set_title(task)
        ax.set_xlabel("learning rate")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("final validation loss")
    axes[-1].legend(fontsize=8)
    _save(fig, path)
