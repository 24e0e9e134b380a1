"""Where dataset files live, and how they are found, downloaded and verified by sha256."""

import gzip
import hashlib
import http.client
import os
import pathlib
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib

ENV_VAR = "L2O_DATA_DIR"
TIMEOUT_S = 60.0
CHUNK_BYTES = 1 << 20

_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"

# Relative path -> (sha256, download URL or None). Published files: the sha256 in
# tensorflow_datasets' url_checksums; offline subset files (no URL): the data folder's SHA256SUMS.
KNOWN_FILES: dict[str, tuple[str, str | None]] = {
    "mnist/train-images-idx3-ubyte.gz": (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        _MNIST_URL + "train-images-idx3-ubyte.gz",
    ),
    "mnist/train-labels-idx1-ubyte.gz": (
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        _MNIST_URL + "train-labels-idx1-ubyte.gz",
    ),
    "mnist/t10k-images-idx3-ubyte.gz": (
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        _MNIST_URL + "t10k-images-idx3-ubyte.gz",
    ),
    "mnist/t10k-labels-idx1-ubyte.gz": (
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        _MNIST_URL + "t10k-labels-idx1-ubyte.gz",
    ),
    "fashion-mnist/train-images-idx3-ubyte.gz": (
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        _FASHION_URL + "train-images-idx3-ubyte.gz",
    ),
    "fashion-mnist/train-labels-idx1-ubyte.gz": (
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        _FASHION_URL + "train-labels-idx1-ubyte.gz",
    ),
    "fashion-mnist/t10k-images-idx3-ubyte.gz": (
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        _FASHION_URL + "t10k-images-idx3-ubyte.gz",
    ),
    "fashion-mnist/t10k-labels-idx1-ubyte.gz": (
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        _FASHION_URL + "t10k-labels-idx1-ubyte.gz",
    ),
    "tinyshakespeare/input.txt": (
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        _SHAKESPEARE_URL,
    ),
    "cifar10/data_batch_1_00000-00999.bin.gz": (
        "2cc484c16cfb7bb5035fad1c40efa03c729930456560097cd896d8d3c77b5c2c",
        None,
    ),
    "cifar10/data_batch_1_01000-01999.bin.gz": (
        "68f2f83c529b70fa77c334bc12ca6af2004e69db75dade90b3ed08c8027af051",
        None,
    ),
    "cifar10/data_batch_1_02000-02999.bin.gz": (
        "7da017290ec0068e1b146054e2947c4beb14cfb8df5cd4cf13744f04afa04071",
        None,
    ),
    "cifar10/data_batch_1_03000-03999.bin.gz": (
        "8d95788ceff8c15cdb89d7273ebbddfc500ed362bd0146efe4608770e4e9e592",
        None,
    ),
    "cifar10/test_batch_00000-00999.bin.gz": (
        "ca9ff0155579ff50ee9088a939f8d4a4549fe7839762bff24a46965fb4c5be78",
        None,
    ),
    "cifar10/batches.meta.txt": (
        "2ce042b1e0b48db4bb214408e6414ba18b2731c24af244f2d6c112fddf31af00",
        None,
    ),
    "cifar10/cifar-10-binary.tar.gz": (
        "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
        _CIFAR10_URL,
    ),
}

# Checked against the published md5 and sha256 of each .gz with its upstream gzip header restored.
DECOMPRESSED_SHA256: dict[str, str] = {
    "fashion-mnist/train-images-idx3-ubyte.gz": (
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
    ),
    "fashion-mnist/train-labels-idx1-ubyte.gz": (
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
    ),
    "fashion-mnist/t10k-images-idx3-ubyte.gz": (
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
    ),
    "fashion-mnist/t10k-labels-idx1-ubyte.gz": (
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
    ),
}

# Dataset folder -> system folder that may hold a copy (Debian's `dataset-fashion-mnist`).
SYSTEM_COPIES: dict[str, pathlib.Path] = {
    "fashion-mnist": pathlib.Path("/usr/share/datasets/fashion-mnist"),
}

CIFAR10_TAR = "cifar10/cifar-10-binary.tar.gz"
CIFAR10_BATCHES = "cifar-10-batches-bin"
CIFAR10_BATCH_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
_CIFAR10_MAX_MEMBER_BYTES = 64 << 20

