"""Host-side image preprocessing for `N x H x W x C` batches: resizing, grey-scale, statistics."""

import jax
import numpy as np

# ITU-R BT.601 luma weights for R, G and B.
LUMA_601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else size
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return int(h), int(w)


def _check_nhwc(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"expected an N x H x W x C batch, got shape {x.shape}")
    return x


def area_average(x: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Mean over non-overlapping blocks; `H` and `W` must be multiples of the output size."""
    x = _check_nhwc(x)
    n, H, W, C = x.shape
    h, w = _size_hw(size)
    if H % h or W % w:
        raise ValueError(f"{H}x{W} is not a multiple of {h}x{w}")
    blocks = x.reshape(n, h, H // h, w, W // w, C)
    return blocks.mean(axis=(2, 4), dtype=np.float64).astype(np.float32)


def bilinear(x: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear resize (anti-aliased when shrinking), via `jax.image.resize`."""
    x = _check_nhwc(x)
    h, w = _size_hw(size)
    shape = (x.shape[0], h, w, x.shape[3])
    out = jax.image.resize(x.astype(np.float32), shape, method="linear", antialias=True)
    return np.asarray(out, dtype=np.float32)


def resize(x: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize to `size` (int or `(h, w)`): area average when it divides `H x W`, else bilinear.

    Returns float32 on the input's value scale (uint8 input stays in 0..255).
    """
    x = _check_nhwc(x)
    h, w = _size_hw(size)
    H, W = x.shape[1:3]
    if (H, W) == (h, w):
        return x.astype(np.float32)
    if H % h == 0 and W % w == 0:
        return area_average(x, (h, w))
    return bilinear(x, (h, w))


def to_grey(x: np.ndarray) -> np.ndarray:
    """Luma `0.299 R + 0.587 G + 0.114 B` (ITU-R 601) as `N x H x W x 1` float32.

    A one-channel batch is returned as float32 unchanged; the value scale is kept.
    """
    x = _check_nhwc(x)
    if x.shape[-1] == 1:
        return x.astype(np.float32)
    if x.shape[-1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {x.shape[-1]}")
    grey = np.tensordot(x.astype(np.float32), LUMA_601, axes=([-1], [0]))
    return grey[..., None].astype(np.float32)


def to_unit(x: np.ndarray) -> np.ndarray:
    """uint8 pixels 0..255 as float32 in [0, 1]; float input is returned as float32."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    return x.astype(np.float32)


def channel_stats(x: np.ndarray, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel `(mean_C, std_C)` float32 of a batch; compute it on training data only.

    `eps` is added to the standard deviation so that a constant channel divides safely.
    """
    x = _check_nhwc(x)
    mean = x.mean(axis=(0, 1, 2), dtype=np.float64)
    std = x.std(axis=(0, 1, 2), dtype=np.float64) + eps
    return mean.astype(np.float32), std.astype(np.float32)


def standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """`(x - mean) / std` as float32, with statistics from `channel_stats` on the training data."""
    x = _check_nhwc(x)
    return ((x.astype(np.float32) - mean) / std).astype(np.float32)
