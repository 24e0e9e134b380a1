"""Dataset files and loaders: checksums, shapes, labels, failure messages and safe downloads."""

import gzip
import io
import os
import pathlib
import struct
import tarfile
import urllib.error
import urllib.request

import numpy as np
import pytest

from tasks import data_files, image_datasets, text_datasets
from tasks.data_files import DatasetError

REAL_URLOPEN = urllib.request.urlopen
MNIST_TEST_LABELS = "mnist/t10k-labels-idx1-ubyte.gz"
FASHION_TEST_LABELS = "fashion-mnist/t10k-labels-idx1-ubyte.gz"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test runs offline: any attempt to open a URL fails like a machine without network."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def shared_dir() -> pathlib.Path:
    """The shared data folder named by L2O_DATA_DIR."""
    env = os.environ.get(data_files.ENV_VAR)
    if not env or not pathlib.Path(env).is_dir():
        pytest.skip(f"{data_files.ENV_VAR} does not point at a data folder")
    return pathlib.Path(env)


@pytest.fixture
def empty_dir(tmp_path, monkeypatch) -> pathlib.Path:
    """An empty data dir and no system copies."""
    path = tmp_path / "data"
    monkeypatch.setenv(data_files.ENV_VAR, str(path))
    monkeypatch.setattr(data_files, "SYSTEM_COPIES", {})
    return path


def require(*names: str) -> None:
    missing = [n for n in names if data_files.locate(n) is None]
    if missing:
        pytest.skip(f"data files not present: {missing}")


def copy_into(shared: pathlib.Path, dest: pathlib.Path, name: str) -> pathlib.Path:
    target = dest / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes((shared / name).read_bytes())
    return target


