"""`l2o meta-train`: checkpoints, exact resume after SIGKILL, export, bad configs, and resumes
that are refused (a changed config, nothing to resume) or that rebuild lost metrics."""

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from l2o.cli.main import main

REPO = Path(__file__).resolve().parents[3]
TINY = REPO / "configs" / "meta_tiny.yaml"


STEPS = 60  # long enough that the kill lands mid-run
FINAL = f"ckpt_{STEPS:08d}.npz"


def _command(out, *extra):
    return [sys.executable, "-m", "l2o.cli", "meta-train", "--config", str(TINY),
            "--out", str(out), "--steps", str(STEPS), *extra]  # fmt: skip


def _arrays(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files if k != "__metadata__"}


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path, capsys):
    # The compilation cache lets the later processes skip compiling (the same executables).
    env = {**os.environ, "PYTHONHASHSEED": "0", "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jit"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}  # fmt: skip
    whole = tmp_path / "whole"
    subprocess.run(_command(whole), check=True, capture_output=True, env=env, timeout=600)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)  # fmt: skip
    deadline = time.time() + 300
    while not list(killed.glob("ckpt_*.npz")) and proc.poll() is None:
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / FINAL).exists(), "the run finished before the kill"

    # Refused, before any work (run in this process: no signal involved).
    assert main(_command(killed)[3:]) == 2 and "--resume" in capsys.readouterr().err
    subprocess.run(_command(killed, "--resume"), check=True, capture_output=True, env=env,
                   timeout=600)  # fmt: skip
    a = _arrays(whole / FINAL)
    b = _arrays(killed / FINAL)
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert (killed / "optimizer.safetensors").read_bytes()[:8] == (
        whole / "optimizer.safetensors"
    ).read_bytes()[:8]

    # `l2o export` writes the same theta from the newest checkpoint.
    exported = tmp_path / "exported.safetensors"
    assert main(["export", str(killed), "--out", str(exported)]) == 0
    import l2o

    l2o.load_optimizer(exported)  # validates every leaf


HEAD = "optimizer: {name: learnable_adam}\ntasks: [rosenbrock]\n"
BAD = {
    "optimizer: {name: nope}\ntasks: [rosenbrock]\n": "unknown learned optimizer",
    HEAD + "estimator: {name: xes}\n": "xes",
    HEAD + "objective: {horizon: 5, truncation: 9}\n": "truncation",
    HEAD + "outer: {stepz: 3}\n": "stepz",
    "optimizer: {name: learnable_adam}\ntasks: []\n": "non-empty",
    "optimizer: {name: mlp, config: {hidden: banana}}\ntasks: [rosenbrock]\n": "hidden",
}


