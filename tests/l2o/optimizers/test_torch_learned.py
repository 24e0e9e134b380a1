"""The PyTorch learned optimizers (`l2o/optimizers/torch_learned.py`) update as their optax
transforms do over 200 steps (the shipped file and every architecture with random
meta-parameters), train a torch model, resume bit for bit from a state_dict, and refuse hostile
or mismatched files with one line naming the file; `l2o export --format torch` writes them."""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import io
import json
import math
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from baselines.muon import NS_COEFFS
from l2o.cli.export import TORCH_MODULE_IMPORTS
from l2o.cli.main import main
from l2o.optimizers import celo, features, file_format, registry
from l2o.optimizers.file_format import load_learned, save_learned

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # tiny tensors: threads only contend
tl = pytest.importorskip("l2o.optimizers.torch_learned")

PRETRAINED = Path(__file__).resolve().parents[3] / "l2o" / "pretrained"
SHAPES = {"a": (3, 4), "b": (5,), "c": (), "d": (2, 3, 4), "embed": (4, 3)}  # haiku's layout
STEPS, NUM_STEPS = 200, 150
SMALL = {  # output multipliers raised so that every network path moves the weights
    "mlp": {"hidden_sizes": [4], "exp_mult": 0.3, "step_mult": 0.03},
    "hyper": {"lstm_size": 4, "num_mlps": 3, "mlp_hidden_sizes": [4], "decays": [0.5, 0.9, 0.99],
              "exp_mult": 0.3, "step_mult": 0.03},
    "lstm": {"hidden_size": 4, "num_layers": 2},
    "learnable_adam": {},
    "celo": {"hidden_sizes": [4], "scheduler_hidden": 3, "weight_decay": 0.1,
             "learning_rate": 1e-2},
    "celo-base": {"hidden_sizes": [], "orthogonalize": False, "normalize": False,
                  "decays": [0.5, 0.9, 0.99], "learning_rate": 1e-2},
}  # fmt: skip
"""Small configs by label: the architecture, then optionally `-` and a variant's name."""
ADAM_POINT = {"log_lr": math.log(1e-2), "logit_b1": math.log(9.0), "logit_b2": math.log(999.0),
              "log_eps": math.log(1e-8)}  # fmt: skip


def architecture(label: str) -> str:
    return label.partition("-")[0]


def random_file(path: Path, name: str, config: dict, scale: float, seed: int) -> Path:
    """A file of architecture `name` whose meta-parameters are `scale` times standard normals
    (biases and weights alike) around the Adam point (learning rate 1e-2, b1 0.9, b2 0.999)."""
    rng = np.random.default_rng(seed)
    leaves = file_format.expected_leaves(name, registry.make_config(name, **config))
    flat = {k: scale * rng.standard_normal(v.shape) + ADAM_POINT.get(k, 0.0)
            for k, v in leaves.items()}  # fmt: skip
    return save_learned(path, name, config, flat)  # every theta is a flat dict


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The shipped files; each architecture at random meta-parameters (`NAME`), and near the
    Adam point (`NAME_near`: small networks, so the optimizer trains)."""
    out = {p.stem: p for p in sorted(PRETRAINED.glob("*.safetensors"))}
    directory = tmp_path_factory.mktemp("learned")
    for i, (label, config) in enumerate(SMALL.items()):
        name = architecture(label)
        out[label] = random_file(directory / f"{label}.safetensors", name, config, 0.3, i)
        near = directory / f"{label}_near.safetensors"
        config = {k: v for k, v in config.items() if k not in ("exp_mult", "step_mult")}
        out[f"{label}_near"] = random_file(near, name, config, 0.05, 10 + i)
    return out


def initial_params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def streams(steps: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Float32 gradients per leaf `[steps, *shape]` (a drifting mean) and falling losses."""
    rng = np.random.default_rng(1)
    drift = np.sin(np.arange(steps) / 20)
    grads = {
        k: (rng.standard_normal((steps, *s)) + drift.reshape(-1, *[1] * len(s))).astype(np.float32)
        for k, s in SHAPES.items()
    }
    losses = (2.0 * np.exp(-np.arange(steps) / 50) + 0.1 * rng.random(steps)).astype(np.float32)
    return grads, losses


