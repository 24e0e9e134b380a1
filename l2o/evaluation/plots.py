"""PNG figures for reports (matplotlib, Agg backend), returned as bytes for the report to write.

Every figure has one legend, an optimizer has the same colour in every figure (`colours`), and a
loss axis is logarithmic wherever its values span more than a decade."""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from l2o.evaluation.metrics import default_window, smooth  # noqa: E402

PALETTE = plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors


def colours(names: Sequence[str]) -> dict[str, tuple]:
    """One colour per optimizer, by its position in the evaluation's list of optimizers."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def spans_a_decade(*arrays: np.ndarray) -> bool:
    """True if the finite values are all positive and the largest is over 10x the smallest."""
    values = np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in arrays])
    values = values[np.isfinite(values)]
    return values.size > 0 and values.min() > 0 and values.max() > 10 * values.min()


def _png(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _panels(count: int, width: float = 4.2, height: float = 3.4, columns: int = 4):
    cols = min(count, columns)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:count])


def _legend(fig, colour: Mapping[str, tuple], names: Sequence[str]) -> None:
    """One legend for the whole figure, below its panels."""
    handles = [plt.Line2D([], [], color=colour[n], lw=2) for n in names]
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 6), fontsize=8,
               bbox_to_anchor=(0.5, -0.02), frameon=False)  # fmt: skip
    fig.tight_layout(rect=(0, 0.06, 1, 1))


def loss_curves(
    curves: Mapping[str, Mapping[str, np.ndarray]],
    colour: Mapping[str, tuple] | None = None,
    targets: Mapping[str, float] | None = None,
) -> bytes:
    """One panel per task: each optimizer's train loss, mean over seeds with a min-max band.

    `curves[task][optimizer]` is a `[seeds, steps]` array; `targets[task]`, where given, is drawn
    as a dashed horizontal line.
    """
    names = list(dict.fromkeys(n for by_optimizer in curves.values() for n in by_optimizer))
    colour = colour or colours(names)
    fig, axes = _panels(len(curves))
    for ax, (task, by_optimizer) in zip(axes, curves.items(), strict=True):
        for name, losses in by_optimizer.items():
            losses = np.asarray(losses, np.float64)
            losses = smooth(losses, default_window(losses.shape[-1]))
            steps = np.arange(1, losses.shape[-1] + 1)
            ax.plot(steps, losses.mean(0), color=colour[name], lw=1.4)
            ax.fill_between(steps, losses.min(0), losses.max(0),
                            color=colour[name], alpha=0.2, lw=0)  # fmt: skip
        if targets and task in targets:
            ax.axhline(targets[task], color="black", ls="--", lw=1)
        ax.set_title(task)
        ax.set_xlabel("step")
        if spans_a_decade(*by_optimizer.values()):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("train loss (smoothed)")
    _legend(fig, colour, names)
    return _png(fig)


def performance_profile(
    taus: np.ndarray,
    rho: Mapping[str, np.ndarray],
    cost: str,
    band: Mapping[str, Sequence[np.ndarray]] | None = None,
    colour: Mapping[str, tuple] | None = None,
) -> bytes:
    """Dolan-More performance profile: share of tasks within a factor tau of the best, with the
    95% band over tasks and seeds where given."""
    colour = colour or colours(list(rho))
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, values in rho.items():
        ax.step(taus, values, where="post", color=colour[name], lw=1.6)
        if band and name in band:
            low, high = band[name]
            ax.fill_between(taus, low, high, step="post", color=colour[name], alpha=0.15, lw=0)
    ax.set_xscale("log")
    ticks = [t for t in (1, 1.5, 2, 3, 4, 6, 10, 20, 30) if t <= taus[-1]]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("tau (cost / best cost)")
    ax.set_ylabel("fraction of tasks")
    ax.set_title(f"performance profile\ncost: {cost}", fontsize=9)
    ax.grid(alpha=0.3)
    _legend(fig, colour, list(rho))
    return _png(fig)


def lr_sensitivity(
    by_task: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    colour: Mapping[str, tuple] | None = None,
) -> bytes:
    """Final validation loss against learning rate, per task and optimizer; a learning rate at
    which a run diverged is marked with an x at the top of its panel."""
    names = list(dict.fromkeys(n for by_optimizer in by_task.values() for n in by_optimizer))
    colour = colour or colours(names)
    fig, axes = _panels(len(by_task))
    for ax, (task, by_optimizer) in zip(axes, by_task.items(), strict=True):
        finite_values = [np.asarray(v, np.float64) for _, v in by_optimizer.values()]
        for name, (lrs, losses) in by_optimizer.items():
            losses = np.asarray(losses, np.float64)
            finite = np.isfinite(losses)
            ax.plot(lrs, np.where(finite, losses, np.nan), marker=".", color=colour[name])
            if not finite.all():
                ax.plot(np.asarray(lrs)[~finite], np.ones((~finite).sum()), "x",
                        color=colour[name], transform=ax.get_xaxis_transform(),
                        clip_on=False)  # fmt: skip
        ax.set_xscale("log")
        if spans_a_decade(*finite_values):
            ax.set_yscale("log")
        ax.set_title(task)
        ax.set_xlabel("learning rate")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("final validation loss (x: diverged)")
    _legend(fig, colour, names)
    return _png(fig)


def validation_curves(
    curves: Mapping[str, Mapping[str, np.ndarray]],
    eval_steps: Mapping[str, np.ndarray],
    targets: Mapping[str, float],
    colour: Mapping[str, tuple] | None = None,
) -> bytes:
    """One panel per task: each optimizer's validation loss (median over runs, min-max band)
    against step, and the task's target as a dashed black line.

    `curves[task][optimizer]` is a `[runs, evaluations]` array; `eval_steps[task]` its steps.
    """
    names = list(dict.fromkeys(n for by_optimizer in curves.values() for n in by_optimizer))
    colour = colour or colours(names)
    fig, axes = _panels(len(curves))
    for ax, (task, by_optimizer) in zip(axes, curves.items(), strict=True):
        steps = np.asarray(eval_steps[task])
        for name, losses in by_optimizer.items():
            losses = np.asarray(losses, np.float64)
            losses = np.where(np.isfinite(losses), losses, np.nan)
            with warnings.catch_warnings():  # a step at which every run had diverged: a gap
                warnings.simplefilter("ignore", RuntimeWarning)
                median, low, high = (f(losses, 0) for f in (np.nanmedian, np.nanmin, np.nanmax))
            ax.plot(steps, median, color=colour[name], lw=1.4)
            ax.fill_between(steps, low, high, color=colour[name], alpha=0.2, lw=0)
        ax.axhline(targets[task], color="black", ls="--", lw=1)
        ax.set_title(task)
        ax.set_xlabel("step")
        if spans_a_decade(*by_optimizer.values(), np.array([targets[task]])):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation loss (dashed: target)")
    _legend(fig, colour, names)
    return _png(fig)
