"""`l2o calibrate-rule`: a rule file's learning rate relative to AdamW's, written with a new
sha256 and the default learning rate it gives; the file policy and bad input; `l2o export-rule
--adamw-lr`."""

import importlib.util
import inspect
import json

import pytest

from l2o.cli.main import main
from search.programs_library import get_program
from search.rule_file import ADAMW_RATIO, read_rule, save_rule

CONFIG = """\
warm_starts: [sgd]
mutation: {max_instructions: 8, max_state: 1}
proxy:
  tasks: [{name: quadratic_k100, options: {dim: 8}}]
  steps: 20
  seeds: 1
lr_transfer: {low: 1.0e-3, high: 10.0, per_decade: 2}
"""


@pytest.fixture
def rule(tmp_path):
    path = tmp_path / "rule.json"
    save_rule(path, get_program("sgd"), {"learning_rate": 0.5, "fitness": -1.0})
    return path


@pytest.mark.slow
def test_calibrate_rule_writes_the_ratio_and_refuses_to_overwrite(tmp_path, capsys, rule):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    out = tmp_path / "calibrated.json"
    args = ["calibrate-rule", str(rule), "--config", str(config), "--out", str(out)]
    assert main(args) == 0
    assert "AdamW's" in capsys.readouterr().out
    program, metadata = read_rule(out)  # the sha256 checks
    assert program == get_program("sgd") and metadata["fitness"] == -1.0
    ratio = metadata[ADAMW_RATIO]
    assert [(row["suite"], row["steps"]) for row in ratio["tasks"]] == [
        ("proxy", 20),
        ("funnel", 20),
    ]
    assert ratio["min"] <= ratio["median"] <= ratio["max"] and ratio["grid"]["num"] == 9
    assert metadata["learning_rate"] == pytest.approx(ratio["median"] * ratio["reference_adamw_lr"])
    assert len(json.loads(out.read_text())["sha256"]) == 64

    written = out.read_bytes()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--overwrite" in err and err.count("\n") == 1, err
    assert out.read_bytes() == written


@pytest.mark.parametrize(
    "config, out, message",
    [(None, "new.json", "stores no evolve config"),
     ("proxy: {tasks: [quadratic_k100]}\nlr_transfer: {low: 1, high: 0.1}\n", "new.json",
      "low must be below high"),
     ("proxy: {tasks: [quadratic_k100]}\nlr_transfer: {num: 3}\n", "new.json", "num"),
     ("proxy: {tasks: [quadratic_k100]}\n", ".", "is a directory")],
)  # fmt: skip
def test_bad_input_exits_2_before_any_work(tmp_path, capsys, rule, config, out, message):
    args = ["calibrate-rule", str(rule), "--out", str(tmp_path / out)]
    if config is not None:
        (tmp_path / "config.yaml").write_text(config)
        args += ["--config", str(tmp_path / "config.yaml")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "new.json").exists()


def test_a_missing_or_tampered_rule_exits_2(tmp_path, capsys, rule):
    rule.write_text(rule.read_text().replace('"fitness": -1.0', '"fitness": -2.0'))
    for path, message in ((rule, "sha256 mismatch"), (tmp_path / "nope.json", "nope.json")):
        assert main(["calibrate-rule", str(path), "--out", str(tmp_path / "new.json")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def _import(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_rule_converts_an_adamw_learning_rate_and_documents_the_ratio(tmp_path, capsys):
    rule = tmp_path / "rule.json"
    ratio = {"median": 4.0, "min": 2.0, "max": 8.0, "tasks_inside_grid": 6}
    save_rule(rule, get_program("adam"), {"learning_rate": 0.5, ADAMW_RATIO: ratio})
    out = tmp_path / "out"
    assert main(["export-rule", str(rule), "--out", str(out), "--adamw-lr", "0.003"]) == 0
    module = _import(out / "discovered.py")
    assert inspect.signature(module.discovered).parameters["learning_rate"].default == 0.012
    assert "4 times AdamW's (median over 6 tasks, range 2 to 8)" in " ".join(
        inspect.getdoc(module.discovered).split()
    )

    save_rule(rule, get_program("adam"), {"learning_rate": 0.5})
    assert main(["export-rule", str(rule), "--out", str(tmp_path / "o2"), "--adamw-lr", "1"]) == 2
    assert "no learning-rate ratio to AdamW" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_an_evaluate_config_runs_a_rule_at_the_equivalent_of_an_adamw_learning_rate(tmp_path):
    from l2o.cli.config import parse_optimizer
    from l2o.evaluation.harness import optimizer_factory
    from l2o.io import UserError

    rule = tmp_path / "rule.json"
    save_rule(rule, get_program("sgd"), {"learning_rate": 0.5, ADAMW_RATIO: {"median": 4.0}})
    spec = parse_optimizer({"file": str(rule), "tune_lr": False, "adamw_lr": 0.003}, "o")
    assert optimizer_factory(spec)[1] == pytest.approx(0.012)
    assert optimizer_factory(parse_optimizer(str(rule), "o"))[1] == 0.5
    save_rule(rule, get_program("sgd"), {"learning_rate": 0.5})
    for entry, message in (({"file": str(rule), "adamw_lr": 0.003}, "no learning-rate ratio"),
                           ({"name": "adamw", "adamw_lr": 0.003}, "adamw_lr")):  # fmt: skip
        with pytest.raises(UserError, match=message):
            parse_optimizer(entry, "o")
