"""The optimizer registry: names, hyperparameters and their defaults, errors listing the valid
choices, and schedules accepted as learning rates."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tasks
from baselines import OPTIMIZERS, get_optimizer, list_optimizers, optimizer_hparams
from tasks import UnknownNameError

NAMES = sorted(OPTIMIZERS)
FIRST_ORDER = [
    "sgd", "momentum", "nesterov", "adagrad", "adadelta", "rmsprop", "adam", "adamw", "amsgrad",
    "nadam", "adamax", "radam", "lars", "lamb", "lion",
]  # fmt: skip
# Our name -> optax's function of the same optimizer, whose argument names we reuse.
OPTAX_COUNTERPARTS = {
    "sgd": optax.sgd,
    "momentum": optax.sgd,
    "nesterov": optax.sgd,
    "adagrad": optax.adagrad,
    "adadelta": optax.adadelta,
    "rmsprop": optax.rmsprop,
    "adam": optax.adam,
    "adamw": optax.adamw,
    "amsgrad": optax.amsgrad,
    "nadam": optax.nadam,
    "adamax": optax.adamax,
    "radam": optax.radam,
    "lars": optax.lars,
    "lamb": optax.lamb,
    "lion": optax.lion,
}


def test_lists_the_first_order_optimizers():
    assert set(FIRST_ORDER) <= set(list_optimizers())
    assert list_optimizers() == sorted(OPTIMIZERS)
    assert all(name == name.lower() for name in OPTIMIZERS)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="unknown optimizer 'adamm'") as error:
        get_optimizer("adamm")
    assert all(name in str(error.value) for name in NAMES)
    assert isinstance(error.value, ValueError)
    with pytest.raises(UnknownNameError, match="valid optimizers: "):
        optimizer_hparams("Adam")


def test_unknown_hyperparameter_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="'beta1'") as error:
        get_optimizer("adam", learning_rate=1e-3, beta1=0.9)
    for hparam in ("learning_rate", "b1", "b2", "eps", "eps_root"):
        assert hparam in str(error.value)


def test_variants_do_not_expose_the_flags_they_fix():
    assert "nesterov" in optimizer_hparams("momentum")
    assert "nesterov" not in optimizer_hparams("nesterov")
    assert "nesterov" not in optimizer_hparams("nadam")
    with pytest.raises(UnknownNameError, match="'nesterov'"):
        get_optimizer("nadam", nesterov=False)


@pytest.mark.parametrize("name", NAMES)
def test_every_hyperparameter_has_a_default(name):
    hparams = optimizer_hparams(name)
    assert "learning_rate" in hparams
    missing = [k for k, v in hparams.items() if v is inspect.Parameter.empty]
    assert not missing, f"{name} has no default for {missing}"
    assert isinstance(get_optimizer(name), optax.GradientTransformationExtraArgs)


@pytest.mark.parametrize("name", FIRST_ORDER)
def test_hyperparameter_names_are_optax_names(name):
    theirs = inspect.signature(OPTAX_COUNTERPARTS[name]).parameters
    assert set(optimizer_hparams(name)) <= set(theirs)


def two_steps(optimizer: optax.GradientTransformation):
    """Params after each of two inner-loop steps on a small two-leaf problem."""
    task = tasks.Task(
        name="two_leaves",
        init=lambda key: {"w": jnp.full((3, 2), 0.5), "b": jnp.array([1.0, -2.0])},
        loss=lambda p, key, batch: (jnp.sum(jnp.sin(p["w"])) + jnp.sum(p["b"] ** 2), {}),
        sampler=lambda *_: (),
    )
    state = tasks.init_state(task, optimizer, jax.random.key(0))
    out = []
    for _ in range(2):
        state, _ = tasks.train_step(task, optimizer, state, jax.random.key(1), total_steps=2)
        out.append(state.params)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_a_schedule_is_accepted_as_learning_rate(name):
    default = optimizer_hparams(name)["learning_rate"]
    lr = default if isinstance(default, float) else 0.1
    schedule = optax.cosine_decay_schedule(lr, decay_steps=2)  # lr, lr / 2, 0
    constant_steps = two_steps(get_optimizer(name, learning_rate=lr))
    schedule_steps = two_steps(get_optimizer(name, learning_rate=schedule))
    pairs = zip(jax.tree.leaves(constant_steps), jax.tree.leaves(schedule_steps), strict=True)
    same = [np.allclose(a, b, rtol=1e-6, atol=0) for a, b in pairs]
    n = len(same) // 2
    assert all(same[:n]), "the first step differs from the constant learning rate's"
    assert not all(same[n:]), "the second step, at half the rate, is the constant rate's"