def test_data_dir_env_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv(data_files.ENV_VAR, str(tmp_path / "x"))
    assert data_files.data_dir() == tmp_path / "x"
    monkeypatch.delenv(data_files.ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_files.data_dir() == tmp_path / "cache" / "l2o" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data_files.data_dir() == pathlib.Path("~/.cache/l2o/data").expanduser()


def test_table_agrees_with_sha256sums(shared_dir):
    sums = shared_dir / "SHA256SUMS"
    if not sums.is_file():
        pytest.skip("no SHA256SUMS in the data folder")
    listed = dict(line.split()[::-1] for line in sums.read_text().splitlines() if line.strip())
    for name, digest in listed.items():
        assert data_files.sha256_hex((shared_dir / name).read_bytes()) == digest, name
        if name in data_files.KNOWN_FILES:
            assert data_files.KNOWN_FILES[name][0] == digest, name


@pytest.mark.parametrize("name", sorted(set(data_files.KNOWN_FILES) - {data_files.CIFAR10_TAR}))
def test_known_file_verifies(shared_dir, name):
    require(name)
    data = data_files.read_bytes(name, download=False)
    assert len(data) > 0


def test_mnist(shared_dir):
    data = image_datasets.load_mnist(download=False)
    for split, n in (("train", 60000), ("test", 10000)):
        x, y = data[split]
        assert x.shape == (n, 28, 28, 1) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.int32
        assert set(np.unique(y)) == set(range(10))
    assert data["train"][1][:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]
    assert data["test"][1][:8].tolist() == [7, 2, 1, 0, 4, 1, 4, 9]


def test_fashion_mnist_test_split(shared_dir):
    x = image_datasets.load_idx("fashion-mnist/t10k-images-idx3-ubyte.gz", download=False)
    y = image_datasets.load_idx(FASHION_TEST_LABELS, download=False)
    assert x.shape == (10000, 28, 28) and y.shape == (10000,)
    assert np.bincount(y).tolist() == [1000] * 10


def test_fashion_mnist_full_if_present(shared_dir):
    require("fashion-mnist/train-images-idx3-ubyte.gz")
    data = image_datasets.load_fashion_mnist(download=False)
    assert data["train"][0].shape == (60000, 28, 28, 1)
    assert data["test"][0].shape == (10000, 28, 28, 1)
    assert np.bincount(data["train"][1]).tolist() == [6000] * 10


def test_cifar10_subset(shared_dir):
    require(*image_datasets.CIFAR10_SUBSET["train"], *image_datasets.CIFAR10_SUBSET["test"])
    if data_files.cifar10_batches_dir().is_dir():
        pytest.skip("the data folder holds the full CIFAR-10 batches")
    data = image_datasets.load_cifar10(download=False)
    (x, y), (xt, yt) = data["train"], data["test"]
    assert x.shape == (4000, 32, 32, 3) and xt.shape == (1000, 32, 32, 3)
    assert x.dtype == np.uint8 and y.dtype == np.int32
    assert y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert yt[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert 0 <= y.min() and max(y.max(), yt.max()) <= 9


def test_tiny_shakespeare(shared_dir):
    tokens, vocab = text_datasets.load_tiny_shakespeare(download=False)
    assert tokens.shape == (1115394,) and tokens.dtype == np.uint8
    assert len(vocab) == 65 and vocab == "".join(sorted(vocab))
    assert text_datasets.decode(tokens[:14], vocab) == "First Citizen:"


def test_encode_decode_round_trip():
    vocab = text_datasets.vocabulary("hello world")
    tokens = text_datasets.encode("low hello", vocab)
    assert text_datasets.decode(tokens, vocab) == "low hello"
    with pytest.raises(ValueError, match="not in vocab"):
        text_datasets.encode("xyz", vocab)


def test_digits():
    data = image_datasets.load_digits()
    (x, y), (xt, yt) = data["train"], data["test"]
    assert len(x) + len(xt) == 1797 and len(xt) == 500
    assert x.shape[1:] == (8, 8, 1) and x.dtype == np.float32 and y.dtype == np.int32
    assert 0.0 <= min(x.min(), xt.min()) and max(x.max(), xt.max()) <= 1.0
    assert set(np.unique(y)) == set(np.unique(yt)) == set(range(10))
    assert np.bincount(yt).min() >= 35  # a shuffled split: every class in the test set
    again = image_datasets.load_digits()
    assert np.array_equal(again["test"][1], yt)  # the same fixed permutation every time


def test_corrupted_copy_names_file(shared_dir, empty_dir):
    path = copy_into(shared_dir, empty_dir, MNIST_TEST_LABELS)
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="corrupt") as err:
        image_datasets.load_idx(MNIST_TEST_LABELS, download=False)
    assert str(path) in str(err.value)
    assert data_files.KNOWN_FILES[MNIST_TEST_LABELS][0] in str(err.value)
    assert "digits_mlp" in str(err.value)


def test_split_parts_are_joined_and_verified(shared_dir, empty_dir):
    raw = (shared_dir / MNIST_TEST_LABELS).read_bytes()
    target = empty_dir / MNIST_TEST_LABELS
    target.parent.mkdir(parents=True)
    for i, start in enumerate(range(0, len(raw), 2000)):
        pathlib.Path(f"{target}.part{i:02d}").write_bytes(raw[start : start + 2000])
    labels = image_datasets.load_idx(MNIST_TEST_LABELS, download=False)
    assert labels.shape == (10000,)
    pathlib.Path(f"{target}.part01").write_bytes(b"x" * 2000)
    with pytest.raises(DatasetError, match="part00"):
        image_datasets.load_idx(MNIST_TEST_LABELS, download=False)


def test_truncated_or_wrong_idx():
    raw = struct.pack(">IIII", 0x803, 2, 3, 3) + bytes(18)
    assert image_datasets.parse_idx(raw).shape == (2, 3, 3)
    with pytest.raises(DatasetError, match="some/file.*truncated"):
        image_datasets.parse_idx(raw[:-1], "some/file")
    with pytest.raises(DatasetError, match="too long"):
        image_datasets.parse_idx(raw + b"\0", "some/file")
    with pytest.raises(DatasetError, match="magic"):
        image_datasets.parse_idx(struct.pack(">II", 0x802, 0), "some/file")
    with pytest.raises(DatasetError, match="too short"):
        image_datasets.parse_idx(b"\0\0", "some/file")


def test_parse_cifar10_record_layout():
    record = np.zeros(3073, np.uint8)
    record[0] = 7
    planes = record[1:].reshape(3, 32, 32)
    planes[0, 1, 2], planes[1, 1, 2], planes[2, 1, 2] = 10, 20, 30
    x, y = image_datasets.parse_cifar10(record.tobytes())
    assert y.tolist() == [7] and x.shape == (1, 32, 32, 3)
    assert x[0, 1, 2].tolist() == [10, 20, 30] and int(x.sum()) == 60
    with pytest.raises(DatasetError, match="records"):
        image_datasets.parse_cifar10(record.tobytes()[:-1], "short.bin")


def test_missing_file_offline_names_alternatives(empty_dir):
    with pytest.raises(DatasetError, match="missing") as err:
        image_datasets.load_mnist(download=False)
    message = str(err.value)
    assert str(empty_dir / "mnist" / "train-images-idx3-ubyte.gz") in message
    assert "digits_mlp" in message and "mnist1d_mlp" in message and "synthetic" in message


def test_missing_file_without_network_says_so(empty_dir):
    with pytest.raises(DatasetError, match="network") as err:
        text_datasets.load_tiny_shakespeare(download=True)
    assert "digits_mlp" in str(err.value)
    assert list(empty_dir.rglob("*")) == [empty_dir / "tinyshakespeare"]


def test_missing_cifar10_offline(empty_dir):
    with pytest.raises(DatasetError, match="CIFAR-10") as err:
        image_datasets.load_cifar10(download=False)
    assert "cifar-10-batches-bin" in str(err.value) and "digits_mlp" in str(err.value)


def test_debian_style_copy_checked_by_decompressed_bytes(
    shared_dir, empty_dir, tmp_path, monkeypatch
):
    plain = gzip.decompress((shared_dir / FASHION_TEST_LABELS).read_bytes())
    system = tmp_path / "system"
    system.mkdir()
    copy = system / "t10k-labels-idx1-ubyte.gz"
    copy.write_bytes(gzip.compress(plain, mtime=1591315181))
    assert (
        data_files.sha256_hex(copy.read_bytes()) != data_files.KNOWN_FILES[FASHION_TEST_LABELS][0]
    )
    monkeypatch.setattr(data_files, "SYSTEM_COPIES", {"fashion-mnist": system})
    assert image_datasets.load_idx(FASHION_TEST_LABELS, download=False).shape == (10000,)
    copy.write_bytes(gzip.compress(plain[:-1] + b"\x09", mtime=1591315181))
    with pytest.raises(DatasetError, match="corrupt") as err:
        image_datasets.load_idx(FASHION_TEST_LABELS, download=False)
    assert str(copy) in str(err.value)


class _Response(io.BytesIO):
    """A urlopen response serving fixed bytes, optionally failing after the first read."""

    def __init__(self, data: bytes, fail: bool = False):
        super().__init__(data)
        self.fail, self.reads = fail, 0

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        if self.fail and self.reads > 1:
            raise ConnectionResetError("connection lost")
        return super().read(size)


def test_download_good_bytes_land_atomically(monkeypatch, tmp_path):
    monkeypatch.setattr(urllib.request, "urlopen", REAL_URLOPEN)
    source = tmp_path / "source.bin"
    source.write_bytes(b"payload" * 1000)
    dest = tmp_path / "cache" / "sub" / "file.bin"
    digest = data_files.sha256_hex(source.read_bytes())
    data_files.download_file(source.as_uri(), dest, digest)
    assert dest.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["file.bin"]


@pytest.mark.parametrize("fail", [False, True])
def test_download_bad_or_broken_leaves_no_file(monkeypatch, tmp_path, fail):
    monkeypatch.setattr(data_files, "CHUNK_BYTES", 16)
    served = b"not the right bytes at all" * 10
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _Response(served, fail))
    dest = tmp_path / "cache" / "file.bin"
    with pytest.raises(DatasetError, match="network" if fail else "sha256") as err:
        data_files.download_file("https://example.invalid/f", dest, "0" * 64)
    assert str(dest) in str(err.value)
    assert list(dest.parent.iterdir()) == []


