"""`l2o meta-train`: checkpoints, exact resume after SIGKILL, export, and bad configs."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

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
def test_resume_after_sigkill_is_bit_identical(tmp_path):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
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

    again = subprocess.run(_command(killed), capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 2 and "--resume" in again.stderr
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
