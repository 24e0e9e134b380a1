"""What every command builds from its flags, checked before any work: tasks, optimizers and
gradient estimators (bad values become one-line UserErrors), and the versions a result records."""

from __future__ import annotations

import platform
import re
import sys
from importlib import metadata
from pathlib import Path

from l2o.io import UserError


def versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on."""
    out = {"python": platform.python_version()}
    for dist in ("l2o", "jax", "jaxlib", "optax", "dm-haiku", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def build_task(name: str, options: dict):
    """`tasks.get_task`, turning a bad option value into a UserError."""
    from tasks import get_task

    try:
        return get_task(name, **options)
    except (TypeError, ValueError, ArithmeticError, MemoryError, RuntimeError) as e:
        # RuntimeError: an option so large that JAX cannot allocate the task's arrays
        if type(e).__name__ in ("UnknownNameError", "DatasetError"):
            raise
        message = " ".join(str(e).split())[:300]
        raise UserError(f"cannot build task {name!r} with options {options}: {message}") from None


def build_spec_task(spec):
    """The task of an evaluation `TaskSpec` (rescaled if it says so), bad options a UserError."""
    from l2o.evaluation.harness import rescaled

    return rescaled(build_task(spec.name, dict(spec.options)), spec.rescale)


def build_family_tasks(spec) -> dict:
    """The tasks a `FamilySpec` draws, by `label`: `i:NAME` for the i-th draw; configs on the
    host from `fold_in(key(seed), i)`. A bad family option is a UserError."""
    import jax

    from tasks.families import get_family

    try:
        family = get_family(spec.name, **spec.options)
    except (TypeError, ValueError) as e:
        if type(e).__name__ == "UnknownNameError":
            raise
        raise UserError(f"cannot build task family {spec.name!r}: {e}") from None
    out = {}
    for i in range(spec.num_tasks):
        config = family.sample(jax.random.fold_in(jax.random.key(spec.seed), i))
        task = family.task(config)
        out[f"{i}:{task.name}"] = task
    return out


def build_optimizer(name: str, hparams: dict):
    """`baselines.get_optimizer`, turning a bad hyperparameter value into a UserError."""
    from baselines import get_optimizer
    from l2o.cli.config import check_hparams

    try:
        return get_optimizer(name, **check_hparams(name, hparams, f"optimizer {name!r}"))
    except (TypeError, ValueError) as e:
        if type(e).__name__ == "UnknownNameError":
            raise
        raise UserError(f"cannot build optimizer {name!r} with {hparams}: {e}") from None


def build_estimator(name: str, task, options: dict):
    """`baselines.get_estimator`, checked on the task by tracing it once (no compilation)."""
    import jax

    from baselines import get_estimator

    try:
        grad_fn = get_estimator(name, **options)
        key = jax.random.key(0)
        params = jax.eval_shape(task.init, key)
        jax.eval_shape(lambda p, b: grad_fn(task, p, key, b), params,
                       jax.eval_shape(task.sample_batch, key))  # fmt: skip
    except (TypeError, ValueError) as e:
        if type(e).__name__ == "UnknownNameError":
            raise
        raise UserError(f"gradient estimator {name!r}: {' '.join(str(e).split())}") from None
    return grad_fn


def check_step(task, make_optimizer, what: str, grad_fn=None) -> None:
    """Trace (without compiling) one training step of `make_optimizer(key)` on `task`: a value
    the task or optimizer cannot work with fails here, as a UserError, before any work."""
    import jax

    from tasks import backprop, init_state, train_step

    def step(key):
        optimizer = make_optimizer(key)
        state = init_state(task, optimizer, key)
        return train_step(task, optimizer, state, key, total_steps=2, grad_fn=grad_fn or backprop)

    try:
        jax.eval_shape(step, jax.random.key(0))
    except (TypeError, ValueError, ArithmeticError, IndexError) as e:
        raise UserError(f"{what}: {' '.join(str(e).split())[:300]}") from None


def path_exists(path: Path) -> bool:
    """`path.exists()`, True where the path cannot even be checked (check_writable_dir then
    says what is wrong with it)."""
    try:
        return path.expanduser().exists()
    except (OSError, RuntimeError, ValueError):
        return True


def check_resumable(out: Path, run_files: re.Pattern, what: str, start: str) -> None:
    """`--resume` on a folder without checkpoints: UserError, unless `out` holds only
    `run_files` (what a run killed before its first checkpoint leaves); then the run starts at
    `start`, said on stderr."""
    from l2o.cli.run_folder import folder_contents

    if any(not run_files.fullmatch(name) for name in folder_contents(out)):
        raise UserError(f"nothing to resume: {out} holds no {what} checkpoint; start the run "
                        "without --resume")  # fmt: skip
    print(f"l2o: no checkpoint in {out} yet (the run stopped before its first); starting from "
          f"{start}", file=sys.stderr)  # fmt: skip