@functools.cache
def optax_run(path: Path) -> dict[str, np.ndarray]:
    """The params after `STEPS` steps of the optax transform of the file at `path`."""
    transform = load_learned(path)[0]
    grads, losses = streams(STEPS)

    def step(carry, inputs):
        p, state = carry
        g, loss = inputs
        updates, state = transform.update(g, state, p, loss=loss, num_steps=NUM_STEPS)
        return (optax.apply_updates(p, updates), state), None

    params = jax.tree.map(jnp.asarray, initial_params())
    run = jax.jit(lambda p, xs: jax.lax.scan(step, (p, transform.init(p)), xs)[0][0])
    out = run(params, (jax.tree.map(jnp.asarray, grads), jnp.asarray(losses)))
    return {k: np.asarray(v) for k, v in out.items()}


def torch_params() -> dict:
    return {k: torch.tensor(v, requires_grad=True) for k, v in initial_params().items()}


def torch_run(optimizer, params, steps: range, view=lambda x, k: x) -> None:
    grads, losses = streams(STEPS)
    for t in steps:
        for k, p in params.items():
            p.grad = view(torch.tensor(grads[k][t]), k)
        optimizer.step(loss=float(losses[t]))


def param_groups(name: str, params: dict, layout: str = "haiku") -> list:
    """`params`; for celo, in groups that read them as the optax transform does: `embed` is an
    embedding, and the others' layout is `layout`."""
    if architecture(name) != "celo":
        return list(params.values())
    return [
        {"params": [p for k, p in params.items() if k != "embed"], "layout": layout},
        {"params": [params["embed"]], "layout": layout, "embedding": True},
    ]


NAMES = ["mlp_digits", *SMALL]


