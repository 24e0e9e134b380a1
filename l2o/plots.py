"""PNG figures for reports (matplotlib, Agg backend), written atomically."""

from __future__ import annotations

import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from l2o.io import write_bytes_atomic  # noqa: E402


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over the last axis (the first values average fewer points)."""
    if window <= 1:
        return values
    csum = np.cumsum(values, axis=-1)
    out = csum.copy()
    out[..., window:] = csum[..., window:] - csum[..., :-window]
    counts = np.minimum(np.arange(1, values.shape[-1] + 1), window)
    return out / counts


def loss_curves(path: str | os.PathLike, curves: dict[str, dict[str, np.ndarray]]) -> None:
    """One panel per task: each optimizer's train loss, mean over seeds with a min-max band.

    `curves[task][optimizer]` is a `[seeds, steps]` array.
    """
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), squeeze=False)
    for ax, (task, by_optimizer) in zip(axes[0], curves.items(), strict=True):
        for name, losses in by_optimizer.items():
            losses = smooth(np.asarray(losses, np.float64), max(1, losses.shape[-1] // 50))
            steps = np.arange(1, losses.shape[-1] + 1)
            (line,) = ax.plot(steps, np.nanmean(losses, 0), label=name, lw=1.4)
            ax.fill_between(steps, np.nanmin(losses, 0), np.nanmax(losses, 0),
                            color=line.get_color(), alpha=0.2, lw=0)  # fmt: skip
        ax.set_title(task)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("train loss (smoothed)")
    axes[0][-1].legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())