@pytest.mark.parametrize("text, message", list(BAD.items()))
def test_bad_meta_configs_exit_2(tmp_path, capsys, text, message):
    config = tmp_path / "meta.yaml"
    config.write_text(text)
    code = main(["meta-train", "--config", str(config), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def _meta_train(config, out, *extra) -> int:
    return main(["meta-train", "--config", str(config), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """`four`: the tiny run, 4 outer steps; `six`: 6 steps, started with --resume in an empty
    folder (a run killed before its first checkpoint), which starts from step 0."""
    root = tmp_path_factory.mktemp("meta")
    assert _meta_train(TINY, root / "four", "--steps", "4") == 0
    (root / "six").mkdir()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert _meta_train(TINY, root / "six", "--steps", "6", "--resume") == 0
    assert "no checkpoint in" in err.getvalue() and "starting from step 0" in err.getvalue()
    return root


def _config(tmp_path, edit=lambda data: None) -> Path:
    data = yaml.safe_load(TINY.read_text())
    edit(data)
    path = tmp_path / "meta.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("metrics", ["intact", "not JSON", "junk rows", "missing", "steps in YAML"])
def test_resume_extends_a_finished_run_bit_for_bit_even_without_its_metrics(
    runs, tmp_path, capsys, metrics
):
    out = tmp_path / "run"
    shutil.copytree(runs / "four", out)
    if metrics == "not JSON":
        (out / "meta_metrics.json").write_text("{not json")
    elif metrics == "junk rows":
        (out / "meta_metrics.json").write_text('[1, {"step": "2"}]')
    elif metrics == "missing":
        (out / "meta_metrics.json").unlink()
    if metrics == "steps in YAML":  # the one config change a resume allows, as --steps
        config = _config(tmp_path, lambda data: data["outer"].update(steps=6))
        assert _meta_train(config, out, "--resume") == 0
    else:
        assert _meta_train(TINY, out, "--steps", "6", "--resume") == 0
    err = capsys.readouterr().err
    a, b = _arrays(out / "ckpt_00000006.npz"), _arrays(runs / "six" / "ckpt_00000006.npz")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    rows = json.loads((out / "meta_metrics.json").read_text())
    reference = json.loads((runs / "six" / "meta_metrics.json").read_text())
    if metrics in ("intact", "steps in YAML"):
        assert rows == reference and "lost" not in err
    else:  # the metrics of steps 1-4 are gone: said in one line, the list starts again
        assert rows == reference[4:] and "Traceback" not in err
        (line,) = [line for line in err.splitlines() if "lost" in line]
        assert "meta_metrics.json" in line and "steps up to 4" in line
    assert json.loads((out / "results.json").read_text())["final"] == reference[-1]


CHANGES = {
    "outer.learning_rate: 0.05 -> 0.01": lambda d: d["outer"].update(learning_rate=0.01),
    "estimator.sigma: 0.05 -> 0.1": lambda d: d["estimator"].update(sigma=0.1),
    "objective.horizon: 40 -> 20": lambda d: d["objective"].update(horizon=20),
    "outer.seed: 0 -> 1": lambda d: d["outer"].update(seed=1),
    'tasks.0: "quadratic_k100" -> "rosenbrock"': lambda d: d.update(tasks=["rosenbrock"]),
    "eval_every: 4 -> 2": lambda d: d.update(eval_every=2),
    "checkpoint_every: 2 -> unset": lambda d: d.pop("checkpoint_every"),
}


@pytest.mark.slow
@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_resume_with_a_changed_config_is_refused_naming_the_keys(runs, tmp_path, capsys, change):
    out = tmp_path / "run"
    shutil.copytree(runs / "four", out)
    before = sorted(p.name for p in out.iterdir())
    code = _meta_train(_config(tmp_path, CHANGES[change]), out, "--resume", "--steps", "6")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "differs" in err, err
    assert change in err and "only --steps may change" in err, err
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written


@pytest.mark.slow
def test_a_changed_theta_shape_is_reported_as_a_config_change(tmp_path, capsys):
    """A different hidden size: the checkpoint's arrays do not fit, but the message names the
    config key that changed, not a damaged file."""
    mlp = _config(tmp_path, lambda d: d.update(optimizer={"name": "mlp", "config": {
        "hidden_sizes": [4]}}))  # fmt: skip
    assert _meta_train(mlp, tmp_path / "out", "--steps", "1") == 0
    capsys.readouterr()
    mlp.write_text(mlp.read_text().replace("- 4", "- 8"))
    assert _meta_train(mlp, tmp_path / "out", "--resume") == 2
    err = capsys.readouterr().err
    assert "optimizer.config.hidden_sizes.0: 4 -> 8" in err and err.count("\n") == 1, err
    assert "checksum" not in err and "needs" not in err and "usable" not in err, err


@pytest.mark.parametrize("where", ["missing folder", "foreign folder"])
def test_resume_with_nothing_to_resume_exits_2(tmp_path, capsys, where):
    out = tmp_path / "out"
    if where == "foreign folder":  # e.g. the output of another command
        out.mkdir()
        (out / "results.json").write_text("{}")
    code = _meta_train(TINY, out, "--resume")
    err = capsys.readouterr().err
    assert code == 2 and "nothing to resume" in err and err.count("\n") == 1, err
    if where == "foreign folder":
        assert sorted(p.name for p in out.iterdir()) == ["results.json"]
    else:
        assert not out.exists()  # a missing folder is not made
