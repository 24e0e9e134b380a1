"""`l2o targets` and `l2o protocol`: files written with their command, interrupted runs that
resume to the uninterrupted result, and refusals (changed config, mismatched targets, a used
output folder) as one line with exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from l2o.cli import protocol as protocol_cli
from l2o.cli.main import main
from l2o.evaluation import protocol

CONFIG = {
    "tasks": [{"name": "least_squares_k10000", "options": {"num_examples": 256, "dim": 8}}],
    "optimizers": ["adamw", {"file": "l2o/pretrained/mlp_digits.safetensors"}],
    "steps": 40,
    "eval_every": 10,
    "seeds": 2,
    "timing_steps": 5,
    "targets": {"trials": 3, "steps": 30, "setters": ["adamw", "momentum"]},
    "tuning": {"trials": 2, "studies": 2},
}


def _config(tmp_path, **changes) -> str:
    data = {**CONFIG, **changes}
    data["targets"] = {**CONFIG["targets"], "file": str(tmp_path / "targets.json"),
                       **changes.get("targets", {})}  # fmt: skip
    path = tmp_path / f"protocol{len(list(tmp_path.glob('protocol*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.slow
def test_targets_resume_after_an_interruption_to_the_uninterrupted_result(
    tmp_path, monkeypatch, capsys
):
    config = _config(tmp_path)
    assert main(["targets", "--config", config, "--out", str(tmp_path / "whole.json")]) == 0
    whole = json.loads((tmp_path / "whole.json").read_text())
    assert whole["command"] == f"l2o targets --config {config} --out {tmp_path / 'whole.json'}"
    entry = whole["tasks"]["least_squares_k10000"]
    assert entry["target"] == min(s["score"] for s in entry["by_setter"].values())
    assert whole["target_steps"] == 30 and whole["steps"] == 40

    real, calls = protocol.setter_score, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(protocol, "setter_score", interrupted)
    assert main(["targets", "--config", config]) == 130
    journal = tmp_path / "targets.json.journal.json"
    assert list(json.loads(journal.read_text())["units"]) == ["least_squares_k10000/adamw"]
    assert main(["targets", "--config", config]) == 2  # an unfinished run: --resume or delete
    assert "--resume" in capsys.readouterr().err
    changed = _config(tmp_path, targets={"trials": 4})
    assert main(["targets", "--config", changed, "--resume"]) == 2
    assert "configuration differs" in capsys.readouterr().err
    assert main(["targets", "--config", config, "--resume"]) == 0
    assert len(calls) == 3  # the journaled setter was not run again
    resumed = json.loads((tmp_path / "targets.json").read_text())
    assert resumed["tasks"] == whole["tasks"] and not journal.exists()
    assert main(["targets", "--config", config]) == 2  # never overwritten
    assert "exists" in capsys.readouterr().err


@pytest.mark.slow
def test_protocol_scores_both_tracks_against_stored_targets(tmp_path, capsys):
    config = _config(tmp_path)
    (tmp_path / "targets.json").write_text(json.dumps({
        "command": "l2o targets (by hand)", "steps": 40, "target_steps": 30, "eval_every": 10,
        "tasks": {"least_squares_k10000": {"target": 1e9, "setter": "adamw"}},
    }))  # fmt: skip
    out = tmp_path / "run"
    assert main(["protocol", "--config", config, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    external = results["tracks"]["external"]["least_squares_k10000"]
    selfs = results["tracks"]["self"]["least_squares_k10000"]
    # A target of 1e9 is met at the first evaluation (step 0) by every run.
    assert external["adamw"]["steps"] == 0 and selfs["adamw"]["per_seed"] == [0, 0]
    assert "not_applicable" in external["mlp_digits"] and selfs["mlp_digits"]["steps"] == 0
    assert results["aggregates"]["self"]["tasks_reached"] == {"adamw": 1, "mlp_digits": 1}
    assert set(results["seconds_per_step"]["least_squares_k10000"]) == {"adamw", "mlp_digits"}
    report = (out / "report.md").read_text()
    assert "| least_squares_k10000 | 0 (0.00 s) | n/a |" in report and "min |" in report
    assert (out / "validation_curves.png").stat().st_size > 1000
    assert list(out.glob("events.out.tfevents.*")) and not (out / "journal.json").exists()
    assert main(["protocol", "--config", config, "--out", str(out)]) == 2  # a used folder
    assert "--resume" in capsys.readouterr().err
    other = _config(tmp_path, steps=50)
    assert main(["protocol", "--config", other, "--out", str(tmp_path / "b")]) == 2
    assert "made for steps=40" in capsys.readouterr().err


def test_protocol_configs_are_checked_before_any_work(tmp_path, capsys):
    for changes, message in (
        ({"tuning": {"trials": 0}}, "tuning.trials"),
        ({"tuning": {"trials": 5000}}, "at most"),
        ({"targets": {"setters": ["lion"]}}, "setters"),
        ({"targets": {"steps": 400}}, "targets.steps"),
        ({"eval_every": 0}, "eval_every"),
        ({"rounds": 3}, "unknown key"),
    ):
        assert main(["targets", "--config", _config(tmp_path, **changes)]) == 2
        assert message in capsys.readouterr().err
    assert main(["protocol", "--config", _config(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_aggregate_scores_time_to_target_over_tasks():
    """Two tasks; a is fastest on task 1 (10 vs 20 steps), b on task 2 (a misses)."""
    track = {
        "t1": {"a": {"per_seed": [10, 10]}, "b": {"per_seed": [20, 20]}},
        "t2": {"a": {"per_seed": [None, None]}, "b": {"per_seed": [30, 30]}},
    }
    seconds = {"t1": {"a": 1.0, "b": 1.0}, "t2": {"a": 1.0, "b": 1.0}}
    out = protocol_cli.aggregate(track, seconds, ["a", "b"])
    # b on task 1 is at ratio 2: (4 - 2) / 3 of the area; a scores 1 on task 1, 0 on task 2.
    assert out["profile_score_steps"]["a"]["score"] == pytest.approx(0.5)
    assert out["profile_score_steps"]["b"]["score"] == pytest.approx((2 / 3 + 1) / 2)
    assert out["tasks_reached"] == {"a": 1, "b": 2}
    # Seconds: b's step costs 4x a's on task 1, beyond the profile's reach of 4x.
    slow = {"t1": {"a": 1.0, "b": 4.0}, "t2": {"a": 1.0, "b": 1.0}}
    assert protocol_cli.aggregate(track, slow, ["a", "b"])["profile_score_seconds"]["b"][
        "score"
    ] == pytest.approx(0.5)
    low, high = out["profile_score_steps"]["a"]["interval"]
    assert 0.0 <= low <= 0.5 <= high <= 1.0 and not np.isnan(low)