def test_read_bytes_downloads_missing_file(shared_dir, empty_dir, monkeypatch):
    expected, _ = data_files.KNOWN_FILES[MNIST_TEST_LABELS]
    source = (shared_dir / MNIST_TEST_LABELS).as_uri()
    monkeypatch.setitem(data_files.KNOWN_FILES, MNIST_TEST_LABELS, (expected, source))
    monkeypatch.setattr(urllib.request, "urlopen", REAL_URLOPEN)
    labels = image_datasets.load_idx(MNIST_TEST_LABELS, download=True)
    assert labels.shape == (10000,)
    assert (empty_dir / MNIST_TEST_LABELS).is_file()


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes, **kw) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in kw.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data))


def test_extract_cifar10_takes_only_regular_batches(tmp_path):
    tar_path = tmp_path / "c.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        _tar_member(tar, "cifar-10-batches-bin/data_batch_1.bin", b"good")
        _tar_member(tar, "cifar-10-batches-bin/readme.html", b"skip")
        _tar_member(tar, "../data_batch_2.bin", b"evil")
        _tar_member(tar, "cifar-10-batches-bin/../../test_batch.bin", b"evil")
        _tar_member(
            tar, "cifar-10-batches-bin/data_batch_3.bin", b"", type=tarfile.SYMTYPE, linkname="/x"
        )
    dest = tmp_path / "out" / "cifar-10-batches-bin"
    written = data_files.extract_cifar10(tar_path, dest)
    assert written == [dest / "data_batch_1.bin"]
    assert sorted(p.name for p in dest.iterdir()) == ["data_batch_1.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tar.gz", "out"]


