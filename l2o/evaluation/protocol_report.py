"""What the protocol's tracks add up to: time to target in steps and seconds per task, the
AlgoPerf performance-profile score over tasks with a 95% bootstrap interval, and the report."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from l2o.evaluation import plots
from l2o.evaluation.report import header_rule
from l2o.evaluation.statistics import performance_profile_score, stratified_bootstrap

TRACKS = ("external", "self")
TRACK_TITLES = {
    "external": "External tuning (quasi-random trials in studies; a study scores its fastest "
    "trial, a task its median study)",
    "self": "Self-tuning (defaults, no tuning; a task scores the median over seeds)",
}


def runs_to_target(entry: Mapping[str, Any]) -> np.ndarray:
    """Steps to the target of each study (external) or seed (self); inf where missed."""
    values = entry.get("per_study", entry.get("per_seed"))
    return np.array([np.inf if v is None else float(v) for v in values], np.float64)


def _score(costs_TxRxK: np.ndarray) -> np.ndarray:
    """Profile score of the median over runs (a miss counts as the slowest run)."""
    return performance_profile_score(np.median(costs_TxRxK, axis=1))


def aggregate(track: Mapping[str, Mapping[str, Any]], seconds: Mapping[str, Mapping[str, float]],
              optimizers: list[str]) -> dict[str, Any]:  # fmt: skip
    """Per optimizer over the tasks of one track: tasks whose target it reached, and the profile
    score (cost: seconds to target; also in steps) with a 95% interval from resampling tasks
    and, within each task, the studies or seeds. Optimizers without a result are left out."""
    names = [
        n for n in optimizers
        if all(n in t and ("per_study" in t[n] or "per_seed" in t[n]) for t in track.values())
    ]  # fmt: skip
    if not names:
        return {}
    steps = np.stack(
        [np.stack([runs_to_target(track[task][n]) for n in names], -1) for task in track]
    )  # [T, R, K]
    steps = np.maximum(steps, 1.0)  # a target met before training costs one step, not zero
    per_step = np.array([[seconds[task][n] for n in names] for task in track])[:, None, :]
    out: dict[str, Any] = {}
    for cost, values in (("seconds", steps * per_step), ("steps", steps)):
        score = _score(values)
        low, high = stratified_bootstrap(values, _score, resample_tasks=True)
        out[f"profile_score_{cost}"] = {
            n: {"score": float(score[k]), "interval": [float(low[k]), float(high[k])]}
            for k, n in enumerate(names)
        }
    reached = np.isfinite(np.median(steps, axis=1))
    out["tasks_reached"] = {n: int(reached[:, k].sum()) for k, n in enumerate(names)}
    out["wall_time_s"] = {n: sum(track[t][n].get("wall_time_s", 0.0) for t in track) for n in names}
    out["num_tasks"] = len(track)
    return out


def closest_to_target(entry: Mapping[str, Any], target: float) -> float:
    """Median over runs of the lowest validation loss reached, divided by the target (how far a
    run that missed it stayed; NaN without curves)."""
    if "valid_loss" not in entry:
        return float("nan")
    curves = np.array(entry["valid_loss"], np.float64)  # None (diverged) -> NaN
    curves = np.where(np.isfinite(curves), curves, np.inf)
    return float(np.median(curves.min(-1)) / target)


def _cell(entry: Mapping[str, Any], per_step: float, target: float) -> str:
    if "not_applicable" in entry:
        return "n/a"
    steps = entry.get("steps")
    if steps is None or not np.isfinite(steps):
        closest = closest_to_target(entry, target)
        return f"missed ({closest:.2f}x)" if np.isfinite(closest) else "missed"
    return f"{steps:.0f} ({steps * per_step:.2f} s)"


def render_markdown(results: Mapping[str, Any]) -> str:
    """The protocol report: targets, then per track the time to target of every optimizer on
    every task and the aggregate scores."""
    targets, seconds = results["targets"], results["seconds_per_step"]
    optimizers = results["optimizers"]
    lines = [
        "# Time to target",
        "",
        f"Targets from `{results['targets_file']}` (validation loss; made by "
        f"`{results['targets_command']}`). Budget: {results['steps']} steps, validation every "
        f"{results['eval_every']} steps. A cell gives the steps to reach the target and, in "
        "parentheses, the seconds (steps x the optimizer's measured seconds per step on the "
        "task, compilation excluded); `missed (r)`: not reached within the budget, the lowest "
        "validation loss reached being r times the target (median over studies or seeds); "
        "`n/a`: a meta-trained optimizer has no learning rate to tune.",
        "",
        "| task | target | set by |",
        "| --- | --- | --- |",
        *(f"| {t} | {v['target']:.4g} | {v['setter']} |" for t, v in targets.items()),
        "",
    ]
    for track_name in TRACKS:
        track = results["tracks"].get(track_name)
        if not track:
            continue
        header = "| task | " + " | ".join(optimizers) + " |"
        lines += [f"## {TRACK_TITLES[track_name]}", "", header, header_rule(header)]
        for task, by_optimizer in track.items():
            target = targets[task]["target"]
            cells = [_cell(by_optimizer[n], seconds[task][n], target) for n in optimizers]
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
        summary = results["aggregates"].get(track_name) or {}
        if summary:
            lines += [
                "",
                "| optimizer | targets reached | profile score, seconds [95%] | "
                "profile score, steps [95%] | wall time of the track |",
                "| --- | --- | --- | --- | --- |",
            ]
            for name in summary["tasks_reached"]:
                cells = [f"{summary['tasks_reached'][name]}/{summary['num_tasks']}"]
                for cost in ("seconds", "steps"):
                    s = summary[f"profile_score_{cost}"][name]
                    cells.append(f"{s['score']:.3f} [{s['interval'][0]:.3f}, "
                                 f"{s['interval'][1]:.3f}]")  # fmt: skip
                cells.append(f"{summary.get('wall_time_s', {}).get(name, 0.0) / 60:.1f} min")
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines += [
                "",
                "Profile score: AlgoPerf's area under the performance profile up to 4x the "
                "fastest optimizer's time on each task, in [0, 1]; a missed target counts as "
                "never within reach. The interval resamples tasks and, within each, the "
                "studies or seeds.",
            ]
        lines.append("")
    lines.append("![validation loss](validation_curves.png)")
    return "\n".join(lines) + "\n"


def figures(results: Mapping[str, Any]) -> dict[str, bytes]:
    """`validation_curves.png`: the validation curves of the self-tuning runs (or, without that
    track, of each study's best trial), targets drawn as lines."""
    tracks = results["tracks"]
    track = tracks.get("self") or tracks.get("external")
    if not track:
        return {}
    curves = {
        task: {
            n: np.asarray(e["valid_loss"], np.float64)
            for n, e in by_opt.items()
            if "valid_loss" in e
        }  # fmt: skip
        for task, by_opt in track.items()
    }
    steps = {
        task: next(np.asarray(e["eval_step"]) for e in by_opt.values() if "eval_step" in e)
        for task, by_opt in track.items()
        if curves[task]
    }
    curves = {task: c for task, c in curves.items() if c}
    if not curves:
        return {}
    targets = {task: results["targets"][task]["target"] for task in curves}
    colour = plots.colours(results["optimizers"])
    return {"validation_curves.png": plots.validation_curves(curves, steps, targets, colour)}
