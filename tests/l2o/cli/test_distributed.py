"""Several processes as one JAX runtime: flags, the join check that names a missing process, the
watchdog, and two processes on 127.0.0.1 that agree with one process."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from l2o.cli import distributed
from l2o.io import UserError

REPO = Path(__file__).resolve().parents[3]
WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
ENV_NAMES = (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    distributed.add_distributed_flags(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(autouse=True)
def no_cluster_environment(monkeypatch):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


def test_no_flags_or_one_process_is_a_single_process():
    assert distributed.cluster_from_args(parse()) is None
    assert distributed.cluster_from_args(parse("--num-processes", "1")) is None
    assert distributed.initialize(parse()) is None


def test_flags_and_environment_variables_name_the_cluster(monkeypatch):
    cluster = distributed.cluster_from_args(
        parse("--coordinator", "10.0.0.1:1234", "--num-processes", "4", "--process-id", "3")
    )
    assert cluster == distributed.Cluster("10.0.0.1:1234", 4, 3, distributed.DEFAULT_TIMEOUT)
    assert (cluster.host, cluster.port) == ("10.0.0.1", 1234)
    monkeypatch.setenv(distributed.ENV_COORDINATOR, "[::1]:99")
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "2")
    monkeypatch.setenv(distributed.ENV_PROCESS_ID, "1")
    cluster = distributed.cluster_from_args(parse("--init-timeout", "5"))
    assert (cluster.host, cluster.port, cluster.process_id, cluster.timeout) == ("::1", 99, 1, 5.0)
    assert distributed.cluster_from_args(parse("--process-id", "0")).process_id == 0  # flag wins


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--num-processes", "2", "--process-id", "0"], "needs --coordinator"),
        (["--num-processes", "2", "--coordinator", "h:1"], "needs --process-id"),
        (["--num-processes", "2", "--coordinator", "h:1", "--process-id", "2"], "between 0 and 1"),
        (["--num-processes", "two"], "must be an integer"),
        (["--num-processes", "0"], ">= 1"),
        (["--num-processes", "2", "--coordinator", "h", "--process-id", "0"], "HOST:PORT"),
        (["--num-processes", "2", "--coordinator", "h:99999", "--process-id", "0"], "port"),
    ],
)
def test_bad_cluster_flags_are_user_errors(argv, message):
    with pytest.raises(UserError, match=message):
        distributed.cluster_from_args(parse(*argv))


def _initialize_in_thread(argv, errors):
    def run():
        try:
            distributed.initialize(parse(*argv))
        except UserError as e:
            errors.append((argv[argv.index("--process-id") + 1], str(e)))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_every_waiting_process_names_the_one_that_never_joined():
    """Processes 0 and 1 of 3 meet; process 2 never comes: both end with an error naming it,
    before JAX is started."""
    common = ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "3",
              "--init-timeout", "1.5"]  # fmt: skip
    errors: list[tuple[str, str]] = []
    threads = [_initialize_in_thread([*common, "--process-id", i], errors) for i in ("0", "1")]
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert sorted(pid for pid, _ in errors) == ["0", "1"]
    for _, message in errors:
        assert message.startswith("process 2 of 3 did not join the coordinator"), message


def test_a_process_without_its_coordinator_names_process_0():
    argv = ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2",
            "--process-id", "1", "--init-timeout", "0.5"]  # fmt: skip
    with pytest.raises(UserError, match=r"coordinator \(process 0\) at 127.0.0.1:\d+ did not"):
        distributed.initialize(parse(*argv))


def test_a_duplicate_process_id_is_refused():
    common = ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "3",
              "--init-timeout", "3"]  # fmt: skip
    errors: list[tuple[str, str]] = []
    threads = [_initialize_in_thread([*common, "--process-id", i], errors) for i in "011"]
    for thread in threads:
        thread.join(timeout=30)
    messages = sorted(message for _, message in errors)
    assert len(messages) == 3
    assert sum("process id 1 is taken" in m for m in messages) == 1, messages
    assert sum(m.startswith("process 2 of 3 did not join") for m in messages) == 2, messages


def test_the_watchdog_reports_and_exits_with_code_2():
    code = ("import time\nfrom l2o.cli.distributed import _watchdog\n"
            "with _watchdog(0.3, 'JAX did not start'):\n    time.sleep(60)\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=REPO)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "l2o: error: JAX did not start"


def test_single_process_writer_helpers():
    assert distributed.is_writer()
    assert distributed.on_writer(lambda: 7) == 7
    with pytest.raises(UserError, match="bad"):
        distributed.on_writer(lambda: (_ for _ in ()).throw(UserError("bad")))
    tree = {"a": np.arange(3)}
    assert distributed.broadcast_from_writer(tree) is tree


def test_the_command_line_names_the_missing_process(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "l2o.cli", "meta-train", "--config",
               str(REPO / "configs" / "meta_tiny.yaml"), "--out", str(out),
               "--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2",
               "--process-id", "0", "--init-timeout", "1"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert "process 0 of 2: coordinator at 127.0.0.1:" in lines[0]
    assert "waiting up to 1 s for process 1 to join" in lines[0]
    assert lines[-1].startswith("l2o: error: process 1 of 2 did not join the coordinator")
    assert not out.exists()


def _spawn(argv, env, log):
    command = [sys.executable, "-P", str(WORKER), *argv]
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path):
    """Processes 0 and 1 (one CPU device each) meta-train and evaluate a program population
    together; both hold the single-process results, bit for bit."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    # One CPU device each: the other XLA flags of the tests, but no forced device count.
    flags = os.environ.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(f for f in flags if "device_count" not in f)
    cluster = ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2"]
    logs = [open(tmp_path / f"log{i}.txt", "w") for i in range(3)]  # noqa: SIM115
    processes = [
        _spawn(["--out", str(tmp_path / "two"), *cluster, "--process-id", str(i)], env, logs[i])
        for i in range(2)
    ]
    processes.append(_spawn(["--out", str(tmp_path / "one")], env, logs[2]))
    try:
        codes = [p.wait(timeout=400) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    output = [(tmp_path / f"log{i}.txt").read_text()[-2000:] for i in range(3)]
    assert codes == [0, 0, 0], output

    def load(name):
        with np.load(tmp_path / name) as f:
            return {k: f[k] for k in f.files}

    first, second, alone = load("two.0.npz"), load("two.1.npz"), load("one.0.npz")
    assert int(first["devices"]) == int(second["devices"]) == 2 and int(alone["devices"]) == 1
    assert bool(first["writer"]) and not bool(second["writer"])
    for name in ("meta_loss", "theta_log_lr", "theta_m", "programs_train_loss",
                 "programs_valid_loss"):  # fmt: skip
        np.testing.assert_array_equal(first[name], alone[name], err_msg=name)
        np.testing.assert_array_equal(second[name], alone[name], err_msg=name)
    assert first["programs_train_loss"].shape == (5, 2, 2)