def test_full_cifar10_batches_preferred(empty_dir, monkeypatch):
    monkeypatch.setattr(image_datasets, "CIFAR10_BATCH_RECORDS", 3)
    folder = data_files.cifar10_batches_dir()
    folder.mkdir(parents=True)
    for i, file in enumerate(data_files.CIFAR10_BATCH_FILES):
        records = np.zeros((3, 3073), np.uint8)
        records[:, 0] = i
        (folder / file).write_bytes(records.tobytes())
    data = image_datasets.load_cifar10(download=False)
    assert data["train"][0].shape == (15, 32, 32, 3)
    assert data["train"][1].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert data["test"][1].tolist() == [5, 5, 5]
    (folder / "test_batch.bin").write_bytes(records[:2].tobytes())
    with pytest.raises(DatasetError, match="test_batch.bin"):
        image_datasets.load_cifar10(download=False)


def test_full_cifar10_downloaded_verified_and_extracted(empty_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(image_datasets, "CIFAR10_BATCH_RECORDS", 2)
    tar_path = tmp_path / "served.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for i, file in enumerate(data_files.CIFAR10_BATCH_FILES):
            records = np.zeros((2, 3073), np.uint8)
            records[:, 0] = i
            _tar_member(tar, f"cifar-10-batches-bin/{file}", records.tobytes())
    digest = data_files.sha256_hex(tar_path.read_bytes())
    entry = (digest, tar_path.as_uri())
    monkeypatch.setitem(data_files.KNOWN_FILES, data_files.CIFAR10_TAR, entry)
    monkeypatch.setattr(urllib.request, "urlopen", REAL_URLOPEN)
    data = image_datasets.load_cifar10(download=True)
    assert data["train"][1].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert data["test"][1].tolist() == [5, 5]
    assert (empty_dir / data_files.CIFAR10_TAR).is_file()
    wrong = ("0" * 64, tar_path.as_uri())
    monkeypatch.setitem(data_files.KNOWN_FILES, data_files.CIFAR10_TAR, wrong)
    (data_files.cifar10_batches_dir() / "test_batch.bin").unlink()
    with pytest.raises(DatasetError, match="corrupt"):
        image_datasets.load_cifar10(download=True)
