"""Evaluation reports: `report.md`, PNG plots and TensorBoard events, all from `results.json`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from l2o.evaluation import plots
from l2o.evaluation.comparison import compare
from l2o.io import append_scalars, write_bytes_atomic


def _fmt(stats: dict | None, digits: int = 4) -> str:
    """`mean [low, high]` (the 95% bootstrap interval over seeds) or `mean ± std`."""
    if not stats or stats.get("mean") is None:
        return "diverged"
    if stats.get("ci95"):
        low, high = stats["ci95"]
        return f"{stats['mean']:.{digits}g} [{low:.3g}, {high:.3g}]"
    return f"{stats['mean']:.{digits}g} ± {stats['std']:.2g}"


def _lr(entry: dict) -> str:
    """The tuned learning rate ("-" for an optimizer without one), flagged where tuning may have
    failed: still at the edge of the (extended) grid, or no effect of the learning rate at all."""
    value, tuning = entry["learning_rate"], entry.get("tuning", {})
    if value is None or not np.isfinite(value):
        return "-"
    text = f"{value:.2g}"
    if tuning.get("lr_insensitive"):
        return text + " **(no effect: the updates do not depend on lr)**"
    if tuning.get("at_edge"):
        return text + " **(at the grid's edge)**"
    return text


def _speedup(result: dict | None) -> str:
    if not result or result.get("speedup") is None:
        return "-"
    return f"{result['speedup']:.2f}" + ("" if result["reached"] else " (lower bound)")


def _difference(entry: dict, name: str, reference: str) -> str:
    """The seed-paired difference of final losses to the reference, or "within noise"."""
    paired = entry.get("paired_difference")
    if name == reference or not paired:
        return "-"
    if paired["mean_difference"] is None:
        return "diverged"
    verdict = (
        "within noise"
        if paired["within_noise"]
        else ("lower" if paired["mean_difference"] < 0 else "higher")
    )
    return (
        f"{paired['mean_difference']:+.3g} [{paired['low']:+.3g}, {paired['high']:+.3g}] {verdict}"
    )


def _ms(entry: dict) -> str:
    seconds = entry.get("seconds_per_step")
    return "-" if not seconds else f"{1e3 * seconds:.3g}"


def _median(values: list) -> str:
    values = [v for v in values if v is not None]
    return f"{np.median(values):.2f}" if values else "-"


def _interval(entry: dict, key: str) -> str:
    low, high = entry["ci95"]
    return f"{entry[key]:.3g} [{low:.3g}, {high:.3g}]"


def render_markdown(results: dict[str, Any]) -> str:
    """The markdown report of an evaluation: per-task results with intervals, speedups in steps
    and in seconds, paired differences, and the aggregates across tasks."""
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
        "for every optimizer; a grid whose best value was at an edge was extended by three "
        f"points on that side, up to {suite.get('lr_extensions', 0)} times. Losses are the mean "
        "over seeds with a 95% bootstrap interval; the final loss is the test loss (the "
        "training loss for tasks without a test split).",
        "",
    ]
    if reference is None:
        lines += [f"No reference optimizer {suite['reference']!r} in the grid: no speedups.", ""]
    lines += ["## Per-task results", ""]
    header = "| task | optimizer | lr | final loss | best test loss | test accuracy |"
    if reference:
        header += f" vs {reference}, paired | speedup, steps | speedup, wall clock | ms/step |"
    lines += [header, header_rule(header)]
    for task, by_optimizer in comparison["per_task"].items():
        for name, entry in by_optimizer.items():
            loss = entry.get("final_test_loss") or entry["final_train_loss"]
            best = entry.get("best_test_loss") or entry["final_train_loss"]
            acc = _fmt(entry["final_test_accuracy"]) if "final_test_accuracy" in entry else "-"
            row = f"| {task} | {name} | {_lr(entry)} | {_fmt(loss)} | {_fmt(best)} | {acc} |"
            if reference:
                row += (
                    f" {_difference(entry, name, reference)} | {_speedup(entry.get('speedup'))}"
                    f" | {_speedup(entry.get('wall_clock_speedup'))} | {_ms(entry)} |"
                )
            lines.append(row)
    aggregates = comparison.get("aggregates", {})
    lines += ["", "## Across tasks", ""]
    header = "| optimizer | profile score |"
    if reference:
        header += (
            f" IQM of loss / {reference}'s | win fraction | median speedup, steps |"
            " median speedup, wall clock |"
        )
    lines += [header, header_rule(header)]
    per_task = comparison["per_task"]
    for name, score in aggregates.get("profile_score", {}).items():
        row = f"| {name} | {_interval(score, 'score')} |"
        if reference:
            steps = [per_task[t][name]["speedup"]["speedup"] for t in per_task]
            wall = [(per_task[t][name].get("wall_clock_speedup") or {}).get("speedup")
                    for t in per_task]  # fmt: skip
            row += (
                f" {_interval(aggregates['iqm_loss_ratio'][name], 'iqm')} |"
                f" {comparison['win_fraction'][name]:.2f} | {_median(steps)} | {_median(wall)} |"
            )
        lines.append(row)
    lines += [
        "",
        "- Profile score: the area under the performance profile for cost ratios 1 to 4, "
        "normalized to [0, 1] (AlgoPerf's benchmark score; cost: the mean final loss of each "
        "task); 95% interval over tasks and seeds.",
    ]
    if reference:
        lines += [
            f"- IQM: the interquartile mean over tasks and seeds of the final loss divided by "
            f"{reference}'s on the same seed (below 1: lower loss); interval over seeds.",
            f"- Speedup, steps (learned_optimization, VeLO): the steps {reference} needs to reach "
            "an optimizer's final training loss (mean over seeds, trailing mean over 10% of the "
            "budget) divided by the optimizer's step budget; 'lower bound' where the reference "
            f"never reaches it. An optimizer that ends worse than {reference} at the budget is "
            "never above 1.",
            "- Speedup, wall clock: the same, with each optimizer's steps converted to seconds by "
            "its own measured time per step (one run, same process and task, compilation "
            "excluded).",
            f"- Paired: the mean difference of final losses to {reference} on the same seeds, "
            "with its 95% bootstrap interval; 'within noise' when the interval contains 0.",
        ]
        if suite.get("reference_steps", 0) > suite["steps"]:
            lines.append(
                f"- {reference} (tuned and reported at {suite['steps']} steps) was run on to "
                f"{suite['reference_steps']} steps, so speedups up to "
                f"{suite['reference_steps'] / suite['steps']:.1f} are measured."
            )
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
    suite = results["suite"]
    results["comparison"] = compare(results["tasks"], suite["reference"], suite["steps"])
    tasks = results["tasks"]
    colour = plots.colours([o["label"] or o["name"] for o in suite["optimizers"]])
    curves = plots.loss_curves(
        {
            t: {o: np.asarray(r["train_loss"], np.float64) for o, r in runs.items()}
            for t, runs in tasks.items()
        },
        colour,
    )
    write_bytes_atomic(out / "loss_curves.png", curves)
    sensitivity = {
        t: {
            o: (np.asarray(r["lr_grid"]), np.asarray(r["final_valid_loss_by_lr"], np.float64))
            for o, r in runs.items()
            if len(r["lr_grid"]) > 1
        }
        for t, runs in tasks.items()
    }
    if any(sensitivity.values()):
        write_bytes_atomic(out / "lr_sensitivity.png", plots.lr_sensitivity(sensitivity, colour))
    profile = results["comparison"]["profile"]
    profile_png = plots.performance_profile(
        np.asarray(profile["taus"]),
        profile["rho"],
        profile["cost"],
        profile.get("band"),
        colour,
    )
    write_bytes_atomic(out / "performance_profile.png", profile_png)
    if tensorboard:
        append_scalars(out, tensorboard_scalars(tasks))
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
