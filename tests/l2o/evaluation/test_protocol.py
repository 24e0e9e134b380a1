"""The AlgoPerf-style protocol: trial optimizers, target setting, time to target and both tracks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2o.evaluation import protocol
from tasks import get_task


def test_a_trial_warms_up_then_cosine_decays_like_optax():
    make = protocol.trial_optimizer("adamw", 100)
    trial = {"learning_rate": 0.1, "b1": 0.8, "weight_decay": 0.01, "warmup": 0.1}
    reference = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 0.1, 10, 100), 0.8,
                            weight_decay=0.01)  # fmt: skip
    params = {"w": jnp.linspace(-1.0, 1.0, 5)}
    ours_state, ref_state = make(trial).init(params), reference.init(params)
    for t in range(30):
        grads = {"w": jnp.sin(params["w"] * (t + 1))}
        ours, ours_state = make(trial).update(grads, ours_state, params)
        ref, ref_state = reference.update(grads, ref_state, params)
        np.testing.assert_allclose(ours["w"], ref["w"], rtol=2e-5, atol=1e-8)
        params = optax.apply_updates(params, ours)


def fake_runs(valid_PxSxE: np.ndarray, every: int = 10) -> dict[str, np.ndarray]:
    steps = np.arange(valid_PxSxE.shape[-1]) * every
    return {"valid_loss": valid_PxSxE, "eval_step": np.broadcast_to(steps, valid_PxSxE.shape)}


def test_steps_to_target_is_the_first_evaluation_at_or_below_it():
    valid = np.array([[[3.0, 2.0, 1.0, 0.5]], [[3.0, 3.0, 3.0, 3.0]], [[3.0, 1.0, np.nan, 0.9]]])
    np.testing.assert_array_equal(
        protocol.steps_to_target(fake_runs(valid), 1.0), [[20.0], [np.inf], [10.0]]
    )


def test_tracks_score_the_fastest_trial_per_study_and_the_median_over_studies(monkeypatch):
    """15 trials, the i-th reaching the target at evaluation i % 4 + 1 or never (i % 4 == 3)."""
    calls = []

    def sweep(task, make, hparams, seeds, num_steps, eval_every):
        num = len(next(iter(hparams.values())))
        calls.append((num, len(seeds)))
        valid = np.full((num, len(seeds), 5), 2.0)
        for i in range(num):
            if i % 4 != 3:
                valid[i, :, i % 4 + 1 :] = 0.5
        return fake_runs(valid)

    monkeypatch.setattr(protocol, "population_sweep", sweep)
    space = protocol.default_space("sgd")
    out = protocol.external_tuning(None, None, space, 1.0, 40, 10, num_trials=5, num_studies=3)
    # Studies hold trials 0-4, 5-9, 10-14; their fastest hits: trial 0 (10), 8 (10), 12 (10).
    assert out["per_study"] == [10.0, 10.0, 10.0] and out["steps"] == 10.0
    assert calls == [(15, 1)] and len(out["trials"]) == 3
    assert all(len(study) == 5 for study in out["trials"])
    defaults = {"learning_rate": 0.1}
    # Self-tuning of one trial (i = 0 hits at 10) on 3 seeds.
    assert protocol.self_tuning(None, None, defaults, 1.0, 40, 10)["steps"] == 10.0
    missed = protocol.self_tuning(None, None, defaults, 0.1, 40, 10)
    assert missed["steps"] == np.inf and missed["per_seed"] == [np.inf] * 3


@pytest.mark.slow
def test_targets_on_a_quadratic_are_reached_by_their_setter_and_reproducible():
    task = get_task("quadratic_k100", dim=5)
    setters = {"adamw": protocol.TARGET_SETTERS["adamw"],
               "momentum": protocol.TARGET_SETTERS["momentum"]}  # fmt: skip
    kwargs = {"num_trials": 4, "seeds": (0, 1, 2), "setters": setters}
    out = protocol.set_target(task, 60, 10, **kwargs)
    scores = {name: entry["score"] for name, entry in out["by_setter"].items()}
    assert out["target"] == min(scores.values()) and out["setter"] == min(scores, key=scores.get)
    assert np.isfinite(out["target"]) and out["target"] >= 0.0
    assert protocol.set_target(task, 60, 10, **kwargs) == out
    # The setter's own best trial reaches the target on its median seed, by construction.
    setter = out["by_setter"][out["setter"]]
    make = protocol.trial_optimizer(out["setter"], 60)
    result = protocol.self_tuning(task, make, setter["trial"], out["target"], 60, 10)
    assert np.isfinite(result["steps"]) and result["steps"] <= 60
    assert jax.numpy.isfinite(jnp.asarray(setter["per_seed"])).all()


def test_external_tuning_reports_each_studys_best_trial_and_its_curve(monkeypatch):
    """Study 0 has a trial that reaches the target (trial 1); study 1 none: its best is the
    trial with the lowest validation loss (trial 2 of it)."""

    def sweep(task, make, hparams, seeds, num_steps, eval_every):
        valid = np.full((6, 1, 4), 3.0)
        valid[1, 0, 2:] = 0.5  # study 0, trial 1: at step 20
        valid[5, 0, 3] = 1.5  # study 1, trial 2: lowest, never at the target
        return fake_runs(valid)

    monkeypatch.setattr(protocol, "population_sweep", sweep)
    out = protocol.external_tuning(None, None, protocol.default_space("sgd"), 1.0, 30, 10,
                                   num_trials=3, num_studies=2)  # fmt: skip
    assert out["per_study"] == [20.0, np.inf] and out["steps"] == np.inf  # median of 2: inf
    assert out["best_trials"] == [out["trials"][0][1], out["trials"][1][2]]
    np.testing.assert_array_equal(out["valid_loss"], [[3.0, 3.0, 0.5, 0.5], [3.0, 3.0, 3.0, 1.5]])


def test_rules_and_learned_optimizers_take_part_as_their_files_allow():
    rule = "l2o/pretrained/evolved_adamw.json"
    spec = protocol.OptimizerSpec("evolved_adamw", file=rule)
    default = protocol.default_trial(spec)["learning_rate"]
    space = protocol.default_space(spec)
    trials = protocol.quasirandom_trials(space, 64, 0)
    lrs = np.array([t["learning_rate"] for t in trials])
    assert lrs.min() >= default / 100 * (1 - 1e-6) and lrs.max() <= default * 10 * (1 + 1e-6)
    assert lrs.max() / lrs.min() > 100  # the whole three decades are searched
    # A rule trial is the rule at the trial's warmed-up, cosine-decayed learning rate.
    from search.interpreter import program_transform
    from search.rule_file import read_rule

    trial = {"learning_rate": 0.01, "warmup": 0.1}
    ours = protocol.trial_optimizer(spec, 100)(trial)
    reference = program_transform(
        read_rule(rule)[0], optax.warmup_cosine_decay_schedule(0.0, 0.01, 10, 100)
    )
    params = {"w": jnp.linspace(-1.0, 1.0, 5)}
    a, b = ours.init(params), reference.init(params)
    for t in range(20):
        grads = {"w": jnp.cos(params["w"] * (t + 1))}
        ua, a = ours.update(grads, a, params)
        ub, b = reference.update(grads, b, params)
        np.testing.assert_allclose(ua["w"], ub["w"], rtol=2e-5, atol=1e-9)
    # A meta-trained optimizer has no learning rate: self-tuning only, the trial ignored.
    learned = protocol.OptimizerSpec("mlp_digits", file="l2o/pretrained/mlp_digits.safetensors")
    assert not protocol.has_learning_rate(learned) and protocol.default_trial(learned) == {}
    with pytest.raises(ValueError, match="no learning rate"):
        protocol.default_space(learned)
    make = protocol.trial_optimizer(learned, 100)
    assert make({}) is make({"learning_rate": 1.0})


def test_the_self_tuning_setting_is_the_configured_optimizer():
    cosine = protocol.OptimizerSpec("nadamw", schedule="warmup_cosine", warmup=0.05)
    assert protocol.default_trial(cosine) == {"learning_rate": pytest.approx(1e-3), "warmup": 0.05}
    assert protocol.default_trial(protocol.OptimizerSpec("sgd", {"learning_rate": 0.3})) == {
        "learning_rate": pytest.approx(0.3)
    }
    # A baseline with fixed hyperparameters keeps them in every trial; the trial's win.
    spec = protocol.OptimizerSpec("adamw", {"b2": 0.95})
    assert protocol.default_space(spec) is not protocol.TARGET_SETTERS["adamw"]
    make = protocol.trial_optimizer(spec, 50)
    reference = optax.adamw(0.01, b2=0.95, weight_decay=1e-4)
    params = {"w": jnp.ones(3)}
    ours = make({"learning_rate": 0.01})
    grads = {"w": jnp.array([0.1, -0.2, 0.3])}
    np.testing.assert_allclose(
        ours.update(grads, ours.init(params), params)[0]["w"],
        reference.update(grads, reference.init(params), params)[0]["w"], rtol=1e-6,
    )  # fmt: skip
