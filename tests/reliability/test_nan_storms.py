"""NaN storms: runs where part of the population diverges or produces NaN never crash and never
poison the outer loop (theta and the meta-loss stay finite, the best value found is finite), and
every command records how many runs were penalized."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2o.cli.main import main
from l2o.meta.estimators import EstimatorConfig
from l2o.meta.objective import MAX_META_LOSS, MetaObjective
from l2o.meta.trainer import make_meta_trainer
from l2o.meta.types import OuterConfig
from l2o.optimizers.registry import get_learned
from search.objective import PENALTY
from tasks import Task

NAN_RATE = 0.1


def poisoned_quadratic(dim: int = 4) -> Task:
    """A quadratic whose loss (and so its gradient) is NaN on a random tenth of the steps: the
    inner runs that draw such a step diverge for good, the others train normally."""

    def init(key):
        return {"x": jax.random.normal(key, (dim,))}

    def loss(params, key, batch):
        value = 0.5 * jnp.sum(jnp.arange(1.0, dim + 1.0) * params["x"] ** 2)
        return jnp.where(jax.random.bernoulli(key, NAN_RATE), jnp.nan, value), {}

    return Task(name="poisoned_quadratic", init=init, loss=loss, sampler=lambda *_: ())


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["pes", "open_es"])
def test_nan_gradients_in_part_of_the_population_do_not_poison_theta(estimator):
    init_theta, transform = get_learned("learnable_adam", learning_rate=0.01)
    trainer = make_meta_trainer(
        [poisoned_quadratic()], init_theta, transform,
        MetaObjective(horizon=20, truncation=5),
        EstimatorConfig(estimator, num_tasks=4, num_pairs=2, sigma=0.05, population_size=8),
        OuterConfig(steps=6, learning_rate=0.05),
    )  # fmt: skip
    state = trainer.init()
    penalized = []
    for _ in range(6):
        state, metrics = trainer.step(state)
        penalized.append(float(metrics["penalized"]))
        assert np.isfinite(float(metrics["meta_loss"]))
        assert float(metrics["meta_loss"]) <= MAX_META_LOSS
    for leaf in jax.tree.leaves(state.theta):
        assert np.all(np.isfinite(np.asarray(leaf)))
    assert max(penalized) > 0, penalized  # some runs were hit and penalized ...
    assert min(penalized) < 1, penalized  # ... not all of them


@pytest.mark.slow
def test_meta_train_with_a_diverging_population_reports_the_penalized_share(tmp_path, capsys):
    config = tmp_path / "meta.yaml"
    # An Adam step of e^(+-1) * 1.0 on a quadratic of curvature up to 100: most members diverge.
    config.write_text(
        "optimizer: {name: learnable_adam, config: {learning_rate: 1.0}}\n"
        "tasks: [{name: quadratic_k100, options: {dim: 4}}]\n"
        "estimator: {name: open_es, population_size: 8, num_tasks: 2, sigma: 1.0}\n"
        "objective: {horizon: 20, truncation: 5}\n"
        "outer: {steps: 4, learning_rate: 0.05}\n"
        "checkpoint_every: 2\neval_every: 2\n"
    )
    out = tmp_path / "meta"
    assert main(["meta-train", "--config", str(config), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    rows = json.loads((out / "meta_metrics.json").read_text())
    assert results["mean_penalized_fraction"] > 0
    assert all(0 <= r["penalized"] <= 1 and np.isfinite(r["meta_loss"]) for r in rows)
    import l2o

    _, info = l2o.optimizers.file_format.load_learned(out / "optimizer.safetensors")  # finite theta
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(info["theta"]))


@pytest.mark.slow
def test_evaluate_with_huge_learning_rates_counts_the_diverged_runs(tmp_path, capsys):
    out = tmp_path / "evaluate"
    argv = ["evaluate", "--tasks", "quadratic_k100", "--optimizers", "sgd,adam", "--steps", "20",
            "--seeds", "2", "--lr-num", "3", "--lr-low", "1e-2", "--lr-high", "1e6",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    sgd = results["tasks"]["quadratic_k100"]["sgd"]
    assert sgd["diverged_runs"] == 4  # lr 10 and 1e6 diverge on both seeds, lr 0.01 does not
    assert sgd["learning_rate"] == pytest.approx(1e-2)  # the run that did not diverge is chosen
    assert all(np.isfinite(x) for x in np.ravel(sgd["train_loss"]))
    assert "| quadratic_k100 | sgd |" in (out / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["random", "cmaes", "tpe"])
def test_tuning_over_diverging_learning_rates_records_the_penalized_trials(tmp_path, method):
    space = tmp_path / "space.yaml"
    space.write_text("learning_rate: {type: log_uniform, low: 1.0e-3, high: 1.0e+3}\n")
    out = tmp_path / "study"
    argv = ["tune", "--optimizer", "sgd", "--task", "quadratic_k100", "--space", str(space),
            "--method", method, "--trials", "8", "--steps", "20", "--reports", "2",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    study = json.loads((out / "study.json").read_text())
    values = [t["value"] for t in study["trials"]]
    assert study["penalized"] == sum(v >= PENALTY for v in values) > 0
    assert np.isfinite(study["best_value"]) and study["best_value"] < PENALTY
    assert study["best_params"]["learning_rate"] < 0.1  # a stable one