# Every name of tasks.registry.OFFLINE_TASKS (a test keeps the two in step).
OFFLINE_ALTERNATIVES = (
    "Offline alternatives that need no files: the bundled tasks digits_mlp, digits_cnn, "
    "digits_autoencoder, mnist1d_mlp, shakespeare_tiny_lm and the synthetic tasks "
    "quadratic_k100, quadratic_k10000, nqm, rosenbrock, linear_regression, "
    "least_squares_k10000, logistic_regression (see `l2o tasks`)."
)


class DatasetError(Exception):
    """A dataset file is missing, corrupt, malformed or could not be downloaded."""


def data_dir() -> pathlib.Path:
    """`$L2O_DATA_DIR` if set, else `$XDG_CACHE_HOME/l2o/data` (default `~/.cache/l2o/data`)."""
    if env := os.environ.get(ENV_VAR):
        return pathlib.Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return pathlib.Path(cache).expanduser() / "l2o" / "data"


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def _known(name: str) -> tuple[str, str | None]:
    if name not in KNOWN_FILES:
        raise KeyError(f"unknown dataset file {name!r}; known: {sorted(KNOWN_FILES)}")
    return KNOWN_FILES[name]


def _describe(paths: list[pathlib.Path]) -> str:
    if len(paths) == 1:
        return str(paths[0])
    return f"{paths[0]} ... {paths[-1].name} (parts joined in name order)"


def locate(name: str) -> list[pathlib.Path] | None:
    """Paths holding dataset file `name`: the file, its `.partNN` slices, or a system copy."""
    path = data_dir() / name
    if path.is_file():
        return [path]
    parts = sorted(path.parent.glob(path.name + ".part[0-9]*"))
    if parts:
        return parts
    folder, _, base = name.partition("/")
    if folder in SYSTEM_COPIES and (SYSTEM_COPIES[folder] / base).is_file():
        return [SYSTEM_COPIES[folder] / base]
    return None


def _fix_hint(name: str, missing: bool) -> str:
    _, url = _known(name)
    folder = name.partition("/")[0]
    system = (
        f" Debian's dataset-{folder} package also provides it in {SYSTEM_COPIES[folder]}."
        if folder in SYSTEM_COPIES
        else ""
    )
    if url is None:
        return (
            f"This file has no download URL: it belongs to the offline subset, so copy it into "
            f"{data_dir() / name} or set {ENV_VAR} to a folder that holds it."
        )
    if missing:
        return (
            f"Allow downloading to fetch it from {url}, or set {ENV_VAR} to a folder that holds "
            f"a copy.{system}"
        )
    return (
        f"Delete the file so that it is downloaded again from {url}, or set {ENV_VAR} to a "
        f"folder that holds a good copy.{system}"
    )


def _corrupt(name: str, paths: list[pathlib.Path], detail: str) -> DatasetError:
    expected, _ = _known(name)
    plain = DECOMPRESSED_SHA256.get(name)
    also = f" (or sha256 {plain} of its decompressed bytes)" if plain else ""
    return DatasetError(
        f"Dataset file {_describe(paths)} is corrupt: {detail}; expected sha256 {expected}{also}. "
        f"{_fix_hint(name, missing=False)} {OFFLINE_ALTERNATIVES}"
    )


def _missing(name: str, why: str) -> DatasetError:
    expected, _ = _known(name)
    return DatasetError(
        f"Dataset file {data_dir() / name} is missing ({why}); expected sha256 {expected}. "
        f"{_fix_hint(name, missing=True)} {OFFLINE_ALTERNATIVES}"
    )


def _verified(name: str, paths: list[pathlib.Path], raw: bytes) -> bytes:
    """Contents of `raw` after its checksum check, decompressed when `name` ends in `.gz`."""
    expected, _ = _known(name)
    digest = sha256_hex(raw)
    matches = digest == expected
    plain_expected = DECOMPRESSED_SHA256.get(name)
    if not name.endswith(".gz"):
        if matches:
            return raw
        raise _corrupt(name, paths, f"its sha256 is {digest}")
    if not matches and plain_expected is None:
        raise _corrupt(name, paths, f"its sha256 is {digest}")
    try:
        plain = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise _corrupt(name, paths, f"it does not decompress ({err})") from err
    if not matches and sha256_hex(plain) != plain_expected:
        raise _corrupt(name, paths, f"its sha256 is {digest}, decompressed {sha256_hex(plain)}")
    return plain


