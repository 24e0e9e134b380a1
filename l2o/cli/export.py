"""`l2o export` and `l2o export-rule`: a meta-training run's optimizer as one `.safetensors` file;
a rule file as a Python module, Markdown and LaTeX."""

from __future__ import annotations

import json
import keyword
import sys
import zipfile
from pathlib import Path

import jax
import numpy as np

from l2o.cli.builders import build_task, versions
from l2o.cli.config import parse_meta_run
from l2o.io import UserError, check_writable_dir, write_bytes_atomic
from l2o.meta import checkpoint
from l2o.meta.trainer import make_meta_trainer


def run_export_command(run_dir: Path, out: Path | None) -> int:
    """Write the optimizer file of a meta-training run's newest usable checkpoint."""
    from l2o.optimizers.file_format import save_learned
    from l2o.optimizers.registry import get_learned

    paths = checkpoint.list_checkpoints(run_dir)
    if not paths:
        raise UserError(f"{run_dir} holds no meta-training checkpoint")
    skipped = []
    for path in reversed(paths):  # the newest whose config can be read (a torn file is skipped)
        try:
            with np.load(path, allow_pickle=False) as f:
                data = json.loads(bytes(f["__metadata__"]).decode())["config"]
            break
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
            skipped.append(f"{path.name} ({type(e).__name__})")
    else:
        raise UserError(f"{run_dir}: no checkpoint holds a readable run config: {skipped}")
    run = parse_meta_run(data, f"{path} config")
    tasks = [build_task(spec.name, dict(spec.options)) for spec in run.tasks]
    init_theta, transform = get_learned(run.optimizer, **run.optimizer_config)
    trainer = make_meta_trainer(
        tasks, init_theta, transform, run.objective, run.estimator, run.outer
    )
    try:
        state, meta, _ = checkpoint.load_latest(run_dir, trainer.init())
    except checkpoint.CheckpointError as e:
        raise UserError(str(e)) from None
    path = save_learned(
        out or Path(run_dir) / "optimizer.safetensors",
        run.optimizer,
        run.optimizer_config,
        jax.device_get(state.theta),
        {"config": data, "outer_steps": meta["step"], "versions": versions()},
    )
    print(f"exported theta of outer step {meta['step']} to {path}")
    return 0


TORCH_MODULE_IMPORTS = ("hashlib", "json", "math", "os", "struct", "torch")
"""What `l2o/optimizers/torch_learned.py` imports: names its copy must not take."""


def run_export_torch_command(path: Path, out: Path | None, name: str) -> int:
    """Write `out/NAME.py`, the PyTorch module of the learned optimizers (torch only), and
    `out/NAME.safetensors`, a copy of the checked optimizer file it reads."""
    from importlib import resources

    from l2o.optimizers.file_format import OptimizerFileError, decode, load_learned

    if not name.isidentifier() or keyword.iskeyword(name):
        raise UserError(f"--name {name!r:.60} is not a Python identifier")
    if name in TORCH_MODULE_IMPORTS:
        raise UserError(f"--name {name} would shadow the module {name} that the module imports")
    if Path(path).is_dir():
        raise UserError(f"{path} is a directory: --format torch exports an optimizer file")
    try:
        load_learned(path)  # every check of the file format (its size before it is read)
        data = Path(path).read_bytes()
        decode(data)  # the bytes copied are the bytes checked
    except OptimizerFileError as e:
        raise UserError(str(e)) from None
    except ValueError as e:
        raise UserError(f"invalid learned optimizer {path}: {' '.join(str(e).split())}") from None
    source = resources.files("l2o.optimizers").joinpath("torch_learned.py").read_bytes()
    out = check_writable_dir(out or Path(path).parent)
    written = [write_bytes_atomic(out / f"{name}.py", source)]
    if (out / f"{name}.safetensors").resolve() != Path(path).resolve():
        written.append(write_bytes_atomic(out / f"{name}.safetensors", data))
    print(f"wrote {', '.join(map(str, written))}")
    return 0


