"""Rules exported as `torch.optim.Optimizer` classes update as the interpreter does (every op,
the library programs and the shipped rules over 200 steps), train a torch model, resume bit for
bit from a state_dict, keep per-group learning rates and the parameters' dtype."""

from __future__ import annotations

import ast
import importlib.util
import io
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from search.export import TORCH, export_torch
from search.interpreter import program_transform
from search.ops import OPS
from search.programs_library import get_program
from search.rule_file import read_rule

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # tiny tensors: threads only contend

PRETRAINED = Path(__file__).resolve().parents[2] / "l2o" / "pretrained"
SHAPES = {"a": (3, 4), "b": (5,)}
STEPS = 200


def rules() -> dict[str, tuple]:
    """Name -> (program, learning rate): the shipped rules and the library programs."""
    out = {}
    for path in sorted(PRETRAINED.glob("*.json")):
        program, metadata = read_rule(path)
        out[path.stem] = (program, float(metadata.get("learning_rate", 1e-3)))
    for name, lr in (("sgd", 0.1), ("momentum", 0.03), ("adam", 0.01), ("adamw", 0.01)):
        out[name] = (get_program(name), lr)
    out["lion"] = (get_program("lion"), 0.003)
    return out


RULES = rules()


def load_module(source: str, path: Path, name: str):
    """Import the generated module at `path` (our own output)."""
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"torch_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exported(program, tmp_path: Path, name: str = "Rule"):
    return getattr(load_module(export_torch(program, name=name), tmp_path / "m.py", name), name)


def initial_params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def gradient_stream(steps: int) -> dict[str, np.ndarray]:
    """`[steps, *shape]` float32 gradients per leaf, with a drifting mean so momenta matter."""
    rng = np.random.default_rng(1)
    drift = np.sin(np.arange(steps) / 20)
    return {
        k: (rng.standard_normal((steps, *s)) + drift.reshape(-1, *[1] * len(s))).astype(np.float32)
        for k, s in SHAPES.items()
    }


def optax_run(transform, params, grads, steps: int) -> dict[str, np.ndarray]:
    """The parameters after `steps` updates of `transform` on the stream `grads` (one scan)."""

    def step(carry, g):
        p, state = carry
        updates, state = transform.update(g, state, p)
        return (optax.apply_updates(p, updates), state), None

    params = jax.tree.map(jnp.asarray, params)
    run = jax.jit(lambda p, gs: jax.lax.scan(step, (p, transform.init(p)), gs)[0][0])
    out = run(params, jax.tree.map(lambda g: jnp.asarray(g[:steps]), grads))
    return {k: np.asarray(v) for k, v in out.items()}


def torch_params(params, dtype=None) -> dict:
    dtype = dtype or torch.float32
    return {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in params.items()}


def torch_run(optimizer, params, grads, steps: range) -> None:
    for t in steps:
        for k, p in params.items():
            p.grad = torch.tensor(grads[k][t], dtype=p.dtype)
        optimizer.step()


def test_every_op_has_a_torch_form():
    assert set(TORCH) == set(OPS)
    for name, op in OPS.items():
        reads = [f"@{n}" in TORCH[name] for n in range(3)]
        assert reads == [n < op.arity for n in range(3)], (name, TORCH[name])
        assert ("@c" in TORCH[name] or "@d" in TORCH[name]) == op.uses_const, name


def test_every_op_matches_the_interpreter(tmp_path, one_op_program):
    """Each op in a program of its own, 2 steps on one tensor; the interpreter runs all programs
    in one compiled function."""
    names, steps = sorted(OPS), 2
    grads = {"a": gradient_stream(steps)["a"]}
    programs = [one_op_program(name) for name in names]

    def run_all(params, grads):
        outs = []
        for program in programs:
            transform = program_transform(program, 0.05)
            p, state = params, transform.init(params)
            for t in range(steps):
                updates, state = transform.update(
                    jax.tree.map(lambda g, t=t: g[t], grads), state, p
                )
                p = optax.apply_updates(p, updates)
            outs.append(p)
        return outs

    wants = jax.jit(run_all)({"a": jnp.asarray(initial_params()["a"])}, grads)
    for name, program, want in zip(names, programs, wants, strict=True):
        cls = exported(program, tmp_path, f"Only{name.title().replace('_', '')}")
        params = torch_params({"a": initial_params()["a"]})
        torch_run(cls(params.values(), lr=0.05), params, grads, range(steps))
        got = params["a"].detach().numpy()
        np.testing.assert_allclose(got, want["a"], rtol=1e-6, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_matches_optax_over_200_steps_and_resumes_bit_for_bit(tmp_path, name):
    program, lr = RULES[name]
    cls = exported(program, tmp_path)
    grads = gradient_stream(STEPS)
    params = torch_params(initial_params())
    optimizer = cls(params.values(), lr=lr)
    torch_run(optimizer, params, grads, range(STEPS // 2))
    saved = io.BytesIO()
    torch.save(optimizer.state_dict(), saved)
    halfway = {k: p.detach().clone() for k, p in params.items()}
    torch_run(optimizer, params, grads, range(STEPS // 2, STEPS))
    want = optax_run(program_transform(program, lr), initial_params(), grads, STEPS)
    for k, p in params.items():
        np.testing.assert_allclose(p.detach().numpy(), want[k], rtol=1e-5, atol=1e-6, err_msg=k)

    resumed = {k: v.clone().requires_grad_(True) for k, v in halfway.items()}
    fresh = cls(resumed.values(), lr=lr)
    saved.seek(0)
    fresh.load_state_dict(torch.load(saved, weights_only=True))
    torch_run(fresh, resumed, grads, range(STEPS // 2, STEPS))
    for k, p in params.items():
        assert torch.equal(resumed[k], p), k


@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_trains_a_torch_model(tmp_path, name):
    program, lr = RULES[name]
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = torch.sin(x @ torch.randn(8, 1))
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = exported(program, tmp_path)(model.parameters(), lr=lr)

    def closure():
        optimizer.zero_grad()
        loss = torch.mean((model(x) - y) ** 2)
        loss.backward()
        return loss

    losses = [float(optimizer.step(closure).detach()) for _ in range(150)]
    assert np.isfinite(losses).all() and np.mean(losses[-10:]) < 0.5 * losses[0], losses[::30]


def test_groups_dtypes_and_lazy_state(tmp_path):
    cls = exported(get_program("adam"), tmp_path)
    frozen = torch.ones(3, requires_grad=True)
    moving = torch.ones(3, dtype=torch.float64, requires_grad=True)
    idle = torch.ones(2, requires_grad=True)
    optimizer = cls([{"params": [frozen], "lr": 0.0}, {"params": [moving, idle]}], lr=0.1)
    frozen.grad, moving.grad = torch.ones(3), torch.ones(3, dtype=torch.float64)
    optimizer.step()
    assert torch.equal(frozen, torch.ones(3)) and torch.allclose(
        moving, torch.full([3], 0.9, dtype=torch.float64)
    )
    assert optimizer.state[moving]["s1"].dtype == torch.float64 and idle not in optimizer.state
    assert optimizer.state[moving]["step"] == 1
    with pytest.raises(ValueError, match="lr"):
        cls([moving], lr=float("nan"))


def test_generated_module_imports_only_torch_and_math():
    source = export_torch(RULES["evolved_adamw"][0], name="Evolved", learning_rate=0.01)
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported == {"__future__", "math", "torch"}
    for name in ("x; import os", "torch", "_rule", "1abc"):
        with pytest.raises(ValueError, match="name"):
            export_torch(get_program("sgd"), name=name)
