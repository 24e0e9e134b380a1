"""The learned optimizers of l2o as `torch.optim.Optimizer` classes; needs only torch and the
Python standard library (`l2o export FILE --format torch` writes this module next to a copy of
the optimizer file).

`load(path, params, num_steps)` reads a learned-optimizer file (the safetensors layout: an 8-byte
little-endian header length, a JSON header, float32 data), checks it completely before use
(format, architecture, config, every leaf's name, shape, dtype and offsets, the file size,
finite values and the sha256 of its content) and returns the optimizer of its architecture: the
per-parameter MLP (`LearnedMLP`), the VeLO-style hypernetwork (`LearnedHyper`), the
coordinatewise LSTM (`LearnedLSTM`), Adam with learned hyperparameters (`LearnableAdam`) or the
Celo2-style optimizer (`LearnedCelo`). Each computes what the optax transform of the same file
computes, in float32 whatever the parameters' dtype; its state is created at a parameter's first
step, on the parameter's device. The training fraction `t / T` that the MLP, the hypernetwork
and Celo read counts a parameter's updates `t` against `num_steps` `T` (per parameter group; the
file's `horizon` by default). The MLP and Celo step the parameters of one device and step count
together: their state lives in flat buffers (each parameter's entries are views of its part),
and one network pass covers all their elements.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct

import torch

FORMAT = "l2o-learned-optimizer"
FORMAT_VERSION = "1"
MAX_HEADER_BYTES = 1 << 20
PROGRESS_TIMESCALES = (1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
B2 = 0.999
LOSS_DECAYS = (0.5, 0.9, 0.99)
RANK_BUCKETS = 5
NUM_LOSS_FEATURES = 3
EPS_ROOT = 1e-16
NS_COEFFS = (3.4445, -4.7750, 2.0315)
"""Newton-Schulz's quintic coefficients (`baselines.muon.NS_COEFFS`)."""
NUM_CELO_INPUTS = 10
CELO_KEYS = {"hidden_sizes", "decays", "learning_rate", "weight_decay", "matrix_mult",
             "orthogonalize", "normalize", "scheduler_hidden", "horizon"}  # fmt: skip
LAYOUTS = ("torch", "haiku")
METADATA_KEYS = {"format", "format_version", "architecture", "config", "metadata"}


class OptimizerFileError(ValueError):
    """A learned-optimizer file that cannot be read; the one-line message names the file."""


# Reading and checking a file.


def _dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("header JSON has duplicate keys")
    return dict(pairs)


def _reject_constant(name):
    raise ValueError(f"header JSON holds {name}")


def _parse_json(text, what: str):
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{what} is not valid JSON ({' '.join(str(e).split())})") from None


def _int(config: dict, key: str, low: int = 1) -> int:
    """`config[key]`, an int in `[low, 2**31)`."""
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < 2**31:
        raise ValueError(f"config {key!r} must be an int >= {low}, got {value!r:.40}")
    return value


def _is_finite(value) -> bool:
    """A finite int or float (not a bool, not an int beyond the float range)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _float(config: dict, key: str) -> float:
    """`config[key]`, a finite number."""
    value = config.get(key)
    if not _is_finite(value):
        raise ValueError(f"config {key!r} must be a finite number, got {value!r:.40}")
    return float(value)


def _numbers(config: dict, key: str, sizes: bool = False) -> tuple:
    """The list `config[key]` of finite numbers (with `sizes`: of positive ints)."""
    values = config.get(key)
    if not isinstance(values, list) or len(values) > 64:
        raise ValueError(f"config {key!r} must be a list of at most 64 numbers")
    for v in values:
        if sizes:
            ok = isinstance(v, int) and not isinstance(v, bool) and 1 <= v < 2**31
        else:
            ok = _is_finite(v)
        if not ok:
            kind = "a positive int" if sizes else "a finite number"
            raise ValueError(f"config {key!r} holds {v!r:.40}, not {kind}")
    return tuple(values)


def _mlp_shapes(sizes, prefix: str = "", leading: tuple[int, ...] = ()) -> dict:
    """Leaf shapes of an MLP with layer widths `sizes` (a bank of them with `leading`)."""
    shapes = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        shapes[f"{prefix}w{i}"] = (*leading, n_in, n_out)
        shapes[f"{prefix}b{i}"] = (*leading, n_out)
    return shapes


def _check_celo(config: dict) -> None:
    """ValueError unless `config` holds exactly `CeloConfig`'s keys with values it accepts."""
    if set(config) != CELO_KEYS:
        raise ValueError(f"celo config keys must be {', '.join(sorted(CELO_KEYS))}")
    decays = _numbers(config, "decays")
    if len(decays) != 3 or not all(0 <= d < 1 for d in decays):
        raise ValueError("config 'decays' must be three numbers in [0, 1)")
    _numbers(config, "hidden_sizes", sizes=True), _int(config, "horizon")
    _int(config, "scheduler_hidden", low=0)
    if not (_float(config, "learning_rate") > 0 and _float(config, "matrix_mult") > 0):
        raise ValueError("config 'learning_rate' and 'matrix_mult' must be > 0")
    if not _float(config, "weight_decay") >= 0:
        raise ValueError("config 'weight_decay' must be >= 0")
    for key in ("orthogonalize", "normalize"):
        if not isinstance(config[key], bool):
            raise ValueError(f"config {key!r} must be a bool")


