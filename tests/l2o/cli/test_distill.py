"""`l2o distill` end to end on a tiny config: Adam's updates distilled from an SGD warm start,
the outputs (a rule file that loads, with the matched learning rate and cosines), refusal to
overwrite, resume, and one-line errors with exit code 2 on bad input."""

import json

import pytest
import yaml

from l2o.cli.evolve import list_checkpoints, load_checkpoint
from l2o.cli.main import main
from search.rule_file import load_rule, read_rule

TINY = {
    "seed": 0, "generations": 2, "population_size": 6, "tournament_size": 2, "batch_size": 4,
    "warm_starts": ["sgd"], "checkpoint_every": 1, "length_penalty": 0.001,
    "mutation": {"max_instructions": 8, "max_state": 1},
    "fit": {"tasks": [{"name": "digits_mlp", "options": {"hidden": [4]}}], "steps": 8},
    "heldout": {"tasks": [{"name": "digits_mlp", "options": {"hidden": [4]}}], "steps": 8},
    "funnel": {"top_k": 2},
}  # fmt: skip


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.mark.slow
def test_distill_writes_a_rule_refuses_overwrite_and_resumes(tmp_path, config, capsys):
    out = tmp_path / "run"
    argv = ["distill", "adam", "--config", str(config), "--out", str(out)]
    assert main(argv) == 0
    program, metadata = read_rule(out / "best_rule.json")
    load_rule(out / "best_rule.json")
    assert 0 < metadata["learning_rate"] < 1
    assert -1 <= metadata["heldout_cosine"] <= 1 and len(metadata["fit_cosines"]) == 1
    assert metadata["source"] == {"baseline": "adam", "sha256": None, "learning_rate": 1e-3}
    assert metadata["library"]["adam"]["fit_cosine"] == pytest.approx(1.0, abs=1e-4)
    summary = json.loads((out / "distill.json").read_text())
    assert summary["best"]["program"] == program.to_json() and summary["history"]
    assert "held-out cosine" in capsys.readouterr().out

    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    # One checkpoint per generation, each holding its own generation: the resume goes on from 2.
    newest = load_checkpoint(list_checkpoints(out)[-1])
    assert [p.name for p in list_checkpoints(out)][-1] == "evolve_00000002.json"
    assert newest["state"]["generation"] == 2 and len(newest["history"]) == 3
    assert main([*argv, "--resume", "--generations", "3"]) == 0
    assert read_rule(out / "best_rule.json")[1]["generations"] == 3
    resumed = json.loads((out / "distill.json").read_text())
    assert [row["generation"] for row in resumed["history"]] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("source", "change", "message"),
    [
        ("no_such_optimizer", {}, "neither"),
        ("missing.safetensors", {}, "no such file"),
        ("adam", {"fit": {"steps": 4}}, "'tasks' or 'family'"),
        ("adam", {"banana": 1}, "banana"),
        ("adam", {"warm_starts": ["nope"]}, "unknown program"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, source, change, message, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**TINY, **change}))
    code = main(["distill", source, "--config", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_resume_without_a_run_is_refused(tmp_path, config, capsys):
    argv = ["distill", "adam", "--config", str(config), "--out", str(tmp_path / "none")]
    assert main([*argv, "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