@pytest.mark.parametrize("name", NAMES)
def test_matches_optax_over_200_steps_and_resumes_bit_for_bit(files, name):
    params = torch_params()
    optimizer = tl.load(files[name], param_groups(name, params), num_steps=NUM_STEPS)
    torch_run(optimizer, params, range(STEPS // 2))
    saved = io.BytesIO()
    torch.save(optimizer.state_dict(), saved)
    halfway = {k: p.detach().clone() for k, p in params.items()}
    torch_run(optimizer, params, range(STEPS // 2, STEPS))
    want = optax_run(files[name])
    for k, p in params.items():
        np.testing.assert_allclose(p.detach().numpy(), want[k], rtol=1e-5, atol=1e-6, err_msg=k)

    resumed = {k: v.clone().requires_grad_(True) for k, v in halfway.items()}
    fresh = tl.load(files[name], param_groups(name, resumed), num_steps=NUM_STEPS)
    saved.seek(0)
    fresh.load_state_dict(torch.load(saved, weights_only=True))
    torch_run(fresh, resumed, range(STEPS // 2, STEPS))
    for k, p in params.items():
        assert torch.equal(resumed[k], p), k


def _reversed_axes(x: torch.Tensor, key: str) -> torch.Tensor:
    """A haiku tensor in torch's layout (`[in, out] -> [out, in]`, `[k, in, out] -> [out, in,
    k]`); an embedding is `[vocab, dim]` in both."""
    if key == "embed" or x.ndim < 2:
        return x
    return x.permute(*reversed(range(x.ndim))).contiguous()


@pytest.mark.parametrize("name", ["celo", "celo-base"])
def test_celo_in_torch_layout_is_the_haiku_update_with_axes_reversed(files, name):
    params = {k: _reversed_axes(p.detach(), k).requires_grad_(True)
              for k, p in torch_params().items()}  # fmt: skip
    optimizer = tl.load(files[name], param_groups(name, params, "torch"), num_steps=NUM_STEPS)
    torch_run(optimizer, params, range(STEPS), _reversed_axes)
    want = optax_run(files[name])
    for k, p in params.items():
        got = _reversed_axes(p.detach(), k).numpy()
        np.testing.assert_allclose(got, want[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_celo_layout_and_embedding_are_checked(files):
    w = torch.zeros(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match="layout must be one of torch, haiku"):
        tl.load(files["celo"], [{"params": [w], "layout": "jax"}])
    with pytest.raises(ValueError, match="embedding must be a bool"):
        tl.load(files["celo"], [{"params": [w], "embedding": "yes"}])
    _, config, theta = tl.read_learned(files["celo"])
    with pytest.raises(ValueError, match="layout"):
        tl.LearnedCelo([w], theta, config, 10, layout="flax")


@pytest.mark.parametrize("name", ["mlp_digits", *(f"{name}_near" for name in SMALL)])
def test_trains_a_torch_model(files, name):
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = torch.sin(x @ torch.randn(8, 1))
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = tl.load(files[name], model.parameters(), num_steps=200)

    def closure():
        optimizer.zero_grad()
        loss = torch.mean((model(x) - y) ** 2)
        loss.backward()
        return loss

    losses = [float(optimizer.step(closure).detach()) for _ in range(200)]
    assert np.isfinite(losses).all() and np.mean(losses[-10:]) < 0.5 * losses[0], losses[::40]


def test_expected_shapes_agree_with_the_file_format():
    configs = [(architecture(label), config) for label, config in SMALL.items()]
    configs += [(name, {}) for name in registry.list_learned()]
    configs += [("lstm", {"residual": False, "num_layers": 1}), ("mlp", {"hidden_sizes": []})]
    for name, values in configs:
        config = registry.make_config(name, **values)
        want = {k: tuple(v.shape) for k, v in file_format.expected_leaves(name, config).items()}
        assert tl.expected_shapes(name, registry.config_to_dict(config)) == want, name


def test_constants_agree_with_the_library():
    assert tl.PROGRESS_TIMESCALES == features.PROGRESS_TIMESCALES
    assert (tl.B2, tl.LOSS_DECAYS, tl.NUM_LOSS_FEATURES) == (
        features.B2, features.LOSS_DECAYS, features.NUM_LOSS_FEATURES
    )  # fmt: skip
    assert (tl.NS_COEFFS, tl.NUM_CELO_INPUTS) == (NS_COEFFS, celo.NUM_INPUTS)
    assert tl.CELO_KEYS == {f.name for f in dataclasses.fields(celo.CeloConfig)}


@pytest.mark.parametrize(
    "change, message",
    [({"decays": [0.9, 0.99]}, "decays"), ({"decays": [0.9, 0.99, 1.0]}, "decays"),
     ({"hidden_sizes": [0]}, "hidden_sizes"), ({"horizon": 0}, "horizon"),
     ({"learning_rate": 0.0}, "learning_rate"), ({"matrix_mult": -1.0}, "matrix_mult"),
     ({"weight_decay": -0.1}, "weight_decay"), ({"scheduler_hidden": -1}, "scheduler_hidden"),
     ({"orthogonalize": 1}, "orthogonalize"), ({"normalize": "yes"}, "normalize"),
     ({"learning_rate": "1e-3"}, "learning_rate"), ({"base_decay": 0.9}, "keys must be")],
)  # fmt: skip
def test_celo_config_is_checked_as_the_library_does(change, message):
    config = registry.config_to_dict(celo.CeloConfig()) | change
    with pytest.raises(ValueError, match=message):
        tl.expected_shapes("celo", config)
    with pytest.raises(ValueError):
        registry.make_config("celo", **config)
    with pytest.raises(ValueError, match="keys must be"):  # a file's config has every key
        tl.expected_shapes("celo", {k: v for k, v in config.items() if k != "normalize"})


def _split(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _wrong_shape(path):
    header, data = _split(path)
    header["b0"]["shape"] = [1]
    return _join(header, data)


def _wrong_architecture(path):
    header, data = _split(path)
    header["__metadata__"]["architecture"] = "lstm"
    config = registry.make_config("lstm", hidden_size=4, num_layers=1)
    header["__metadata__"]["config"] = json.dumps(registry.config_to_dict(config))
    return _join(header, data)


def _config_of_wrong_type(path):
    header, data = _split(path)
    config = json.loads(header["__metadata__"]["config"])
    header["__metadata__"]["config"] = json.dumps({**config, "horizon": "1e4"})
    return _join(header, data)


def _flipped_bit(path):
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    return bytes(data)


def _truncated(path):
    return path.read_bytes()[:-4]


@pytest.mark.parametrize("name", ["mlp", "celo"])
@pytest.mark.parametrize(
    "corrupt, message",
    [(_wrong_shape, "shape"), (_wrong_architecture, "not fit architecture 'lstm'"),
     (_config_of_wrong_type, "horizon"), (_flipped_bit, "sha256 mismatch"),
     (_truncated, "bytes of data"), (lambda path: b"\xff" * 12, "header length")],
)  # fmt: skip
def test_hostile_files_are_refused_in_one_line(files, tmp_path, capsys, corrupt, message, name):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(corrupt(files[name]))  # the shipped file predates the sha256
    with pytest.raises(tl.OptimizerFileError, match=message) as error:
        tl.load(bad, [torch.zeros(2, requires_grad=True)])
    assert str(bad) in str(error.value) and "\n" not in str(error.value)
    code = main(["export", str(bad), "--format", "torch", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(bad) in err, err
    assert not (tmp_path / "out").exists()


def test_export_command_writes_a_module_and_its_file(files, tmp_path):
    out = tmp_path / "out"
    args = ["export", str(files["mlp_digits"]), "--format", "torch", "--out", str(out)]
    assert main([*args, "--name", "digits"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["digits.py", "digits.safetensors"]
    spec = importlib.util.spec_from_file_location("digits", out / "digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    w = torch.ones(4, requires_grad=True)
    optimizer = module.load(out / "digits.safetensors", [w], num_steps=10)
    assert type(optimizer).__name__ == "LearnedMLP"
    w.grad = torch.ones(4)
    optimizer.step()
    assert bool((w < 1).all())


def test_module_needs_only_torch_and_the_standard_library():
    """And `l2o export --format torch` refuses a --name that would shadow one of them."""
    tree = ast.parse(Path(tl.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}  # fmt: skip
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"__future__", "hashlib", "json", "math", "os", "struct", "torch"}
    assert imported - {"__future__"} == set(TORCH_MODULE_IMPORTS)


@pytest.mark.parametrize("name", ["mlp", "celo"])
def test_float64_parameters_keep_float32_state_through_a_resume(files, name):
    w = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
    optimizer = tl.load(files[name], [w], num_steps=10)
    w.grad = torch.ones(2, 3, dtype=torch.float64)
    optimizer.step(loss=1.0)
    fresh = tl.load(files[name], [w], num_steps=10)
    fresh.load_state_dict(optimizer.state_dict())
    assert w.dtype == torch.float64 and bool((w < 1).all())
    assert {v.dtype for v in fresh.state[w].values() if torch.is_tensor(v)} == {torch.float32}


@pytest.mark.parametrize("name", ["mlp_digits", "celo"])
def test_parameters_stepped_together_update_as_if_alone(files, name):
    """One optimizer over two parameters, one of them without a gradient at some steps, moves
    each as its own optimizer would."""
    grads, losses = streams(20)
    together = {k: torch.tensor(initial_params()[k], requires_grad=True) for k in ("a", "d")}
    alone = {k: torch.tensor(initial_params()[k], requires_grad=True) for k in ("a", "d")}
    optimizer = tl.load(files[name], list(together.values()), num_steps=NUM_STEPS)
    single = {k: tl.load(files[name], [p], num_steps=NUM_STEPS) for k, p in alone.items()}
    for t in range(20):
        for k in ("a", "d"):
            skip = k == "d" and t % 7 == 3
            together[k].grad = None if skip else torch.tensor(grads[k][t])
            if not skip:
                alone[k].grad = torch.tensor(grads[k][t])
                single[k].step(loss=float(losses[t]))
        optimizer.step(loss=float(losses[t]))
    for k, p in together.items():
        np.testing.assert_allclose(p.detach().numpy(), alone[k].detach().numpy(), rtol=1e-6)