def expected_shapes(name: str, config: dict) -> dict[str, tuple[int, ...]]:
    """Leaf path -> shape of every meta-parameter of architecture `name` with `config` (the
    file's config: every key present); ValueError for an unknown name or a malformed config."""
    if name in ("mlp", "hyper"):
        _float(config, "exp_mult"), _float(config, "step_mult"), _int(config, "horizon")
        if _float(config, "base_decay") not in _numbers(config, "decays"):
            raise ValueError("config 'base_decay' must be one of 'decays'")
    if name == "lstm":
        _float(config, "preprocess_p"), _float(config, "output_scale"), _float(config, "b1")
        if not isinstance(config.get("residual"), bool):
            raise ValueError("config 'residual' must be a bool")
    if name == "mlp":
        decays, hidden = _numbers(config, "decays"), _numbers(config, "hidden_sizes", sizes=True)
        sizes = (2 + len(decays) + len(PROGRESS_TIMESCALES), *hidden, 2)
        return {**_mlp_shapes(sizes), "log_lr": ()}
    if name == "hyper":
        k = len(_numbers(config, "decays"))
        hidden = _numbers(config, "mlp_hidden_sizes", sizes=True)
        size, num_mlps = _int(config, "lstm_size"), _int(config, "num_mlps")
        lstm_in = len(PROGRESS_TIMESCALES) + NUM_LOSS_FEATURES + 4 + 2 * k + RANK_BUCKETS + 1
        return {
            "lstm_wx": (lstm_in, 4 * size),
            "lstm_wh": (size, 4 * size),
            "lstm_b": (4 * size,),
            "mix_w": (size, num_mlps),
            "mix_b": (num_mlps,),
            "step_w": (size, 1),
            "step_b": (1,),
            **_mlp_shapes((2 + 2 * k, *hidden, 2), "bank_", (num_mlps,)),
            "log_lr": (),
        }
    if name == "lstm":
        size, layers = _int(config, "hidden_size"), _int(config, "num_layers")
        if layers > 64:
            raise ValueError(f"config 'num_layers' must be at most 64, got {layers}")
        shapes = {}
        for i in range(layers):
            shapes[f"lstm{i}_wx"] = (2 if i == 0 else size, 4 * size)
            shapes[f"lstm{i}_wh"] = (size, 4 * size)
            shapes[f"lstm{i}_b"] = (4 * size,)
        shapes |= {"out_w": (size, 1), "out_b": (1,)}
        if config["residual"]:
            shapes["log_lr"] = ()
        return shapes
    if name == "learnable_adam":
        return {key: () for key in ("log_lr", "logit_b1", "logit_b2", "log_eps")}
    if name == "celo":
        _check_celo(config)
        sizes = (NUM_CELO_INPUTS + len(PROGRESS_TIMESCALES), *config["hidden_sizes"], 1)
        shapes, n = _mlp_shapes(sizes), config["scheduler_hidden"]
        if n:
            num_inputs = NUM_LOSS_FEATURES + len(PROGRESS_TIMESCALES)
            shapes |= {"sched_u": (n, n), "sched_v": (num_inputs, n), "sched_e": (n,),
                       "sched_w": (n,), "sched_b": ()}  # fmt: skip
        return shapes
    raise ValueError(
        f"unknown architecture {name!r:.40}; valid: celo, hyper, learnable_adam, lstm, mlp"
    )


