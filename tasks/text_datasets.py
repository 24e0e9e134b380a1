"""Character-level text data: tiny Shakespeare (Karpathy's char-rnn corpus) as token ids."""

import gzip
from importlib import resources

import numpy as np

from tasks import data_files
from tasks.data_files import DatasetError

SHAKESPEARE = "tinyshakespeare/input.txt"
SHAKESPEARE_CHARS = 1115394
SHAKESPEARE_VOCAB = 65


def vocabulary(text: str) -> str:
    """The sorted distinct characters of `text`."""
    return "".join(sorted(set(text)))


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")


def encode(text: str, vocab: str) -> np.ndarray:
    """Token ids of `text`: the index of each character in `vocab` (uint8 if it fits)."""
    if len(set(vocab)) != len(vocab):
        raise ValueError("vocab has repeated characters")
    codes = _codepoints(text)
    if not vocab:
        if text:
            raise ValueError("an empty vocab cannot encode non-empty text")
        return np.zeros(0, dtype=np.uint8)
    vocab_codes = _codepoints(vocab)
    order = np.argsort(vocab_codes)
    sorted_codes = vocab_codes[order]
    pos = np.searchsorted(sorted_codes, codes).clip(0, len(vocab) - 1)
    if not np.array_equal(sorted_codes[pos], codes):
        unknown = sorted(set(text) - set(vocab))
        raise ValueError(f"characters not in vocab: {unknown[:10]!r}")
    dtype = np.uint8 if len(vocab) <= 256 else np.int32
    return order[pos].astype(dtype)


def decode(tokens: np.ndarray, vocab: str) -> str:
    """The text whose token ids are `tokens`, the inverse of `encode`."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= len(vocab)):
        raise ValueError(f"token ids must lie in 0..{len(vocab) - 1}")
    table = np.array(list(vocab))
    return "".join(table[tokens].tolist()) if tokens.size else ""


def load_tiny_shakespeare(download: bool = True) -> tuple[np.ndarray, str]:
    """Tiny Shakespeare as (tokens_T uint8 character ids, vocab of 65 sorted characters)."""
    raw = data_files.read_bytes(SHAKESPEARE, download=download)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{SHAKESPEARE} is not ASCII text: {err}") from err
    vocab = vocabulary(text)
    if len(text) != SHAKESPEARE_CHARS or len(vocab) != SHAKESPEARE_VOCAB:
        raise DatasetError(
            f"{SHAKESPEARE} has {len(text)} characters and {len(vocab)} distinct ones, expected "
            f"{SHAKESPEARE_CHARS} and {SHAKESPEARE_VOCAB}."
        )
    return encode(text, vocab), vocab


SHAKESPEARE_EXCERPT = "tinyshakespeare_excerpt.txt.gz"
SHAKESPEARE_EXCERPT_SHA256 = "cf30d7aa6cf2701439fc762dd8d3f8b4039f002a6df70c75d4cf89cabf0fc63e"


def load_shakespeare_excerpt() -> tuple[np.ndarray, str]:
    """The first 200,376 characters of tiny Shakespeare, shipped with the package (offline).

    Returns (tokens uint8, vocab of its 62 sorted characters); the text is checked by sha256.
    """
    raw = gzip.decompress((resources.files("tasks") / "assets" / SHAKESPEARE_EXCERPT).read_bytes())
    if data_files.sha256_hex(raw) != SHAKESPEARE_EXCERPT_SHA256:
        raise DatasetError(
            f"the bundled {SHAKESPEARE_EXCERPT} is corrupt (sha256 mismatch); reinstall l2o"
        )
    text = raw.decode("ascii")
    vocab = vocabulary(text)
    return encode(text, vocab), vocab
