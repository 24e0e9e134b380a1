"""Dataset failures as the user meets them: a truncated or silently changed data file is caught by
its checksum, and a missing one on a machine without network is reported, each with a message
that names the file, says how to fix it (delete it, download it again, or point L2O_DATA_DIR at
a good copy) and lists every offline task; through `l2o train` that message is one line with
exit code 2. Works on copies in tmp_path of the shared data folder, never on the folder itself.
(tests/tasks/test_datasets.py covers bit flips, split parts, downloads and CIFAR-10 archives.)"""

from __future__ import annotations

import os
import pathlib
import urllib.error
import urllib.request

import pytest

from l2o.cli.main import main
from tasks import OFFLINE_TASKS, classification, data_files, image_datasets, text_datasets
from tasks.data_files import DatasetError

MNIST = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz")  # fmt: skip


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No network, and no dataset cached in memory from earlier tests."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    classification.load_splits.cache_clear()
    yield
    classification.load_splits.cache_clear()


@pytest.fixture
def shared() -> pathlib.Path:
    env = os.environ.get(data_files.ENV_VAR)
    if not env or not (pathlib.Path(env) / "mnist").is_dir():
        pytest.skip("no shared data folder with MNIST")
    return pathlib.Path(env)


@pytest.fixture
def data(tmp_path, monkeypatch) -> pathlib.Path:
    folder = tmp_path / "data"
    folder.mkdir()
    monkeypatch.setenv(data_files.ENV_VAR, str(folder))
    monkeypatch.setattr(data_files, "SYSTEM_COPIES", {})
    return folder


def copy_mnist(shared: pathlib.Path, data: pathlib.Path) -> None:
    (data / "mnist").mkdir()
    for path in (shared / "mnist").iterdir():
        (data / "mnist" / path.name).write_bytes(path.read_bytes())


def assert_helpful(message: str, path: pathlib.Path) -> None:
    assert str(path) in message, message
    assert data_files.ENV_VAR in message, message
    for task in OFFLINE_TASKS:
        assert task in message, (task, message)


def test_the_message_names_every_offline_task():
    for task in OFFLINE_TASKS:
        assert task in data_files.OFFLINE_ALTERNATIVES, task


@pytest.mark.parametrize("damage", ["truncated", "appended", "zeroed"])
def test_a_damaged_copy_is_caught_by_its_checksum(shared, data, damage):
    copy_mnist(shared, data)
    path = data / "mnist" / MNIST[3]
    raw = path.read_bytes()
    damaged = {"truncated": raw[: len(raw) // 2], "appended": raw + b"\0",
               "zeroed": raw[:50] + bytes(50) + raw[100:]}[damage]  # fmt: skip
    path.write_bytes(damaged)
    with pytest.raises(DatasetError, match="corrupt") as err:
        image_datasets.load_mnist(download=False)
    message = str(err.value)
    assert_helpful(message, path)
    assert (
        "Delete the file" in message and data_files.KNOWN_FILES[f"mnist/{MNIST[3]}"][0] in message
    )


def test_a_missing_file_offline_says_so_and_names_the_alternatives(data):
    with pytest.raises(DatasetError, match="missing|network") as err:
        text_datasets.load_tiny_shakespeare(download=True)
    message = str(err.value)
    assert "network" in message
    assert_helpful(message, data / "tinyshakespeare" / "input.txt")


def _train(task: str, out: pathlib.Path, capsys) -> tuple[int, str]:
    code = main(["train", "--task", task, "--optimizer", "sgd", "--steps", "2", "--out", str(out)])
    return code, capsys.readouterr().err


def test_train_on_a_truncated_dataset_is_one_line_exit_2(shared, data, tmp_path, capsys):
    copy_mnist(shared, data)
    path = data / "mnist" / MNIST[1]
    path.write_bytes(path.read_bytes()[:1000])
    code, err = _train("mnist8_mlp", tmp_path / "out", capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "corrupt" in err and "Delete the file" in err
    assert_helpful(err, path)
    assert not (tmp_path / "out").exists()


def test_train_on_a_missing_dataset_offline_is_one_line_exit_2(data, tmp_path, capsys):
    code, err = _train("mnist8_mlp", tmp_path / "out", capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "missing" in err or "download" in err
    assert_helpful(err, data / "mnist")
    assert not (tmp_path / "out").exists()
    assert not [p for p in data.rglob("*") if p.is_file()]  # no partial download left