def _ratio_sentence(rule_path: Path, metadata: dict) -> str:
    """The docstring sentence on the rule's learning rate relative to AdamW's ("" if unknown)."""
    from search.rule_file import ADAMW_RATIO, adamw_ratio

    try:
        median = adamw_ratio(rule_path, metadata)
    except ValueError:
        return ""
    entry = metadata[ADAMW_RATIO]
    spread = ""
    if all(isinstance(entry.get(k), int | float) for k in ("min", "max", "tasks_inside_grid")):
        spread = (f" (median over {entry['tasks_inside_grid']} tasks, range {entry['min']:.3g} to "
                  f"{entry['max']:.3g})")  # fmt: skip
    return (f" Its tuned learning rate is {median:.3g} times AdamW's{spread}: lr = {median:.3g} "
            "adamw_lr.")  # fmt: skip


def run_export_rule_command(
    rule_path: Path, out: Path, name: str, fmt: str = "optax", adamw_lr: float | None = None
) -> int:
    """Write `out/NAME.py` (an optax module), `NAME.md` and `NAME.tex` of a rule file; with
    `fmt` "torch", only `out/NAME.py`, a PyTorch module defining the optimizer class `Name`;
    "markdown" or "latex", only `NAME.md` or `NAME.tex`. The modules' default learning rate is
    the file's, or with `adamw_lr` the file's ratio to AdamW's times it (`search.load_rule`).

    Every format prints the rule's formula (the modules in their docstrings): a rule whose
    formula does not give its updates over `search.formula.STEPS` steps of random inputs is
    refused, and nothing is written. A rule whose update does not depend on its learning rate
    is written with a warning on stderr."""
    from search.export import export_latex, export_markdown, export_python, export_torch
    from search.formula import check_formula
    from search.learning_rate import ignores_learning_rate
    from search.rule_file import adamw_ratio, read_rule

    if not name.isidentifier() or keyword.iskeyword(name):
        raise UserError(f"--name {name!r:.60} is not a Python identifier")
    try:
        program, metadata = read_rule(rule_path)
    except ValueError as e:
        raise UserError(str(e)) from None
    lr = metadata.get("learning_rate")
    lr = float(lr) if isinstance(lr, int | float) and not isinstance(lr, bool) else None
    if adamw_lr is not None:
        try:
            lr = adamw_ratio(rule_path, metadata) * adamw_lr
        except ValueError as e:
            raise UserError(f"--adamw-lr: {' '.join(str(e).split())}") from None
    description = "An evolved update rule." + _ratio_sentence(rule_path, metadata)
    try:
        latex, markdown = export_latex(program), export_markdown(program)
        if fmt == "torch":
            if name in ("torch", "math"):
                raise ValueError(f"--name {name} would shadow the module {name} it imports")
            camel = "".join(part[:1].upper() + part[1:] for part in name.split("_"))
            code = export_torch(program, name=camel, learning_rate=lr, description=description)
            texts = {f"{name}.py": code}
        elif fmt == "optax":
            code = export_python(program, name=name, learning_rate=lr, description=description)
            texts = {f"{name}.py": code, f"{name}.md": markdown, f"{name}.tex": latex}
        else:
            texts = {f"{name}.md": markdown} if fmt == "markdown" else {f"{name}.tex": latex}
        report = check_formula(program, latex=latex, markdown=markdown)
    except ValueError as e:
        raise UserError(f"cannot export {rule_path}: {' '.join(str(e).split())}") from None
    if not report.ok:
        raise UserError(
            f"cannot export {rule_path}: its printed formula is not the rule: {report.summary()}; "
            "nothing written"
        )
    if ignores_learning_rate([program], op_by_op=True)[0]:
        print(f"l2o: warning: {rule_path}: the rule's update does not depend on its learning rate "
              "(its step size is fixed by its constants; tuning lr chooses nothing)",
              file=sys.stderr)  # fmt: skip
    out = check_writable_dir(out)
    for filename, text in texts.items():
        write_bytes_atomic(out / filename, text.encode())
    print(f"wrote {', '.join(str(out / f) for f in texts)}")
    return 0
