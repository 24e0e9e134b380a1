"""`l2o calibrate-rule`, and the end of `l2o evolve`: a rule's learning rate relative to AdamW's,
measured on the proxy and funnel tasks of an evolve config (`search.lr_transfer`), stored in the
rule file with the default learning rate it gives."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from l2o.cli.config import load_yaml
from l2o.cli.evolve_config import EvolveRun, parse_evolve_run
from l2o.cli.progress import progress_bar
from l2o.cli.resources import Call, check_memory, run_bytes, run_values
from l2o.cli.stopping import check
from l2o.io import UserError, check_writable_dir


def transfer_calls(run: EvolveRun, rule) -> list[Call]:
    """The calls of the measurement (`l2o.cli.resources`): per proxy and funnel task, the
    transfer grid x seeds, of the `rule` (an optax transform) or AdamW, whichever needs more."""
    from baselines import adamw

    runs = len(run.transfer_grid)
    return [
        Call(max(run_bytes(task, [adamw(), rule])), runs * len(suite.seeds),
             run_values(suite.num_steps, 0), 0)
        for suite in (run.proxy, run.funnel) for task in suite.tasks
    ]  # fmt: skip


def measure_transfer(program, run: EvolveRun, *, show: bool = True) -> dict[str, Any]:
    """`search.lr_transfer.lr_ratio` of `program` on the run's proxy and funnel suites over its
    transfer grid, with a progress bar (if `show`); stops between tasks on Ctrl-C."""
    import numpy as np
    from rich.progress import Progress

    from search.lr_transfer import lr_ratio

    suites = {"proxy": run.proxy, "funnel": run.funnel}
    total = sum(len(suite.tasks) for suite in suites.values())
    with progress_bar() if show else Progress(disable=True) as bar:
        job = bar.add_task("learning rate vs AdamW", total=total)

        def on_task(label: str) -> None:
            bar.update(job, advance=1, description=f"learning rate vs AdamW ({label})")
            check()

        ratio = lr_ratio(program, suites, np.asarray(run.transfer_grid), on_task=on_task)
    edge = [f"{row['suite']}/{row['task']}" for row in ratio["tasks"] if row["at_edge"]]
    if edge and show:
        print(f"l2o: warning: the rule's or AdamW's tuned learning rate lies at an edge of the "
              f"lr_transfer grid on {', '.join(edge)}: "
              + ("left out of the ratio's median" if ratio["tasks_inside_grid"] else
                 "the ratio is a bound; widen the grid"), file=sys.stderr)  # fmt: skip
    return ratio


def serves(ratio: dict[str, Any]) -> str:
    """How many of the measured tasks the default learning rate serves, as a clause."""
    default = ratio["default"]
    return (f", within {default['tolerance']:.0%} of the tuned loss on "
            f"{default['within_tolerance']} of {default['tasks']} tasks")  # fmt: skip


def calibrated_metadata(metadata: dict[str, Any], ratio: dict[str, Any]) -> dict[str, Any]:
    """`metadata` with the measured ratio and the default learning rate it gives (the one grid
    point within 10% of the tuned loss on the most tasks: `search.lr_transfer`)."""
    from search.lr_transfer import calibrated_learning_rate
    from search.rule_file import ADAMW_RATIO

    return {**metadata, "learning_rate": calibrated_learning_rate(ratio), ADAMW_RATIO: ratio}


def run_calibrate_rule_command(
    rule_path: Path,
    config_path: Path | None,
    out: Path,
    *,
    overwrite: bool = False,
    max_memory: int | None = None,
) -> int:
    """Write `out`: the rule file with its learning rate relative to AdamW's, measured on the
    proxy and funnel tasks of `config_path` (default: the evolve config stored in the rule),
    and the default learning rate it gives. The program is unchanged; the file's sha256 is new.
    An existing `out` is refused unless `overwrite`."""
    from search.interpreter import program_transform
    from search.rule_file import read_rule, save_rule

    try:
        program, metadata = read_rule(rule_path)
    except ValueError as e:
        raise UserError(str(e)) from None
    if config_path is not None:
        data, where = load_yaml(config_path), str(config_path)
    elif isinstance(metadata.get("config"), dict):
        data, where = metadata["config"], f"{rule_path} (its metadata's config)"
    else:
        raise UserError(f"{rule_path} stores no evolve config: pass --config")
    run = parse_evolve_run(data, where)
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give the rule file to write")
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists: pass --overwrite to replace it, or choose another --out")
    calls = transfer_calls(run, program_transform(program, 1e-3))
    check_memory(calls, max_memory, "lr_transfer.per_decade, seeds or steps")
    check_writable_dir(out.parent)
    ratio = measure_transfer(program, run)
    new = calibrated_metadata(metadata, ratio)
    try:
        save_rule(out, program, new)
    except ValueError as e:
        raise UserError(f"{out} not written: {e}") from None
    print(
        f"{rule_path}: learning rate {ratio['median']:.3g}x AdamW's (median of "
        f"{ratio['tasks_inside_grid']} tasks; range {ratio['min']:.3g}-{ratio['max']:.3g}); "
        f"default learning rate {new['learning_rate']:.3g}{serves(ratio)} (AdamW's median tuned "
        f"{ratio['reference_adamw_lr']:.3g}) written to {out}"
    )
    return 0