def _read(path) -> tuple[str, dict, dict[str, torch.Tensor]]:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"too short ({len(prefix)} bytes) for a header length")
        (n,) = struct.unpack("<Q", prefix)
        if n > MAX_HEADER_BYTES or n > size - 8:
            raise ValueError(f"header length {n} exceeds the limit or the file size")
        header = _parse_json(f.read(n), "header")
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        meta = header.pop("__metadata__", None)
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise ValueError("header has no __metadata__ dict of strings")
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"not a learned-optimizer file of format version {FORMAT_VERSION}")
        if not METADATA_KEYS <= set(meta) <= METADATA_KEYS | {"sha256"}:
            raise ValueError(f"__metadata__ keys must be {', '.join(sorted(METADATA_KEYS))}")
        name = meta["architecture"]
        config = _parse_json(meta["config"], "config")
        info = _parse_json(meta["metadata"], "metadata")
        if not isinstance(config, dict) or not isinstance(info, dict):
            raise ValueError("config and metadata must be JSON objects")
        expected = expected_shapes(name, config)
        missing, extra = sorted(set(expected) - set(header)), sorted(set(header) - set(expected))
        if missing or extra:
            raise ValueError(
                f"leaves do not fit architecture {name!r}: missing {missing}, unexpected {extra}"
            )
        data_bytes = 4 * sum(math.prod(shape) for shape in expected.values())
        spans = []
        for path_, entry in header.items():
            if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
                raise ValueError(f"leaf {path_!r} must have keys dtype, shape, data_offsets")
            if entry["dtype"] != "F32":
                raise ValueError(f"leaf {path_!r} has dtype {entry['dtype']!r:.20}, expected F32")
            if entry["shape"] != list(expected[path_]):
                raise ValueError(
                    f"leaf {path_!r} has shape {entry['shape']!r:.60}, expected {expected[path_]}"
                )
            offsets = entry["data_offsets"]
            if (
                not isinstance(offsets, list)
                or len(offsets) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in offsets)
                or offsets[1] - offsets[0] != 4 * math.prod(expected[path_])
            ):
                raise ValueError(f"leaf {path_!r} has malformed data_offsets {offsets!r:.60}")
            spans.append((offsets[0], offsets[1], path_))
        position = 0
        for begin, end, _ in sorted(spans):
            if begin != position:
                raise ValueError("leaf data overlaps or leaves gaps")
            position = end
        if size != 8 + n + data_bytes:
            raise ValueError(
                f"file holds {size - 8 - n} bytes of data, its architecture needs {data_bytes}"
            )
        data = f.read(data_bytes)
    if "sha256" in meta:
        signed = _dumps({
            "format": FORMAT, "format_version": FORMAT_VERSION, "architecture": name,
            "config": meta["config"], "metadata": {k: v for k, v in info.items() if k != "date"},
            "leaves": header,
        }).encode()  # fmt: skip
        if hashlib.sha256(signed + b"\n" + data).hexdigest() != meta["sha256"]:
            raise ValueError(
                "sha256 mismatch: theta, config or metadata changed after the file was written"
            )
    flat = torch.frombuffer(bytearray(data), dtype=torch.float32)
    if not bool(torch.isfinite(flat).all()):
        raise ValueError("the meta-parameters hold non-finite values")
    theta = {p: flat[b // 4 : e // 4].reshape(expected[p]).clone() for b, e, p in spans}
    return name, config, theta


def read_learned(path) -> tuple[str, dict, dict[str, torch.Tensor]]:
    """`(architecture, config, theta)` of a learned-optimizer file, every part checked; any
    problem raises `OptimizerFileError` with a one-line message naming the file."""
    try:
        return _read(path)
    except OSError as e:
        raise OptimizerFileError(f"cannot read learned optimizer {path}: {e.strerror}") from None
    except (ValueError, TypeError, RecursionError, OverflowError) as e:
        message = " ".join(str(e).split())
        raise OptimizerFileError(f"invalid learned optimizer {path}: {message}") from None


def load(path, params, num_steps: int | None = None) -> torch.optim.Optimizer:
    """The optimizer stored at `path` over `params` (tensors or parameter-group dicts).

    Args:
      path: a learned-optimizer file (`.safetensors`).
      params: the parameters, or dicts of parameter groups.
      num_steps: the training length `T` of the training fraction (MLP, hypernetwork and Celo;
        the file's `horizon` by default).

    Celo's parameter groups may set `layout` and `embedding` (see `LearnedCelo`).
    """
    name, config, theta = read_learned(path)
    if name == "learnable_adam":
        return LearnableAdam(params, theta)
    if name == "lstm":
        return LearnedLSTM(params, theta, config)
    horizon = config["horizon"] if num_steps is None else num_steps
    cls = {"mlp": LearnedMLP, "hyper": LearnedHyper, "celo": LearnedCelo}[name]
    return cls(params, theta, config, horizon)


# Features (l2o.optimizers.features), on tensors flattened to `[n]` and channels `[C, n]`.


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1).float()


def _column(values, device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)[:, None]


def _update_moments(mu, nu, g, decays: torch.Tensor, b2: float = B2) -> None:
    """`mu_k <- d_k mu_k + (1 - d_k) g`, `nu <- b2 nu + (1 - b2) g^2`, in place."""
    mu.mul_(decays).addcmul_(g[None], 1 - decays)
    nu.mul_(b2).add_((g * g).mul_(1 - b2))


def _adam_directions(mu, nu, count: torch.Tensor, decays: torch.Tensor, b2: float = B2, out=None):
    """Bias-corrected `mu_hat_k / sqrt(nu_hat + 1e-16)`, `[K, n]` (written to `out` if given)."""
    nu_hat = nu / (1.0 - torch.pow(torch.tensor(b2, dtype=torch.float32, device=nu.device), count))
    mu_hat = torch.mul(mu, 1.0 / (1.0 - decays**count), out=out)
    return mu_hat.mul_(torch.rsqrt(nu_hat.add_(1e-16))[None])


def _channel_scale(x: torch.Tensor) -> torch.Tensor:
    """`1 / RMS` of each channel of `x [C, n]`: `[C]`."""
    return torch.rsqrt(1e-12 + torch.mean(x * x, dim=1))


def _segment_rsqrt_ms(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """`1 / RMS` of each row of `x [C, N]` (or of `x [N]`) over each segment of `sizes` columns
    (one tensor's elements): `[C, T]` (or `[T]`)."""
    norms = [torch.linalg.vector_norm(part, dim=-1) for part in torch.split(x, sizes, dim=-1)]
    norm = torch.stack(norms, dim=-1)
    n = torch.tensor(sizes, dtype=torch.float32, device=x.device)
    return torch.rsqrt(1e-12 + norm * norm / n)


def _progress_embedding(step: int, num_steps: int, device) -> torch.Tensor:
    """`tanh(f / tau - 1)` per timescale `tau`, `f = step / num_steps` clipped to [0, 1]."""
    fraction = torch.tensor(float(step), dtype=torch.float32, device=device) / max(
        float(num_steps), 1.0
    )
    fraction = torch.clamp(fraction, 0.0, 1.0)
    return torch.tanh(
        fraction / torch.tensor(PROGRESS_TIMESCALES, dtype=torch.float32, device=device) - 1.0
    )


def _input_layer(w, b, p, g, mu) -> torch.Tensor:
    """`w^T x + b` for `x = [g, p, mu_1..mu_K]`, each channel divided by its RMS over the
    tensor (`w` may have more rows; the first `2 + K` are used): `[n_out, n]`."""
    x = torch.cat([g[None], p[None], mu])
    w = w[: x.shape[0]] * _channel_scale(x)[:, None]
    return torch.addmm(b[:, None], w.T, x)


def _segment_input_layer(w, b, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """`w^T x + b` for the channels `x [C, N]` of several tensors, each channel divided by its
    RMS over each tensor's segment of `sizes` columns: `[n_out, N]`."""
    scales = _segment_rsqrt_ms(x, sizes)
    h = x.new_empty((w.shape[1], x.shape[1]))
    offset = 0
    for i, n in enumerate(sizes):
        end = offset + n
        w_i = (w * scales[:, i : i + 1]).T
        torch.addmm(b[:, None], w_i, x[:, offset:end], out=h[:, offset:end])
        offset = end
    return h


def _mlp(weights: dict, x: torch.Tensor, num_layers: int, start: int = 1) -> torch.Tensor:
    """Layers `start..num_layers - 1` of a ReLU MLP over the channels of `x`."""
    for i in range(start, num_layers):
        x = torch.addmm(weights[f"b{i}"][:, None], weights[f"w{i}"].T, x)
        if i < num_layers - 1:
            x = torch.relu_(x)
    return x


def _matrix(x: torch.Tensor, shape, layout: str) -> torch.Tensor:
    """`x [n]` of a tensor of `shape` as its `(fan_in, fan_out)` matrix: fan_out is the last
    axis in the haiku layout, the first in the torch layout (`nn.Linear` `[out, in]`, conv
    `[out, in, *kernel]`); the other axes fold into fan_in. A view of `x`."""
    if layout == "haiku":
        return x.reshape(math.prod(shape[:-1]), shape[-1])
    return x.reshape(shape[0], math.prod(shape[1:])).T


def _factored_rsqrt(nu: torch.Tensor, shape, layout: str, out, eps: float = 1e-30) -> None:
    """Adafactor's `(r_i c_j / mean(r))^(-1/2)` of `nu` as a `(fan_in, fan_out)` matrix (`r`,
    `c` its row and column means; `celo.factored_rsqrt`), `nu^(-1/2)` below rank 2, into the
    `[n]` tensor `out`."""
    if len(shape) < 2:
        torch.rsqrt(nu + eps, out=out)
        return
    m = _matrix(nu, shape, layout)
    row, col = torch.mean(m, dim=1, keepdim=True), torch.mean(m, dim=0, keepdim=True)
    torch.rsqrt(row * col / (torch.mean(row) + eps) + eps, out=_matrix(out, shape, layout))


def _newton_schulz(x: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """About `U V^T` of each matrix `x = U S V^T` of `x [B, r, c]`
    (`baselines.muon.newton_schulz`): `steps` quintic iterations `X <- a X + (b A + c A^2) X`,
    `A = X X^T` on the smaller Gram matrix, from `X = x / (||x||_F + eps)`; through the Gram
    matrix when the long side is >= 2x the short one (`Q <- P Q`, `A <- P A P`, `X = Q X_0`)."""
    a, b, c = NS_COEFFS
    wide = x.shape[1] <= x.shape[2]
    X = x if wide else x.mT
    X = X / (torch.linalg.vector_norm(X, dim=(1, 2), keepdim=True) + eps)
    rows, cols = X.shape[1:]
    if cols >= 2 * rows:
        A, Q = X @ X.mT, None
        for i in range(steps):
            P = torch.baddbmm(A, A, A, beta=b, alpha=c)
            P.diagonal(dim1=1, dim2=2).add_(a)
            Q = P if Q is None else P @ Q  # Q_0 = I
            if i < steps - 1:
                A = P @ A @ P
        X = Q @ X
    else:
        for _ in range(steps):
            A = X @ X.mT
            X = torch.baddbmm(X, torch.baddbmm(A, A, A, beta=b, alpha=c), X, beta=a)
    return X if wide else X.mT


def _lstm_cell(x, h, c, w_x, w_h, b) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step over the channels (gates i, f, g, o): the new `(h, c)`."""
    z = (w_x.T @ x + b[:, None]) + w_h.T @ h
    i, f, g, o = torch.chunk(z, 4, dim=0)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _clipped_log(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.log(torch.abs(x) + 1e-12), -20.0, 5.0) / 10.0


def _tensor_statistics(p, g, mu, nu, ndim: int) -> torch.Tensor:
    """VeLO-style summary of one tensor (`features.tensor_statistics`): `[4 + 2K + 6]`."""
    rms_g = torch.sqrt(torch.mean(g * g) + 1e-30)
    rms_mu = torch.sqrt(torch.mean(mu * mu, dim=1) + 1e-30)
    mean_mu = torch.mean(mu, dim=1)
    rank = torch.zeros(RANK_BUCKETS, dtype=torch.float32, device=p.device)
    rank[min(ndim, RANK_BUCKETS - 1)] = 1.0
    size = (
        torch.log10(torch.tensor(float(max(p.numel(), 1)), dtype=torch.float32, device=p.device))
        / 10.0
    )
    scalars = torch.stack([
        _clipped_log(torch.sqrt(torch.mean(p * p) + 1e-30)),
        _clipped_log(rms_g),
        _clipped_log(torch.sqrt(torch.mean(nu) + 1e-30)),
        torch.mean(torch.abs(g)) / (rms_g + 1e-12),
    ])  # fmt: skip
    consistency = mean_mu / (rms_mu + 1e-12)
    return torch.cat([scalars, _clipped_log(rms_mu), consistency, rank, size[None]])


def _update_loss(state: dict, loss: torch.Tensor | None) -> None:
    """Fold one training loss into the EMAs `loss_ema` (in place); a missing or non-finite loss
    leaves them unchanged."""
    if loss is None or not bool(torch.isfinite(loss)):
        return
    d = torch.tensor(LOSS_DECAYS, dtype=torch.float32, device=loss.device)
    state["loss_ema"] = d * state["loss_ema"] + (1 - d) * loss
    state["loss_count"] += 1
    fast = state["loss_ema"][0] / (1 - d[0] ** float(state["loss_count"]))
    state["loss_min"] = torch.minimum(state["loss_min"], fast)


def _loss_features(state: dict) -> torch.Tensor:
    """Three features in [-1, 1] from the loss EMAs (`features.loss_features`)."""
    ema = state["loss_ema"]
    if state["loss_count"] == 0:
        return torch.zeros(NUM_LOSS_FEATURES, dtype=torch.float32, device=ema.device)
    d = torch.tensor(LOSS_DECAYS, dtype=torch.float32, device=ema.device)
    corrected = ema / (1 - d ** float(state["loss_count"]))
    fast, medium, slow = corrected[0], corrected[1], corrected[2]
    minimum = state["loss_min"]

    def ratio(num, den):
        den = torch.abs(den) + 1e-6 * torch.abs(slow) + 1e-12
        return torch.clamp(num / den, -1.0, 1.0)

    feats = torch.stack([
        ratio(fast - medium, medium),
        ratio(medium - slow, slow),
        2.0 * ratio(fast - minimum, slow - minimum) - 1.0,
    ])  # fmt: skip
    return torch.clamp(feats, -1.0, 1.0)


def _gather(tensors, out: torch.Tensor) -> torch.Tensor:
    """`out [N]` <- the `tensors` flattened, concatenated and cast to `out`'s dtype."""
    return torch.cat([t.reshape(-1).to(out.dtype) for t in tensors], out=out)


def _apply(params, update: torch.Tensor, sizes: list[int]) -> None:
    """Add to each parameter its segment of `update [N]` (in the parameter's dtype)."""
    parts = torch.split(update, sizes)
    updates = [u.view(p.shape).to(p.dtype) for p, u in zip(params, parts, strict=True)]
    torch._foreach_add_(params, updates)


def _compact_state(optimizer: torch.optim.Optimizer, state_dict: dict) -> None:
    """`state_dict()`'s state as copies: not views of the flat buffers the step works in."""
    state_dict["state"] = {
        key: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
        for key, state in state_dict["state"].items()
    }


def _state_to_float32(optimizer: torch.optim.Optimizer) -> None:
    """Undo `load_state_dict`'s cast of the state to each parameter's dtype: it is float32."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                state[key] = value.float()


class _Learned(torch.optim.Optimizer):
    """Common parts: the meta-parameters `theta` per device, the closure, the parameters with
    gradients (updated one by one unless a subclass steps them together)."""

    def __init__(self, params, theta: dict[str, torch.Tensor], defaults: dict):
        super().__init__(params, defaults)
        self._theta = {torch.device("cpu"): {k: v.float().cpu() for k, v in theta.items()}}
        self._flat = {}
        self.register_load_state_dict_post_hook(_state_to_float32)
        self.register_state_dict_post_hook(_compact_state)

    def theta(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The meta-parameters on `device` (copied there once)."""
        if device not in self._theta:
            cpu = self._theta[torch.device("cpu")]
            self._theta[device] = {k: v.to(device) for k, v in cpu.items()}
        return self._theta[device]

    @torch.no_grad()
    def step(self, closure=None, loss=None):
        """Update every parameter that has a gradient; `loss` (or `closure()`'s) feeds the loss
        features of the hypernetwork. Returns the closure's loss."""
        closure_loss = None
        if closure is not None:
            with torch.enable_grad():
                closure_loss = closure()
        loss = closure_loss if loss is None else loss
        members = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                members.append((p, group))
        self._step(members, loss)
        return closure_loss

    def _step(self, members: list, loss) -> None:
        """Update each `(param, group)` of `members` by its `_update`."""
        for p, group in members:
            p.add_(self._update(p, group, loss).reshape(p.shape).to(p.dtype))


class _LearnedOverHorizon(_Learned):
    """Common parts of the optimizers that read the training progress `step / num_steps` (the
    MLP, the hypernetwork and Celo): the group default `num_steps` (and `defaults`), the
    config's moment decays and the output multipliers of those that scale an Adam direction."""

    def __init__(self, params, theta, config: dict, num_steps: int, **defaults):
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
        super().__init__(params, theta, {"num_steps": num_steps, **defaults})
        self.decays = tuple(config["decays"])
        if "base_decay" in config:  # the MLP and the hypernetwork
            self.base = self.decays.index(config["base_decay"])
            self.exp_mult, self.step_mult = config["exp_mult"], config["step_mult"]

    def _batches(self, members: list, key=None) -> list[list]:
        """`members` by device, step count and group `num_steps` (those stepped as one), each
        sorted by `key` of `(param, group)`."""
        batches = {}
        for p, group in members:
            batch = (p.device, self.state[p].get("step", 0), group["num_steps"])
            batches.setdefault(batch, []).append((p, group))
        return [sorted(batch, key=key) if key else batch for batch in batches.values()]

    def _flat_moments(self, params, channels: int, first: int, cache: dict):
        """Float32 buffers `x [channels, N]` and `nu [N]` over `params` (`N` elements in all,
        in order) holding their state: a parameter's `mu` is its columns of the `K` rows of `x`
        from `first`, its `nu` its segment of `nu`. Taken from `cache` while the parameters'
        state is still those views (else built from the state, zero for a new parameter) and
        kept in `self._flat`."""
        key = tuple(map(id, params))
        if key in cache:
            x, nu, mus, nus = cache[key]
            if all(self.state[p].get("mu") is m and self.state[p].get("nu") is n
                   for p, m, n in zip(params, mus, nus, strict=True)):  # fmt: skip
                self._flat[key] = cache[key]
                return x, nu
        sizes = [p.numel() for p in params]
        x = torch.zeros((channels, sum(sizes)), dtype=torch.float32, device=params[0].device)
        nu = x.new_zeros(sum(sizes))
        mus = torch.split(x[first : first + len(self.decays)], sizes, dim=1)
        nus = torch.split(nu, sizes)
        for p, mu, nu_p in zip(params, mus, nus, strict=True):
            state = self.state[p]
            if "mu" in state:
                mu.copy_(state["mu"]), nu_p.copy_(state["nu"])
            else:
                state["step"] = 0
            state["mu"], state["nu"] = mu, nu_p
        self._flat[key] = (x, nu, mus, nus)
        return x, nu


class LearnedMLP(_LearnedOverHorizon):
    r"""The per-parameter MLP learned optimizer (small_fc_lopt; `l2o.optimizers.mlp`).

    Per element, the MLP reads the gradient, the parameter and its momenta at `decays` (each
    divided by its RMS over the tensor) and 11 tanh embeddings of the training fraction
    :math:`t / T`, and outputs a direction :math:`d` and a log-magnitude :math:`m`:

    .. math::

        \Delta\theta = -\exp(\alpha m) \left( \eta \, \frac{\hat\mu}{\sqrt{\hat\nu + \epsilon^2}}
        + \beta d \right), \qquad \eta = \exp(\theta_{\log\eta})

    with :math:`\hat\mu, \hat\nu` the bias-corrected momentum at `base_decay` and second moment.

    Args:
      params: the parameters, or dicts of parameter groups.
      theta: the meta-parameters (`read_learned`).
      config: the file's config.
      num_steps: :math:`T` (per group).
    """

    def __init__(self, params, theta, config: dict, num_steps: int):
        super().__init__(params, theta, config, num_steps)
        self.num_layers = len(config["hidden_sizes"]) + 1

    def _step(self, members: list, loss) -> None:
        """Step each batch of parameters as one: their features side by side in one `[C, N]`
        buffer, one network pass over all `N` elements."""
        cache, self._flat = self._flat, {}
        for batch in self._batches(members):
            params = [p for p, _ in batch]
            sizes, device = [p.numel() for p in params], params[0].device
            theta, num_inputs = self.theta(device), 2 + len(self.decays)
            x, nu = self._flat_moments(params, num_inputs, 2, cache)  # x = [g, p, mu_1..mu_K]
            g, mu, step = (
                _gather([p.grad for p in params], x[0]),
                x[2:],
                self.state[params[0]]["step"],
            )
            _gather(params, x[1])
            decays = _column(self.decays, device)
            _update_moments(mu, nu, g, decays)
            embedding = _progress_embedding(step, batch[0][1]["num_steps"], device)
            for p in params:
                self.state[p]["step"] = step + 1
            first_bias = theta["b0"] + embedding @ theta["w0"][num_inputs:]
            h = _segment_input_layer(theta["w0"][:num_inputs], first_bias, x, sizes)
            out = _mlp(theta, torch.relu_(h), self.num_layers) if self.num_layers > 1 else h
            count = torch.tensor(float(step + 1), dtype=torch.float32, device=device)
            base = slice(self.base, self.base + 1)
            update = _adam_directions(mu[base], nu, count, decays[base])[0]
            update.mul_(torch.exp(theta["log_lr"])).add_(out[0].mul_(self.step_mult))
            _apply(params, update.mul_(out[1].mul_(self.exp_mult).exp_()).neg_(), sizes)


class LearnedHyper(_LearnedOverHorizon):
    r"""The VeLO-style hypernetwork learned optimizer (`l2o.optimizers.hyper`).

    Per step and tensor an LSTM reads the tensor's statistics, the 11 training-progress
    embeddings and 3 loss features; its output mixes a bank of per-parameter MLPs,
    :math:`c = \mathrm{softmax}(W_c h + b_c)`, and gives a log step :math:`s = w_s^\top h +
    b_s`. The tensor's MLP (weights :math:`\sum_k c_k \phi_k`) outputs :math:`d, m`:

    .. math::

        \Delta\theta = -e^{s} \exp(\alpha m) \left( \eta \, \frac{\hat\mu}{\sqrt{\hat\nu +
        \epsilon^2}} + \beta d \right), \qquad \eta = \exp(\theta_{\log\eta})

    Pass the training loss as `step(loss=...)` or through a closure (else the loss features
    are zero).

    Args:
      params: the parameters, or dicts of parameter groups.
      theta: the meta-parameters (`read_learned`).
      config: the file's config.
      num_steps: :math:`T` (per group).
    """

    def __init__(self, params, theta, config: dict, num_steps: int):
        super().__init__(params, theta, config, num_steps)
        self.lstm_size = config["lstm_size"]
        self.num_layers = len(config["mlp_hidden_sizes"]) + 1

    def _update(self, p, group, loss):
        theta, device = self.theta(p.device), p.device
        state, g, w = self.state[p], _f32(p.grad), _f32(p)
        if not state:
            state["step"] = 0
            state["mu"] = torch.zeros(
                (len(self.decays), g.numel()), dtype=torch.float32, device=device
            )
            state["nu"] = torch.zeros_like(g)
            state["h"] = torch.zeros((self.lstm_size, 1), dtype=torch.float32, device=device)
            state["c"] = torch.zeros((self.lstm_size, 1), dtype=torch.float32, device=device)
            state["loss_ema"] = torch.zeros(len(LOSS_DECAYS), dtype=torch.float32, device=device)
            state["loss_count"] = 0
            state["loss_min"] = torch.tensor(1e30, dtype=torch.float32, device=device)
        decays = _column(self.decays, device)
        _update_moments(state["mu"], state["nu"], g, decays)
        _update_loss(state, None if loss is None else torch.as_tensor(loss).float().to(device))
        embedding = _progress_embedding(state["step"], group["num_steps"], device)
        state["step"] += 1
        stats = _tensor_statistics(w, g, state["mu"], state["nu"], p.ndim)
        x = torch.cat([embedding, _loss_features(state), stats])[:, None]
        h, c = _lstm_cell(
            x, state["h"], state["c"], theta["lstm_wx"], theta["lstm_wh"], theta["lstm_b"]
        )
        state["h"], state["c"] = h, c
        mix = torch.softmax(theta["mix_w"].T @ h[:, 0] + theta["mix_b"], dim=0)
        log_step = (theta["step_w"].T @ h[:, 0] + theta["step_b"])[0]
        weights = {
            k[len("bank_") :]: torch.tensordot(mix, v, dims=1)
            for k, v in theta.items()
            if k.startswith("bank_")
        }
        count = torch.tensor(float(state["step"]), dtype=torch.float32, device=device)
        directions = _adam_directions(state["mu"], state["nu"], count, decays)
        k = len(self.decays)
        z = _input_layer(weights["w0"], weights["b0"], w, g, state["mu"])
        z = torch.addmm(z, weights["w0"][2 + k :].T, directions)
        out = _mlp(weights, torch.relu_(z), self.num_layers) if self.num_layers > 1 else z
        lr = torch.exp(theta["log_lr"])
        scale = torch.exp(log_step + self.exp_mult * out[1])
        return -(scale * (lr * directions[self.base] + self.step_mult * out[0]))


class LearnedLSTM(_Learned):
    r"""The coordinatewise LSTM learned optimizer (Andrychowicz et al. 2016; `l2o.optimizers.lstm`).

    Every element runs the same LSTM on its preprocessed gradient :math:`\tilde g = (\log|g| /
    p, \operatorname{sign} g)` if :math:`|g| \ge e^{-p}`, else :math:`(-1, e^p g)`:

    .. math::

        \Delta\theta_t = 0.01 \, (w_{out}^\top h^{(L)}_t + b_{out})
        \;\left[ - \eta \frac{\hat\mu_t}{\sqrt{\hat\nu_t + \epsilon^2}} \right]_{\text{residual}}

    Args:
      params: the parameters, or dicts of parameter groups.
      theta: the meta-parameters (`read_learned`).
      config: the file's config.
    """

    def __init__(self, params, theta, config: dict):
        super().__init__(params, theta, {})
        self.hidden, self.layers = config["hidden_size"], config["num_layers"]
        self.p, self.output_scale = config["preprocess_p"], config["output_scale"]
        self.residual, self.b1 = config["residual"], config["b1"]

    def _update(self, p, group, loss):
        theta, device = self.theta(p.device), p.device
        state, g = self.state[p], _f32(p.grad)
        if not state:
            state["step"] = 0
            for i in range(self.layers):
                state[f"h{i}"] = torch.zeros(
                    (self.hidden, g.numel()), dtype=torch.float32, device=device
                )
                state[f"c{i}"] = torch.zeros(
                    (self.hidden, g.numel()), dtype=torch.float32, device=device
                )
            if self.residual:
                state["mu"] = torch.zeros((1, g.numel()), dtype=torch.float32, device=device)
                state["nu"] = torch.zeros_like(g)
        state["step"] += 1
        p_ = torch.tensor(self.p, dtype=torch.float32, device=device)
        threshold = torch.exp(-p_)
        big = torch.abs(g) >= threshold
        log_part = torch.log(torch.maximum(torch.abs(g), threshold)) / self.p
        x = torch.stack([
            torch.where(big, log_part, -1.0),
            torch.where(big, torch.sign(g), torch.exp(p_) * g),
        ])  # fmt: skip
        for i in range(self.layers):
            h, c = _lstm_cell(
                x,
                state[f"h{i}"],
                state[f"c{i}"],
                *(theta[f"lstm{i}_{k}"] for k in ("wx", "wh", "b")),
            )
            state[f"h{i}"], state[f"c{i}"] = h, c
            x = h
        update = self.output_scale * (theta["out_w"].T @ x + theta["out_b"][:, None])[0]
        if self.residual:
            decays = _column((self.b1,), device)
            _update_moments(state["mu"], state["nu"], g, decays)
            count = torch.tensor(float(state["step"]), dtype=torch.float32, device=device)
            direction = _adam_directions(state["mu"], state["nu"], count, decays)[0]
            update = update - torch.exp(theta["log_lr"]) * direction
        return update


class LearnableAdam(_Learned):
    r"""Adam with meta-learned hyperparameters (`l2o.optimizers.learnable_adam`):

    .. math::

        \Delta\theta_t = -\eta \, \frac{\hat m_t}{\sqrt{\hat v_t + 10^{-16}} + \epsilon}, \quad
        \eta = e^{\theta_{\log\eta}}, \; \beta_i = \sigma(\theta_{\beta_i}), \;
        \epsilon = e^{\theta_{\log\epsilon}}

    with Adam's bias-corrected moments at decays :math:`\beta_1, \beta_2`.

    Args:
      params: the parameters, or dicts of parameter groups.
      theta: the meta-parameters (`read_learned`).
    """

    def __init__(self, params, theta):
        super().__init__(params, theta, {})

    def _update(self, p, group, loss):
        theta, device = self.theta(p.device), p.device
        state, g = self.state[p], _f32(p.grad)
        if not state:
            state["step"] = 0
            state["mu"] = torch.zeros_like(g)
            state["nu"] = torch.zeros_like(g)
        state["step"] += 1
        lr, eps = torch.exp(theta["log_lr"]), torch.exp(theta["log_eps"])
        b1, b2 = torch.sigmoid(theta["logit_b1"]), torch.sigmoid(theta["logit_b2"])
        t = torch.tensor(float(state["step"]), dtype=torch.float32, device=device)
        state["mu"] = b1 * state["mu"] + (1 - b1) * g
        state["nu"] = b2 * state["nu"] + (1 - b2) * (g * g)
        m_hat, v_hat = state["mu"] / (1 - b1**t), state["nu"] / (1 - b2**t)
        return -lr * m_hat / (torch.sqrt(v_hat + EPS_ROOT) + eps)


class LearnedCelo(_LearnedOverHorizon):
    r"""The Celo2-style learned optimizer (`l2o.optimizers.celo`).

    Per element, a ReLU MLP reads 10 channels, each divided by its RMS over the tensor (the
    gradient, the momenta at the three `decays`, their Adam ratios, :math:`g / \sqrt{\nu}`, and
    the gradient and first momentum under Adafactor's factored second moment), with 11 tanh
    embeddings of the training fraction :math:`t / T`; its output corrects Adam's direction
    :math:`a` (first decay) and :math:`d` is the sum, divided by its RMS over the tensor with
    `normalize`. A matrix :math:`W` (fan_in :math:`\times` fan_out) steps along the Newton-Schulz
    orthogonalization of :math:`d`; vectors, scalars and embeddings along :math:`a`:

    .. math::

        \Delta W = -\eta_t \left(c \sqrt{n_\mathrm{out}/n_\mathrm{in}} \,
        \mathrm{NS}_5(d) + \lambda W\right), \qquad \Delta b = -\eta_t (a + \lambda b)

    (with `orthogonalize` false, every tensor steps along :math:`d`). :math:`\eta_t` is the
    config's `learning_rate`, times :math:`\exp(\mathrm{clip}(w^\top h_t + b, -5, 5))` with the
    learned scheduler (`scheduler_hidden` > 0), :math:`h_t = \tanh(U h_{t-1} + V z_t + e)`,
    :math:`z_t` the loss features and the progress embedding: pass the training loss as
    `step(loss=...)` or through a closure (else the loss features are zero). The scheduler's
    state is kept per parameter (as the hypernetwork's): parameters stepped together share its
    learning rate.

    Parameter-group keys:

    - `layout`: which axis of a tensor of rank >= 2 is fan_out, the others folding into
      fan_in. `"torch"` (the default): the first, as in `nn.Linear` (`[out, in]`) and
      `nn.Conv*d` (`[out, in, *kernel]`) weights. `"haiku"`: the last, as the optax transform
      reads haiku's `[in, out]` and `[*kernel, in, out]` (the same tensors give the same
      updates). The layout sets the scale :math:`\sqrt{n_\mathrm{out}/n_\mathrm{in}}` and the
      rows and columns of the factored second moment; the torch layout on the transposed
      tensor (`W.T`, or the axes reversed) gives the haiku layout's update transposed.
    - `embedding`: True to give the group's tensors the vector rule (AdamW's direction), as
      the optax transform does to a parameter whose path contains `embed`; put
      `nn.Embedding` weights (and any matrix that should not be orthogonalized) in such a
      group. By default every tensor of rank >= 2 takes the matrix rule.

    Args:
      params: the parameters, or dicts of parameter groups.
      theta: the meta-parameters (`read_learned`).
      config: the file's config.
      num_steps: :math:`T` (per group).
      layout: the groups' default `layout`.
    """

    def __init__(self, params, theta, config: dict, num_steps: int, layout: str = "torch"):
        self._check_options(layout, False)
        super().__init__(params, theta, config, num_steps, layout=layout, embedding=False)
        self.num_layers = len(config["hidden_sizes"]) + 1
        self.hidden = config["scheduler_hidden"]
        self.learning_rate, self.weight_decay = config["learning_rate"], config["weight_decay"]
        self.matrix_mult = config["matrix_mult"]
        self.orthogonalize, self.normalize = config["orthogonalize"], config["normalize"]

    @staticmethod
    def _check_options(layout, embedding) -> None:
        if not isinstance(layout, str) or layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r:.40}")
        if not isinstance(embedding, bool):
            raise ValueError(f"embedding must be a bool, got {embedding!r:.40}")

    def add_param_group(self, param_group: dict) -> None:
        """`torch.optim.Optimizer.add_param_group`, checking the group's `layout` and
        `embedding`."""
        if isinstance(param_group, dict):
            self._check_options(
                param_group.get("layout", self.defaults["layout"]),
                param_group.get("embedding", self.defaults["embedding"]),
            )
        super().add_param_group(param_group)

    def _in_network(self, p, group) -> bool:
        """Whether `p` steps along the network's direction (else along Adam's)."""
        return not self.orthogonalize or (p.ndim >= 2 and not group["embedding"])

    def _step(self, members: list, loss) -> None:
        """Step each batch of parameters as one: the network's tensors first, their features
        side by side in one `[C, N]` buffer, one network pass over all of them, one
        Newton-Schulz per matrix shape."""
        cache, self._flat = self._flat, {}
        for batch in self._batches(members, key=lambda m: not self._in_network(*m)):
            params = [p for p, _ in batch]
            sizes, device, k = [p.numel() for p in params], params[0].device, len(self.decays)
            theta, step = self.theta(device), self.state[params[0]].get("step", 0)
            x, nu = self._flat_moments(params, NUM_CELO_INPUTS, 1, cache)
            g = _gather([p.grad for p in params], x[0])
            mu, ratios = x[1 : 1 + k], x[1 + k : 1 + 2 * k]
            decays = _column(self.decays, device)
            _update_moments(mu, nu, g, decays)
            embedding = _progress_embedding(step, batch[0][1]["num_steps"], device)
            count = torch.tensor(float(step + 1), dtype=torch.float32, device=device)
            _adam_directions(mu, nu, count, decays, out=ratios)
            lr = torch.tensor(self.learning_rate, dtype=torch.float32, device=device)
            lrs = [self._scheduled(self.state[p], theta, lr, embedding, loss) for p in params]
            for p in params:
                self.state[p]["step"] = step + 1
            num_net = sum(self._in_network(*m) for m in batch)
            n = sum(sizes[:num_net])
            update = torch.empty_like(g)
            if n:
                self._network_direction(batch[:num_net], x[:, :n], nu[:n], embedding, update[:n])
            update[n:] = ratios[0, n:]
            if self.weight_decay:
                update.add_(_gather(params, torch.empty_like(g)).mul_(self.weight_decay))
            if self.hidden:
                for u, lr_p in zip(torch.split(update, sizes), lrs, strict=True):
                    u.mul_(-lr_p)
            else:
                update.mul_(-lr)
            _apply(params, update, sizes)

    def _scheduled(self, state: dict, theta, lr, embedding, loss) -> torch.Tensor:
        """The learning rate of one parameter: `lr`, times the learned scheduler's factor (its
        state advanced by a step) if there is one."""
        if not self.hidden:
            return lr
        if "h" not in state:
            state["h"] = torch.zeros(self.hidden, dtype=torch.float32, device=lr.device)
            state["loss_ema"] = torch.zeros(len(LOSS_DECAYS), dtype=torch.float32, device=lr.device)
            state["loss_count"] = 0
            state["loss_min"] = torch.tensor(1e30, dtype=torch.float32, device=lr.device)
        _update_loss(state, None if loss is None else torch.as_tensor(loss).float().to(lr.device))
        z = torch.cat([_loss_features(state), embedding])
        h = torch.tanh(state["h"] @ theta["sched_u"] + z @ theta["sched_v"] + theta["sched_e"])
        state["h"] = h
        return lr * torch.exp(torch.clamp(h @ theta["sched_w"] + theta["sched_b"], -5.0, 5.0))

    def _network_direction(self, members, x, nu, embedding, out) -> None:
        """The network's direction of `members` into `out [n]`: from their features `x`
        (`g`, the momenta and their Adam ratios filled in), normalized per tensor and
        orthogonalized per matrix as configured."""
        theta, k = self.theta(x.device), len(self.decays)
        sizes = [p.numel() for p, _ in members]
        g, mu0, ratio = x[0], x[1], x[1 + k]
        torch.add(nu, EPS_ROOT, out=x[1 + 2 * k]).rsqrt_().mul_(g)
        factored = x[2 + 2 * k]
        for (p, group), nu_p, f in zip(
            members, torch.split(nu, sizes), torch.split(factored, sizes), strict=True
        ):
            _factored_rsqrt(nu_p, p.shape, group["layout"], f)
        torch.mul(mu0, factored, out=x[3 + 2 * k])
        factored.mul_(g)
        first_bias = theta["b0"] + embedding @ theta["w0"][NUM_CELO_INPUTS:]
        h = _segment_input_layer(theta["w0"][:NUM_CELO_INPUTS], first_bias, x, sizes)
        net = _mlp(theta, torch.relu_(h), self.num_layers) if self.num_layers > 1 else h
        d = net[0].add_(ratio)
        if self.normalize:
            for d_p, scale in zip(torch.split(d, sizes), _segment_rsqrt_ms(d, sizes), strict=True):
                d_p.mul_(scale)
        if not self.orthogonalize:
            out.copy_(d)
            return
        shapes = {}
        for (p, group), d_p, out_p in zip(
            members, torch.split(d, sizes), torch.split(out, sizes), strict=True
        ):
            m = _matrix(d_p, p.shape, group["layout"])
            shapes.setdefault(tuple(m.shape), []).append(
                (m, _matrix(out_p, p.shape, group["layout"]))
            )
        for (fan_in, fan_out), pairs in shapes.items():
            ms = _newton_schulz(torch.stack([m for m, _ in pairs]))
            scale = self.matrix_mult * math.sqrt(fan_out / fan_in)
            for m, (_, out_m) in zip(ms, pairs, strict=True):
                torch.mul(m, scale, out=out_m)
