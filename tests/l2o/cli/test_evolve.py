"""`l2o evolve` and `l2o export-rule`: exact resume after SIGKILL (and a torn checkpoint), the
outputs, bad configs and bad rule files; a formula that is not the rule is refused, a rule that
ignores its learning rate is flagged."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml

import search
from l2o.cli.evolve import save_checkpoint
from l2o.cli.main import main
from search import export
from search.interpreter import program_transform
from search.program import NUM_FIXED, G, Instruction, Program
from search.programs_library import get_program
from search.rule_file import read_rule, save_rule

REPO = Path(__file__).resolve().parents[3]
TINY = REPO / "configs" / "evolve_tiny.yaml"
GENERATIONS = 60  # long enough that the kill lands mid-run


def _command(config, out, *extra):
    return [sys.executable, "-m", "l2o.cli", "evolve", "--config", str(config), "--out", str(out),
            "--generations", str(GENERATIONS), *extra]  # fmt: skip


def _checkpoints(directory: Path) -> list[Path]:
    return sorted(directory.glob("evolve_*.json"))


@pytest.mark.slow
def test_resume_after_sigkill_and_a_torn_checkpoint_is_bit_identical(tmp_path, capsys):
    # The compilation cache lets the later processes skip compiling (the same executables).
    env = {**os.environ, "PYTHONHASHSEED": "0", "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jit"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}  # fmt: skip
    whole = tmp_path / "whole"
    subprocess.run(_command(TINY, whole), check=True, capture_output=True, env=env, timeout=600)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_command(TINY, killed), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)  # fmt: skip
    deadline = time.time() + 300
    while len(_checkpoints(killed)) < 2 and proc.poll() is None:
        assert time.time() < deadline, "no checkpoints appeared"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "best_rule.json").exists(), "the run finished before the kill"
    newest = _checkpoints(killed)[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a torn file

    # Refused, before any work (run in this process: no signal involved).
    assert main(_command(TINY, killed)[3:]) == 2 and "--resume" in capsys.readouterr().err
    changed = tmp_path / "changed.yaml"
    changed.write_text(TINY.read_text().replace("seed: 0", "seed: 1"))
    assert main(_command(changed, killed, "--resume")[3:]) == 2
    assert "differs" in capsys.readouterr().err
    resumed = subprocess.run(_command(TINY, killed, "--resume"), capture_output=True, text=True,
                             env=env, timeout=600, check=True)  # fmt: skip
    assert "skipped a checkpoint" in resumed.stdout and "checksum" in resumed.stdout

    assert (killed / "best_rule.json").read_bytes() == (whole / "best_rule.json").read_bytes()
    a = json.loads((whole / "evolution.json").read_text())
    b = json.loads((killed / "evolution.json").read_text())
    for key in ("history", "best", "hall_of_fame", "funnel", "counters", "final"):
        assert a[key] == b[key], key
    assert len(a["history"]) == GENERATIONS + 1
    assert [row["generation"] for row in b["timing"]] == list(range(GENERATIONS + 1))

    # The outputs: a loadable rule better than the SGD warm start, and TensorBoard events.
    program, metadata = read_rule(whole / "best_rule.json")
    assert metadata["passed_funnel"] and metadata["fitness"] < -0.5
    assert metadata["funnel"]["fitness"] <= 0 and set(metadata["rediscovery"]) >= {"sgd", "lion"}
    assert metadata["config"]["population_size"] == 24 and metadata["seed"] == 0
    assert metadata["lr_window"] == metadata["config"].get("lr_window", 0)
    ratio = metadata["adamw_lr_ratio"]  # measured on the proxy and funnel tasks
    assert [row["suite"] for row in ratio["tasks"]] == ["proxy", "funnel"]
    default = ratio["default"]  # the grid point within 10% of the tuned loss on the most tasks
    assert metadata["learning_rate"] == default["learning_rate"]
    assert default["tasks"] == 2 and 1 <= default["within_tolerance"] <= 2
    assert program == program.without_dead_code()
    search.load_rule(whole / "best_rule.json")
    assert list(whole.glob("events.out.tfevents.*"))
    history = a["history"]
    assert history[-1]["best_fitness"] < history[0]["best_fitness"]
    assert {"invalid_rate", "cache_hit_rate", "penalized", "median_fitness"} <= set(history[1])
    assert "programs_per_second" in a["timing"][1] and "programs_per_second" not in history[1]


HEAD = "warm_starts: [sgd]\nproxy: {tasks: [rosenbrock], steps: 5}\n"
BAD = {
    HEAD + "populaton_size: 8\n": "populaton_size",
    "proxy: {tasks: [nope]}\n": "unknown task",
    "warm_starts: [adagrad]\nproxy: {tasks: [rosenbrock]}\n": "unknown program",
    HEAD + "population_size: banana\n": "population_size",
    HEAD + "batch_size: 64\n": "batch_size",
    HEAD + "mutation: {max_state: 9}\n": "max_state",
    HEAD + "mutation: {ops: [add, nope]}\n": "unknown ops",
    HEAD + "mutation: {colour: red}\n": "colour",
    "warm_starts: [adamw]\nproxy: {tasks: [rosenbrock]}\nmutation: {max_instructions: 8}\n": (
        "max_instructions"
    ),
    HEAD + "funnel: {every: 5, top: 3}\n": "top",
    HEAD + "simplify: maybe\n": "simplify",
    "proxy: {tasks: [rosenbrock], lr_grid: {low: 1, high: 0.1}}\n": "low must be below high",
    "proxy: {tasks: []}\n": "non-empty",
    "warm_starts: [{name: adam, hparams: {b3: 1}}]\nproxy: {tasks: [rosenbrock]}\n": "b3",
    "proxy: {tasks: [{name: digits_mlp, options: {width: 3}}]}\n": "width",
    "warm_starts: sgd\nproxy: {tasks: [rosenbrock]}\n": "must be a list",
    "proxy: {tasks: [rosenbrock], seeds: 5000}\n": "seeds",
    HEAD + "seed: -1\n": "seed",
    HEAD + "lr_window: -1\n": "lr_window",
}


@pytest.mark.parametrize("text, message", list(BAD.items()))
def test_bad_evolve_configs_exit_2(tmp_path, capsys, text, message):
    config = tmp_path / "evolve.yaml"
    config.write_text(text)
    code = main(["evolve", "--config", str(config), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def _import(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["sgd", "lion", "adamw"])
def test_export_rule_writes_three_files_whose_module_matches_the_interpreter(tmp_path, name):
    program = get_program(name)
    rule = tmp_path / "rule.json"
    save_rule(rule, program, {"learning_rate": 0.01, "fitness": -0.5})
    out = tmp_path / "exported"
    assert main(["export-rule", str(rule), "--out", str(out), "--name", f"evolved_{name}"]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"evolved_{name}.{ext}" for ext in ("md", "py", "tex")]
    assert (out / f"evolved_{name}.md").read_text().strip()
    assert (out / f"evolved_{name}.tex").read_text().strip()

    module = _import(out / f"evolved_{name}.py")
    exported = getattr(module, f"evolved_{name}")(0.01)
    reference = program_transform(program, 0.01)
    params = {"w": jnp.array([[0.5, -1.0], [2.0, 0.1]]), "b": jnp.array([0.3, -0.2])}
    states = [exported.init(params), reference.init(params)]
    for step in range(4):
        key = jax.random.key(step)
        grads = jax.tree.map(lambda p, k=key: jax.random.normal(k, p.shape), params)
        outs = []
        for i, transform in enumerate((exported, reference)):
            updates, states[i] = transform.update(grads, states[i], params)
            outs.append(updates)
        for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1]), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8)
        params = optax.apply_updates(params, outs[1])


def test_export_rule_as_torch_writes_one_module_whose_optimizer_trains(tmp_path):
    torch = pytest.importorskip("torch")
    rule = tmp_path / "rule.json"
    save_rule(rule, get_program("adam"), {"learning_rate": 0.05})
    out = tmp_path / "exported"
    args = ["export-rule", str(rule), "--out", str(out), "--name", "my_adam", "--format", "torch"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["my_adam.py"]
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    optimizer = _import(out / "my_adam.py").MyAdam([w])
    assert optimizer.defaults["lr"] == 0.05
    for _ in range(60):
        optimizer.zero_grad()
        torch.sum(w * w).backward()
        optimizer.step()
    assert float(torch.sum(w.detach() ** 2)) < 0.1


@pytest.mark.parametrize("fmt, export_of", [("markdown", "export_markdown"),
                                            ("latex", "export_latex")])  # fmt: skip
def test_export_rule_as_markdown_or_latex_writes_that_file(tmp_path, capsys, fmt, export_of):
    program = get_program("adam")
    save_rule(tmp_path / "rule.json", program, {"learning_rate": 0.01})
    out = tmp_path / "exported"
    assert main(["export-rule", str(tmp_path / "rule.json"), "--out", str(out), "--name", "adam",
                 "--format", fmt]) == 0  # fmt: skip
    (written,) = out.iterdir()
    assert written.name == f"adam.{'md' if fmt == 'markdown' else 'tex'}"
    assert written.read_text() == getattr(export, export_of)(program)
    assert capsys.readouterr().err == ""


SHIPPED_RULE = REPO / "l2o" / "pretrained" / "evolved_adamw.json"


@pytest.mark.parametrize("fmt", ["optax", "latex"])
def test_export_rule_refuses_a_formula_that_is_not_the_rule(tmp_path, capsys, monkeypatch, fmt):
    """The shipped rule's `log(0.5195^t + 1e-12)` printed without its epsilon is `t log 0.5195`,
    right for the first ~30 steps only: refused, and nothing written."""
    monkeypatch.setitem(export.LATEX, "log_abs", r"\log(\lvert @0 \rvert)")
    out = tmp_path / "out"
    code = main(["export-rule", str(SHIPPED_RULE), "--out", str(out), "--format", fmt])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "printed formula is not the rule" in err and "LaTeX" in err and "from step" in err
    assert not out.exists()


def test_export_rule_warns_when_the_update_ignores_the_learning_rate(tmp_path, capsys):
    r = NUM_FIXED + 1
    fixed = Program((Instruction("scale_c", r, (G,), 0.01),), r)  # u = 0.01 g
    for program, name in ((fixed, "fixed"), (get_program("sgd"), "sgd")):
        save_rule(tmp_path / f"{name}.json", program, {"learning_rate": 0.01})
        args = ["export-rule", str(tmp_path / f"{name}.json"), "--out", str(tmp_path / name)]
        assert main([*args, "--format", "markdown"]) == 0
        err = capsys.readouterr().err
        assert (tmp_path / name / "discovered.md").exists()
        if name == "fixed":
            assert err.startswith("l2o: warning:") and err.count("\n") == 1, err
            assert "does not depend on its learning rate" in err
        else:
            assert err == ""


@pytest.mark.parametrize(
    "text, args, message",
    [("{not json", [], "not valid JSON"),
     ('{"format": "l2o-rule", "version": 1, "program": {"instructions": []}}', [], "lacks"),
     (None, ["--name", "not-a-name"], "identifier"), (None, ["--name", "optax"], "optax"),
     (None, ["--name", "torch", "--format", "torch"], "shadow")],
)  # fmt: skip
def test_bad_rule_files_and_names_exit_2(tmp_path, capsys, text, args, message):
    rule = tmp_path / "rule.json"
    if text is None:
        save_rule(rule, get_program("sgd"))
    else:
        rule.write_text(text)
    code = main(["export-rule", str(rule), "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def _stored_run(out: Path, config: dict | None) -> None:
    """A checkpoint of generation 3 whose payload records `config` (None: as an older l2o wrote
    it, with only a digest of it). Its state is never read: the config is checked first."""
    payload = {"config_digest": "0" * 64, "state": {}, "history": [], "timing": []}
    if config is not None:
        payload["config"] = config
    out.mkdir()
    save_checkpoint(out, 3, payload)


def _edited(tmp_path, edit) -> Path:
    data = yaml.safe_load(TINY.read_text())
    edit(data)
    path = tmp_path / "evolve.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


EVOLVE_CHANGES = {
    "seed: 0 -> 1": lambda d: d.update(seed=1),
    "population_size: 24 -> 16": lambda d: d.update(population_size=16),
    "proxy.steps: 20 -> 10": lambda d: d["proxy"].update(steps=10),
    "proxy.tasks.0.options.dim: 8 -> 4": lambda d: d["proxy"]["tasks"][0]["options"].update(dim=4),
    'warm_starts.0: "sgd" -> "lion"': lambda d: d.update(warm_starts=["lion"]),
    "funnel.top_k: 8 -> unset": lambda d: d["funnel"].pop("top_k"),
}


@pytest.mark.parametrize("change", sorted(EVOLVE_CHANGES))
def test_a_resume_with_a_changed_config_is_refused_naming_the_keys(tmp_path, capsys, change):
    out = tmp_path / "out"
    _stored_run(out, yaml.safe_load(TINY.read_text()))
    before = sorted(p.name for p in out.iterdir())
    config = _edited(tmp_path, EVOLVE_CHANGES[change])
    code = main(["evolve", "--config", str(config), "--out", str(out), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "differs" in err, err
    assert change in err and "only --generations may change" in err, err
    assert sorted(p.name for p in out.iterdir()) == before


def test_the_seed_flag_replaces_the_configs_and_a_resume_must_repeat_it(tmp_path, capsys):
    out = tmp_path / "out"
    _stored_run(out, {**yaml.safe_load(TINY.read_text()), "seed": 7})
    code = main(["evolve", "--config", str(TINY), "--out", str(out), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "seed: 7 -> 0" in err, err
    code = main(["evolve", "--config", str(TINY), "--out", str(out), "--resume", "--seed", "8"])
    err = capsys.readouterr().err
    assert code == 2 and "seed: 7 -> 8" in err, err


def test_a_changed_config_against_an_older_checkpoint_is_refused(tmp_path, capsys):
    _stored_run(tmp_path / "out", None)  # its digest matches no config
    code = main(["evolve", "--config", str(TINY), "--out", str(tmp_path / "out"), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "differs" in err and "older l2o" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("where", ["missing folder", "foreign folder"])
def test_resume_with_nothing_to_resume_exits_2(tmp_path, capsys, where):
    out = tmp_path / "out"
    if where == "foreign folder":  # e.g. a meta-training run
        out.mkdir()
        (out / "ckpt_00000002.npz").write_bytes(b"")
    code = main(["evolve", "--config", str(TINY), "--out", str(out), "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "nothing to resume" in err and err.count("\n") == 1, err
    if where == "foreign folder":
        assert sorted(p.name for p in out.iterdir()) == ["ckpt_00000002.npz"]
    else:
        assert not out.exists()  # a missing folder is not made
