"""Evaluation reports: `report.md`, PNG plots and TensorBoard events, all from `results.json`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from l2o import plots
from l2o.evaluate import compare
from l2o.io import write_bytes_atomic
from l2o.tensorboard import write_scalars


def _fmt(stats: dict | None, digits: int = 4) -> str:
    if not stats or stats.get("mean") is None:
        return "diverged"
    return f"{stats['mean']:.{digits}g} ± {stats['std']:.2g}"


def _lr(value: float | None) -> str:
    """The tuned learning rate, or "-" for an optimizer without one (meta-trained)."""
    return "-" if value is None or not np.isfinite(value) else f"{value:.2g}"


def _speedup(entry: dict) -> str:
    if entry.get("speedup") is None:
        return "-"
    return f"{entry['speedup']:.2f}" + ("" if entry["reached"] else " (lower bound)")


def render_markdown(results: dict[str, Any]) -> str:
    """The markdown report of an evaluation (tables of per-task results, speedups, wins)."""
    suite, comparison = results["suite"], results["comparison"]
    reference = comparison["reference"]
    tuned_on = "training loss" if suite.get("tune_on") == "train" else "validation loss"
    lines = [
        "# l2o evaluation",
        "",
        f"{len(results['tasks'])} tasks, {len(suite['optimizers'])} optimizers, "
        f"{suite['seeds']} seeds, {suite['steps']} steps. Tuned optimizers had their learning "
        f"rate chosen from {suite['lr_num']} values in [{suite['lr_low']:.0e}, "
        f"{suite['lr_high']:.0e}] by the mean final {tuned_on}, with the same step budget "
        "for every optimizer; test metrics are mean ± std over seeds.",
        "",
    ]
    if reference is None:
        lines += [f"No reference optimizer {suite['reference']!r} in the grid: no speedups.", ""]
    elif suite.get("reference_steps", 0) > suite["steps"]:
        lines += [
            f"{reference} (tuned and reported at {suite['steps']} steps) was run on to "
            f"{suite['reference_steps']} steps: a speedup is the step at which it reaches a "
            "challenger's final training loss over the challenger's steps to reach it.",
            "",
        ]
    lines += ["## Per-task results", ""]
    header = "| task | optimizer | lr | final test loss | best test loss | test accuracy | AUC |"
    if reference:
        header += f" speedup over {reference} |"
    lines += [header, header_rule(header)]
    for task, by_optimizer in comparison["per_task"].items():
        for name, entry in by_optimizer.items():
            loss = entry.get("final_test_loss") or entry["final_train_loss"]
            best = entry.get("best_test_loss") or entry["final_train_loss"]
            acc = _fmt(entry["final_test_accuracy"]) if "final_test_accuracy" in entry else "-"
            row = (
                f"| {task} | {name} | {_lr(entry['learning_rate'])} | {_fmt(loss)} | "
                f"{_fmt(best)} | {acc} | {_fmt(entry['auc_train_loss'])} |"
            )
            if reference:
                row += f" {_speedup(entry)} |"
            lines.append(row)
    if reference:
        lines += ["", f"## Against tuned {reference}", ""]
        lines += [
            "| optimizer | win fraction (final test loss) | median speedup |",
            "| --- | --- | --- |",
        ]
        for name, wins in comparison["win_fraction"].items():
            values = [comparison["per_task"][t][name]["speedup"] for t in comparison["per_task"]]
            values = [v for v in values if v is not None]
            median = f"{np.median(values):.2f}" if values else "-"
            lines.append(f"| {name} | {wins:.2f} | {median} |")
        lines += [
            "",
            "Speedup: steps the tuned reference needs to reach an optimizer's final training "
            "loss (smoothed, mean over seeds), divided by the steps the optimizer needs; "
            "'lower bound' where the reference never reaches it.",
        ]
    lines += [
        "",
        "## Curves",
        "",
        f"![performance profile](performance_profile.png) (cost: {comparison['profile']['cost']})",
        "",
        "![loss curves](loss_curves.png)",
        "",
        "![learning-rate sensitivity](lr_sensitivity.png)",
        "",
        f"Wall time: {results.get('wall_time_s', 0):.0f} s.",
        "",
    ]
    return "\n".join(lines)


def header_rule(header: str) -> str:
    """The markdown separator row for a table header."""
    return "|" + " --- |" * (header.count("|") - 1)


def write_report(out: Path, results: dict[str, Any], *, tensorboard: bool = True) -> None:
    """(Re)compute the comparison; write `report.md`, the PNGs and (optionally) events."""
    results["comparison"] = compare(results["tasks"], results["suite"]["reference"])
    tasks = results["tasks"]
    plots.loss_curves(
        out / "loss_curves.png",
        {
            t: {o: np.asarray(r["train_loss"], np.float64) for o, r in runs.items()}
            for t, runs in tasks.items()
        },
    )
    sensitivity = {
        t: {
            o: (np.asarray(r["lr_grid"]), np.asarray(r["final_valid_loss_by_lr"], np.float64))
            for o, r in runs.items()
            if len(r["lr_grid"]) > 1
        }
        for t, runs in tasks.items()
    }
    if any(sensitivity.values()):
        plots.lr_sensitivity(out / "lr_sensitivity.png", sensitivity)
    profile = results["comparison"]["profile"]
    plots.performance_profile(
        out / "performance_profile.png",
        np.asarray(profile["taus"]),
        profile["rho"],
        profile["cost"],
    )
    if tensorboard:
        write_scalars(out, tensorboard_scalars(tasks))
    write_bytes_atomic(out / "report.md", render_markdown(results).encode())


def tensorboard_scalars(tasks: dict[str, Any]) -> dict:
    """`task/optimizer/metric -> (steps, seed-mean values)` for every run."""
    scalars = {}
    for t, runs in tasks.items():
        for o, r in runs.items():
            mean = np.asarray(r["train_loss"], np.float64).mean(0)
            scalars[f"{t}/{o}/train_loss"] = (range(1, len(mean) + 1), mean)
            for name, values in r["evaluations"].items():
                scalars[f"{t}/{o}/{name}"] = (
                    r["eval_step"],
                    np.asarray(values, np.float64).mean(0),
                )
    return scalars
