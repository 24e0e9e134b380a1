"""A local, deterministic generator of the MNIST-1D dataset (Greydanus & Kobak, 2020/2024).

Reference: S. Greydanus and D. Kobak, "Scaling Down Deep Learning with MNIST-1D", ICML 2024,
arXiv:2011.14439.
"""

from __future__ import annotations

import dataclasses

import numpy as np

NUM_CLASSES = 10

# Heights of the ten hand-drawn 1-D digit strokes, one row per digit 0..9, before normalisation.
_DIGIT_HEIGHTS_10x12 = np.array(
    [
        [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
        [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
        [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
        [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
        [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
        [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
        [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
        [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
        [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
        [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
    ],
    dtype=np.float64,
)


def _normalised_templates(heights_CxT: np.ndarray) -> np.ndarray:
    """Standardise each digit stroke, make it start (and end) at zero, and shrink it by 6."""
    centred_CxT = heights_CxT - heights_CxT.mean(axis=1, keepdims=True)
    unit_CxT = centred_CxT / centred_CxT.std(axis=1, keepdims=True)
    return (unit_CxT - unit_CxT[:, :1]) / 6.0


TEMPLATES = _normalised_templates(_DIGIT_HEIGHTS_10x12)
"""The ten digit templates `[10, 12]`: row `c` is the 1-D stroke of digit `c`."""
TEMPLATES.setflags(write=False)


@dataclasses.dataclass(frozen=True)
class MNIST1DConfig:
    """Generation arguments of MNIST-1D; the defaults are those of the paper's dataset."""

    num_samples: int = 5000
    train_fraction: float = 0.8
    template_len: int = 12
    padding: tuple[int, int] = (36, 60)
    scale_coeff: float = 0.4
    max_translation: int = 48
    corr_noise_scale: float = 0.25
    iid_noise_scale: float = 2e-2
    shear_scale: float = 0.75
    shuffle_seq: bool = False
    final_seq_length: int = 40
    seed: int = 42

    def __post_init__(self) -> None:
        """Reject arguments that cannot produce a dataset."""
        low, high = self.padding
        if self.num_samples < NUM_CLASSES:
            raise ValueError(f"num_samples must be at least {NUM_CLASSES}, got {self.num_samples}")
        if not 0.0 < self.train_fraction < 1.0:
            raise ValueError(f"train_fraction must lie in (0, 1), got {self.train_fraction}")
        if not 0 <= low <= high:
            raise ValueError(
                f"padding must be (low, high) with 0 <= low <= high, got {self.padding}"
            )
        if not 1 <= self.max_translation <= self.template_len + high:
            raise ValueError(
                f"max_translation must lie in [1, template_len + padding[1]], "
                f"got {self.max_translation}"
            )
        if self.final_seq_length < 2:
            raise ValueError(f"final_seq_length must be at least 2, got {self.final_seq_length}")


def _resample(x_NxL: np.ndarray, lengths_N: np.ndarray, out_len: int) -> np.ndarray:
    """Linearly resample the first `lengths_N[n]` entries of each row onto `out_len` even points."""
    num = x_NxL.shape[0]
    pos_NxM = np.linspace(0.0, 1.0, out_len)[None, :] * (lengths_N[:, None] - 1)
    left_NxM = np.clip(np.floor(pos_NxM).astype(np.int64), 0, lengths_N[:, None] - 2)
    frac_NxM = pos_NxM - left_NxM
    rows_Nx1 = np.arange(num)[:, None]
    lo_NxM = x_NxL[rows_Nx1, left_NxM]
    hi_NxM = x_NxL[rows_Nx1, left_NxM + 1]
    return (1.0 - frac_NxM) * lo_NxM + frac_NxM * hi_NxM


def _gaussian_smooth(x_NxL: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Gaussian filter along the last axis with mirrored edges (`scipy.ndimage` conventions)."""
    radius = int(truncate * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    padded_NxP = np.pad(x_NxL, ((0, 0), (radius, radius)), mode="symmetric")
    length = x_NxL.shape[1]
    return sum(w * padded_NxP[:, i : i + length] for i, w in enumerate(kernel))


def _roll_rows(x_NxL: np.ndarray, shifts_N: np.ndarray) -> np.ndarray:
    """Circularly shift each row to the right by its own number of places."""
    length = x_NxL.shape[1]
    cols_NxL = (np.arange(length)[None, :] - shifts_N[:, None]) % length
    return x_NxL[np.arange(x_NxL.shape[0])[:, None], cols_NxL]


def transform_templates(
    templates_NxT: np.ndarray, config: MNIST1DConfig, rng: np.random.Generator, eps: float = 1e-8
) -> np.ndarray:
    """Turn one template per row into a noisy MNIST-1D signal of length `final_seq_length`."""
    num, width = templates_NxT.shape
    low, high = config.padding
    dilated_len = config.template_len + high
    # Pad with a random number of zeros on the right (eps marks where the digit is).
    pad_N = rng.integers(low, high + 1, size=num)
    padded_NxW = np.zeros((num, width + high))
    padded_NxW[:, :width] = templates_NxT + eps
    # Stretch the padded signal to a common length, so more padding means a narrower digit.
    x_NxD = _resample(padded_NxW, width + pad_N, dilated_len)
    # Random amplitude scaling and translation.
    x_NxD *= 1.0 + config.scale_coeff * (rng.random(num) - 0.5)[:, None]
    x_NxD = _roll_rows(x_NxD, rng.integers(0, config.max_translation, size=num))
    # Correlated noise fills the background; i.i.d. noise covers everything.
    corr_NxD = _gaussian_smooth(
        config.corr_noise_scale * rng.standard_normal((num, dilated_len)), 2.0
    )
    x_NxD = np.where(x_NxD != 0.0, x_NxD, corr_NxD)
    x_NxD += config.iid_noise_scale * rng.standard_normal((num, dilated_len))
    # Shear: subtract a random linear ramp.
    shear_N = config.shear_scale * (rng.random(num) - 0.5)
    x_NxD -= shear_N[:, None] * np.linspace(-0.5, 0.5, dilated_len)[None, :]
    # Downsample to the final length.
    return _resample(x_NxD, np.full(num, dilated_len), config.final_seq_length)


def generate(config: MNIST1DConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Build the dataset described by `config`: `{"train": (x, y), "test": (x, y)}`."""
    rng = np.random.default_rng(config.seed)
    per_class = config.num_samples // NUM_CLASSES
    y_N = np.repeat(np.arange(NUM_CLASSES), per_class)
    x_NxL = transform_templates(TEMPLATES[y_N], config, rng)
    order = rng.permutation(y_N.shape[0])
    x_NxL, y_N = x_NxL[order], y_N[order]
    if config.shuffle_seq:
        x_NxL = x_NxL[:, rng.permutation(config.final_seq_length)]
    # Centre the whole dataset and give it unit standard deviation (one mean, one std).
    x_NxL = (x_NxL - x_NxL.mean()) / x_NxL.std()
    x_NxL, y_N = x_NxL.astype(np.float32), y_N.astype(np.int32)
    split = int(y_N.shape[0] * config.train_fraction)
    return {"train": (x_NxL[:split], y_N[:split]), "test": (x_NxL[split:], y_N[split:])}


def make_mnist1d(
    seed: int = 42, num_samples: int = 5000, train_fraction: float = 0.8, **overrides
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST-1D as `{"train": (x_NxL f32, y_N i32), "test": ...}`; overrides name config fields."""
    valid = {f.name for f in dataclasses.fields(MNIST1DConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise TypeError(f"unknown MNIST-1D arguments {unknown}; valid ones are {sorted(valid)}")
    if "padding" in overrides:
        overrides["padding"] = tuple(overrides["padding"])
    config = MNIST1DConfig(
        seed=seed, num_samples=num_samples, train_fraction=train_fraction, **overrides
    )
    return generate(config)
