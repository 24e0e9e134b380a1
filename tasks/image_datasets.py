"""NumPy loaders for the image classification data sets: MNIST, Fashion-MNIST, CIFAR-10, digits."""

import pathlib
import struct

import numpy as np

from tasks import data_files
from tasks.data_files import DatasetError

Split = tuple[np.ndarray, np.ndarray]
Dataset = dict[str, Split]

IDX_IMAGES_MAGIC = 0x803
IDX_LABELS_MAGIC = 0x801
NUM_CLASSES = 10

CIFAR10_RECORD_BYTES = 1 + 3 * 32 * 32
CIFAR10_BATCH_RECORDS = 10000
CIFAR10_SUBSET = {
    "train": (
        "cifar10/data_batch_1_00000-00999.bin.gz",
        "cifar10/data_batch_1_01000-01999.bin.gz",
        "cifar10/data_batch_1_02000-02999.bin.gz",
        "cifar10/data_batch_1_03000-03999.bin.gz",
    ),
    "test": ("cifar10/test_batch_00000-00999.bin.gz",),
}
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

DIGITS_TRAIN = 1297
DIGITS_TEST = 500


def parse_idx(raw: bytes, name: str = "IDX data") -> np.ndarray:
    """Parse an IDX images (`N x H x W`) or labels (`N`) file into a uint8 array."""
    if len(raw) < 8:
        raise DatasetError(f"{name} is too short for an IDX header ({len(raw)} bytes).")
    magic, count = struct.unpack(">II", raw[:8])
    if magic == IDX_IMAGES_MAGIC:
        if len(raw) < 16:
            raise DatasetError(f"{name} is too short for an IDX images header ({len(raw)} bytes).")
        rows, cols = struct.unpack(">II", raw[8:16])
        header, shape = 16, (count, rows, cols)
    elif magic == IDX_LABELS_MAGIC:
        header, shape = 8, (count,)
    else:
        raise DatasetError(
            f"{name} is not an IDX file of uint8 images or labels: magic {magic:#x}, expected "
            f"{IDX_IMAGES_MAGIC:#x} or {IDX_LABELS_MAGIC:#x}."
        )
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "too long"
        raise DatasetError(
            f"{name} is {kind}: {len(raw)} bytes, expected {expected} for shape {shape}."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def load_idx(name: str, *, download: bool = True) -> np.ndarray:
    """Read, verify and parse the known IDX file `name` (e.g. `mnist/t10k-labels-idx1-ubyte.gz`)."""
    return parse_idx(data_files.read_bytes(name, download=download), name)


def _check_split(name: str, x: np.ndarray, y: np.ndarray) -> Split:
    if len(x) != len(y):
        raise DatasetError(f"{name}: {len(x)} images but {len(y)} labels.")
    if y.size and int(y.max()) >= NUM_CLASSES:
        raise DatasetError(f"{name}: label {int(y.max())} is outside 0..{NUM_CLASSES - 1}.")
    return x, y.astype(np.int32)


def _load_idx_dataset(folder: str, download: bool) -> Dataset:
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = load_idx(f"{folder}/{prefix}-images-idx3-ubyte.gz", download=download)
        y = load_idx(f"{folder}/{prefix}-labels-idx1-ubyte.gz", download=download)
        if x.ndim != 3 or y.ndim != 1:
            raise DatasetError(f"{folder}/{prefix}: images are {x.shape}, labels {y.shape}.")
        out[split] = _check_split(f"{folder}/{prefix}", x[..., None], y)
    return out


def load_mnist(download: bool = True) -> Dataset:
    """MNIST: `{"train": (x_Nx28x28x1 uint8, y_N int32), "test": ...}`, 60000 and 10000 images."""
    return _load_idx_dataset("mnist", download)


def load_fashion_mnist(download: bool = True) -> Dataset:
    """Fashion-MNIST, same layout as `load_mnist`; also reads Debian's `dataset-fashion-mnist`."""
    return _load_idx_dataset("fashion-mnist", download)


def parse_cifar10(raw: bytes, name: str = "CIFAR-10 records") -> Split:
    """Parse CIFAR-10 binary records into (x_Nx32x32x3 uint8, y_N int32)."""
    if not raw or len(raw) % CIFAR10_RECORD_BYTES:
        raise DatasetError(
            f"{name} is not whole CIFAR-10 records: {len(raw)} bytes is not a positive multiple "
            f"of {CIFAR10_RECORD_BYTES}."
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR10_RECORD_BYTES)
    x = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return _check_split(name, np.ascontiguousarray(x), records[:, 0])


def _concat(splits: list[Split]) -> Split:
    return np.concatenate([x for x, _ in splits]), np.concatenate([y for _, y in splits])


def _load_cifar10_batches(folder: pathlib.Path) -> Dataset:
    splits = {"train": [], "test": []}
    for file in data_files.CIFAR10_BATCH_FILES:
        path = folder / file
        x, y = parse_cifar10(path.read_bytes(), str(path))
        if len(x) != CIFAR10_BATCH_RECORDS:
            raise DatasetError(
                f"CIFAR-10 batch {path} holds {len(x)} records, expected {CIFAR10_BATCH_RECORDS}: "
                f"delete the folder {folder} and place the official batches there again."
            )
        splits["test" if file.startswith("test") else "train"].append((x, y))
    return {split: _concat(parts) for split, parts in splits.items()}


def _load_cifar10_subset(download: bool) -> Dataset:
    return {
        split: _concat(
            [parse_cifar10(data_files.read_bytes(n, download=download), n) for n in names]
        )
        for split, names in CIFAR10_SUBSET.items()
    }


def load_cifar10(download: bool = True) -> Dataset:
    """CIFAR-10: `{"train": (x_Nx32x32x3 uint8, y_N int32), "test": ...}`.

    Uses the official batches in `<data dir>/cifar10/cifar-10-batches-bin/` (50000/10000) if
    present, else the offline subset `cifar10/*.bin.gz` (4000/1000), else downloads the official
    set when `download`. Batches placed by hand are checked by size and labels only; a downloaded
    tarball is checked by its published sha256 before extraction.
    """
    folder = data_files.cifar10_batches_dir()
    if all((folder / f).is_file() for f in data_files.CIFAR10_BATCH_FILES):
        return _load_cifar10_batches(folder)
    subset = [n for names in CIFAR10_SUBSET.values() for n in names]
    if all(data_files.locate(n) is not None for n in subset):
        return _load_cifar10_subset(download=False)
    if download:
        return _load_cifar10_batches(data_files.fetch_cifar10_batches(download=True))
    cifar_dir = data_files.data_dir() / "cifar10"
    raise DatasetError(
        f"CIFAR-10 is not in {cifar_dir} and downloading is disabled. Place the official "
        f"batches ({', '.join(data_files.CIFAR10_BATCH_FILES)} from cifar-10-binary.tar.gz, "
        f"sha256 {data_files.KNOWN_FILES[data_files.CIFAR10_TAR][0]}) in {folder}, or the "
        f"offline 5000-image subset (*.bin.gz) in {cifar_dir}, or set {data_files.ENV_VAR} to a "
        f"folder that holds them, or allow downloading. {data_files.OFFLINE_ALTERNATIVES}"
    )


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits: x_Nx8x8x1 float32 in [0, 1], y_N int32.

    The split is a fixed random permutation (seed 0, the same on every machine): 1297 images
    train, 500 test. (sklearn's order groups writers, so its last 500 images are a harder,
    shifted test set; a shuffled split is the usual protocol.)
    """
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x = (np.asarray(digits.images, dtype=np.float32) / 16.0)[..., None]
    y = np.asarray(digits.target, dtype=np.int32)
    if len(x) != DIGITS_TRAIN + DIGITS_TEST:
        raise DatasetError(f"sklearn digits holds {len(x)} images, expected 1797.")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return {
        "train": (x[:DIGITS_TRAIN], y[:DIGITS_TRAIN]),
        "test": (x[DIGITS_TRAIN:], y[DIGITS_TRAIN:]),
    }