def download_file(
    url: str, dest: pathlib.Path, sha256: str, *, timeout: float = TIMEOUT_S
) -> pathlib.Path:
    """Download `url` to `dest`; the checksum is verified before the file is moved into place."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as err:
        raise DatasetError(
            f"Cannot write dataset file {dest}: {err}. Set {ENV_VAR} to a writable folder, or "
            f"place the file there by hand (sha256 {sha256}). {OFFLINE_ALTERNATIVES}"
        ) from err
    tmp = pathlib.Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != sha256:
            raise DatasetError(
                f"Downloaded {url} for {dest} has sha256 {digest.hexdigest()}, expected {sha256}; "
                f"nothing was saved. The server may serve a different file: place a verified "
                f"copy at {dest} by hand. {OFFLINE_ALTERNATIVES}"
            )
        os.replace(tmp, dest)
    except (OSError, urllib.error.URLError, http.client.HTTPException) as err:
        raise DatasetError(
            f"Could not download {url} to {dest}: {err}. There may be no network connection: "
            f"copy the file (sha256 {sha256}) to {dest} by hand, or set {ENV_VAR} to a folder "
            f"that holds it. {OFFLINE_ALTERNATIVES}"
        ) from err
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def read_bytes(name: str, *, download: bool = True) -> bytes:
    """Verified contents of known dataset file `name`, decompressed when it ends in `.gz`."""
    expected, url = _known(name)
    paths = locate(name)
    if paths is None:
        if url is None:
            raise _missing(name, "it has no download URL")
        if not download:
            raise _missing(name, "downloading is disabled")
        paths = [download_file(url, data_dir() / name, expected)]
    raw = b"".join(path.read_bytes() for path in paths)
    return _verified(name, paths, raw)


def _file_sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def cifar10_batches_dir() -> pathlib.Path:
    """Folder of the official CIFAR-10 binary batches inside the data dir."""
    return data_dir() / "cifar10" / CIFAR10_BATCHES


def extract_cifar10(tar_path: pathlib.Path, dest: pathlib.Path) -> list[pathlib.Path]:
    """Extract only the regular batch `.bin` members of the CIFAR-10 tarball into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    with tarfile.open(tar_path, "r:gz") as tar:
        for member in tar:
            parts = pathlib.PurePosixPath(member.name).parts
            if not (
                member.isreg()
                and len(parts) == 2
                and parts[0] == CIFAR10_BATCHES
                and parts[1] in CIFAR10_BATCH_FILES
                and member.size <= _CIFAR10_MAX_MEMBER_BYTES
            ):
                continue
            source = tar.extractfile(member)
            if source is None:
                continue
            fd, tmp_name = tempfile.mkstemp(prefix=f".{parts[1]}.", suffix=".tmp", dir=dest)
            try:
                with os.fdopen(fd, "wb") as out, source:
                    while chunk := source.read(CHUNK_BYTES):
                        out.write(chunk)
                os.replace(tmp_name, dest / parts[1])
            finally:
                pathlib.Path(tmp_name).unlink(missing_ok=True)
            written.append(dest / parts[1])
    return written


def fetch_cifar10_batches(*, download: bool = True) -> pathlib.Path:
    """Folder with the official CIFAR-10 batches, downloading and extracting them if needed."""
    dest = cifar10_batches_dir()
    if all((dest / f).is_file() for f in CIFAR10_BATCH_FILES):
        return dest
    expected, url = _known(CIFAR10_TAR)
    tar_path = data_dir() / CIFAR10_TAR
    if not tar_path.is_file():
        if not download or url is None:
            raise _missing(CIFAR10_TAR, "downloading is disabled")
        download_file(url, tar_path, expected)
    elif (digest := _file_sha256(tar_path)) != expected:
        raise _corrupt(CIFAR10_TAR, [tar_path], f"its sha256 is {digest}")
    try:
        extract_cifar10(tar_path, dest)
    except (OSError, tarfile.TarError) as err:
        raise _corrupt(CIFAR10_TAR, [tar_path], f"it does not extract ({err})") from err
    missing = [f for f in CIFAR10_BATCH_FILES if not (dest / f).is_file()]
    if missing:
        raise _corrupt(CIFAR10_TAR, [tar_path], f"it lacks {', '.join(missing)}")
    return dest
