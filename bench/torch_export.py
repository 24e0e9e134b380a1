"""The step cost of every exported PyTorch optimizer against `torch.optim.AdamW`.

Run from the repository root: python -m bench.torch_export [--steps 20] [--repeats 3]
(needs torch==2.13.0, a CPU build: pip install -e '.[dev]')

Workload: the parameters of an MLP 784-128-128-10 (118,282 parameters in 6 tensors), float32,
with fixed random gradients; one timed call is `optimizer.step()` (no forward or backward pass).
Optimizers: AdamW (torch's default implementation), the shipped rules and the library's Adam and
Lion exported by `l2o export-rule --format torch`, the shipped learned optimizer and the other
learned architectures at their default configs (meta-parameters as `init_theta` makes them:
the cost does not depend on their values), loaded by the module `l2o export --format torch`
writes. Times are the median step of the best of `--repeats` runs of `--steps` steps, all
optimizers interleaved in one process (so they see the same machine load), with one torch
thread (`--threads`).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import jax
import torch

from l2o.optimizers import torch_learned
from l2o.optimizers.file_format import save_learned
from l2o.optimizers.registry import get_learned
from search.export import export_torch
from search.programs_library import get_program
from search.rule_file import read_rule

PRETRAINED = Path(__file__).resolve().parents[1] / "l2o" / "pretrained"
SIZES = (784, 128, 128, 10)


def mlp_params(seed: int = 0) -> list[torch.Tensor]:
    """Weights and biases of the MLP, each with a fixed random gradient."""
    generator = torch.Generator().manual_seed(seed)
    params = []
    for n_in, n_out in zip(SIZES[:-1], SIZES[1:], strict=True):
        for shape in ((n_out, n_in), (n_out,)):
            p = torch.randn(shape, generator=generator) / n_in**0.5
            p.grad = 1e-2 * torch.randn(shape, generator=generator)
            params.append(p)
    return params


def rule_class(program, directory: Path, name: str):
    path = directory / f"{name.lower()}.py"
    path.write_text(export_torch(program, name=name))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def optimizers(directory: Path) -> dict:
    """Name -> `make(params)` of every optimizer measured."""
    makers = {"AdamW (torch.optim)": lambda ps: torch.optim.AdamW(ps, lr=1e-3)}
    rules = {p.stem: read_rule(p)[0] for p in sorted(PRETRAINED.glob("*.json"))}
    rules |= {"adam": get_program("adam"), "lion": get_program("lion")}
    for stem, program in rules.items():
        cls = rule_class(program, directory, "".join(w.title() for w in stem.split("_")))
        makers[f"rule {stem}"] = lambda ps, cls=cls: cls(ps, lr=1e-3)
    files = {p.stem: p for p in sorted(PRETRAINED.glob("*.safetensors"))}
    for name in ("hyper", "lstm", "learnable_adam", "celo"):
        init_theta, _ = get_learned(name)
        theta = init_theta(jax.random.key(0))
        files[f"{name} (default config)"] = save_learned(
            directory / f"{name}.safetensors", name, {}, theta
        )
    for stem, path in files.items():
        makers[f"learned {stem}"] = lambda ps, path=path: torch_learned.load(path, ps, 1000)
    return makers


def time_steps(optimizer, steps: int) -> float:
    """Median seconds per `optimizer.step()` over `steps` calls."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        makers = optimizers(Path(tmp))
        instances = {}
        for name, make in makers.items():
            instances[name] = make(mlp_params())
            instances[name].step()  # the state is created at the first step
        best = {name: float("inf") for name in instances}
        for _ in range(args.repeats):
            for name, optimizer in instances.items():
                best[name] = min(best[name], time_steps(optimizer, args.steps))
    adamw = best["AdamW (torch.optim)"]
    print(f"torch {torch.__version__}, {args.threads} thread(s), 118,282 parameters")
    print(f"{'optimizer':40s} {'ms/step':>9s} {'x AdamW':>8s}")
    for name, seconds in best.items():
        print(f"{name:40s} {1e3 * seconds:9.3f} {seconds / adamw:8.2f}")


if __name__ == "__main__":
    main()
