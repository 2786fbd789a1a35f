"""Tests of the optimizer factory: schedules, the weight-decay mask, hand-computed updates, errors."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from hrrl_jax.train.optimizers import default_optimizer_config, kernel_decay_mask, make_optimizer


def _config(**overrides):
    optimizer = default_optimizer_config()
    optimizer.update(overrides)
    return ml_collections.ConfigDict({"optimizer": optimizer})


def _params():
    return {
        "dense": {"kernel": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "bias": jnp.array([0.5, -1.0])},
        "bn": {"scale": jnp.array([1.0, 2.0]), "bias": jnp.array([0.0, 0.1])},
    }


def _gradient_leaf(step, initial_leaf):
    return (step + 1.0) * np.cos(initial_leaf) - 0.3 * initial_leaf


def _grads_at(step):
    """A fixed gradient sequence (from the initial parameters), different at each step so that
    momentum and moment estimates are exercised."""
    return jax.tree.map(lambda p: (step + 1.0) * jnp.cos(p) - 0.3 * p, _params())


def _run(config, steps, total_steps=10):
    optimizer, _ = make_optimizer(config, total_steps)
    params = _params()
    state = optimizer.init(params)
    for step in range(steps):
        updates, state = optimizer.update(_grads_at(step), state, params)
        params = optax.apply_updates(params, updates)
    return params


def test_default_config_has_every_key():
    config = default_optimizer_config()
    assert config.name == "sgd" and config.learning_rate == 0.1 and config.nesterov is True
    assert config.momentum == 0.9 and config.weight_decay == 5e-4 and config.schedule == "cosine"
    assert config.warmup_steps == 0 and config.warmup_epochs is None and config.grad_clip_norm is None
    assert set(config.keys()) == {
        "name",
        "learning_rate",
        "momentum",
        "nesterov",
        "weight_decay",
        "b1",
        "b2",
        "eps",
        "schedule",
        "warmup_steps",
        "warmup_epochs",
        "step_boundaries",
        "step_decay",
        "grad_clip_norm",
    }


def test_cosine_schedule_with_warmup():
    _, schedule = make_optimizer(_config(learning_rate=0.4, warmup_steps=10), total_steps=110)
    np.testing.assert_allclose(
        [schedule(s) for s in (0, 5, 10, 60, 110, 200)], [0.0, 0.2, 0.4, 0.2, 0.0, 0.0], atol=1e-7
    )
    np.testing.assert_allclose(schedule(35), 0.4 * 0.5 * (1 + math.cos(math.pi * 0.25)), rtol=1e-6)


def test_step_schedule_boundaries_are_fractions_of_total_steps():
    _, schedule = make_optimizer(
        _config(schedule="step", learning_rate=1.0, warmup_steps=4, step_boundaries=(0.5, 0.75), step_decay=0.1),
        total_steps=100,
    )
    steps = (0, 2, 4, 49, 50, 74, 75, 99)
    np.testing.assert_allclose([schedule(s) for s in steps], [0.0, 0.5, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)


def test_constant_schedule_without_warmup():
    _, schedule = make_optimizer(_config(schedule="constant", learning_rate=0.3), total_steps=10)
    np.testing.assert_allclose([schedule(s) for s in (0, 5, 10)], [0.3, 0.3, 0.3], rtol=1e-7)


def test_decay_mask_covers_kernels_only():
    assert kernel_decay_mask(_params()) == {
        "dense": {"kernel": True, "bias": False},
        "bn": {"scale": False, "bias": False},
    }
    # With zero gradients, only the kernel moves: by -lr * wd * kernel (SGD, first step).
    optimizer, _ = make_optimizer(_config(schedule="constant", learning_rate=0.5, weight_decay=0.1), total_steps=10)
    params = _params()
    updates, _ = optimizer.update(jax.tree.map(jnp.zeros_like, params), optimizer.init(params), params)
    np.testing.assert_allclose(
        updates["dense"]["kernel"], -0.05 * params["dense"]["kernel"] * 1.9, rtol=1e-6
    )  # Nesterov: g + momentum * trace = 1.9 g on the first step.
    for leaf in (updates["dense"]["bias"], updates["bn"]["scale"], updates["bn"]["bias"]):
        np.testing.assert_array_equal(leaf, 0.0)


def test_sgd_nesterov_matches_hand_computation():
    lr, momentum, wd = 0.1, 0.9, 0.01
    config = _config(schedule="constant", learning_rate=lr, momentum=momentum, weight_decay=wd)
    expected = {}
    for path, value in jax.tree_util.tree_leaves_with_path(_params()):
        theta, trace = np.asarray(value, np.float64), 0.0
        for step in range(2):
            grad = _gradient_leaf(step, np.asarray(value, np.float64))
            if path[-1].key == "kernel":
                grad = grad + wd * theta
            trace = momentum * trace + grad
            theta = theta - lr * (grad + momentum * trace)
        expected[jax.tree_util.keystr(path)] = theta
    got = _run(config, steps=2)
    for path, value in jax.tree_util.tree_leaves_with_path(got):
        np.testing.assert_allclose(value, expected[jax.tree_util.keystr(path)], rtol=1e-5, atol=1e-6)


def test_adamw_matches_hand_computation():
    lr, b1, b2, eps, wd = 0.01, 0.8, 0.9, 1e-6, 0.1
    config = _config(name="adamw", schedule="constant", learning_rate=lr, b1=b1, b2=b2, eps=eps, weight_decay=wd)
    got = {
        jax.tree_util.keystr(path): value for path, value in jax.tree_util.tree_leaves_with_path(_run(config, steps=2))
    }
    for path, value in jax.tree_util.tree_leaves_with_path(_params()):
        theta, first, second = np.asarray(value, np.float64), 0.0, 0.0
        for step in range(2):
            grad = _gradient_leaf(step, np.asarray(value, np.float64))
            first = b1 * first + (1 - b1) * grad
            second = b2 * second + (1 - b2) * grad**2
            update = (first / (1 - b1 ** (step + 1))) / (np.sqrt(second / (1 - b2 ** (step + 1))) + eps)
            if path[-1].key == "kernel":
                update = update + wd * theta  # decoupled: not fed through the moments
            theta = theta - lr * update
        np.testing.assert_allclose(got[jax.tree_util.keystr(path)], theta, rtol=1e-5, atol=1e-6)


def test_gradient_clipping_by_global_norm():
    optimizer, _ = make_optimizer(
        _config(schedule="constant", learning_rate=1.0, momentum=0.0, weight_decay=0.0, grad_clip_norm=0.5),
        total_steps=10,
    )
    params = _params()
    grads = _grads_at(3)
    norm = float(optax.tree.norm(grads))
    assert norm > 0.5
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    np.testing.assert_allclose(float(optax.tree.norm(updates)), 0.5, rtol=1e-5)
    np.testing.assert_allclose(updates["dense"]["kernel"], -grads["dense"]["kernel"] * 0.5 / norm, rtol=1e-5)
    # Small gradients pass through unchanged.
    small = jax.tree.map(lambda g: g * 0.1 / norm, grads)
    updates, _ = optimizer.update(small, optimizer.init(params), params)
    np.testing.assert_allclose(updates["bn"]["scale"], -small["bn"]["scale"], rtol=1e-6)


def test_optimizer_state_is_a_jittable_pytree():
    optimizer, _ = make_optimizer(_config(warmup_steps=2), total_steps=10)
    params = _params()

    @jax.jit
    def step(params, state, grads):
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = optimizer.init(params)
    new_params, new_state = step(params, state, _grads_at(0))
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    # Step 0 of the warm-up has learning rate 0: parameters unchanged; the next step moves them.
    np.testing.assert_array_equal(new_params["dense"]["kernel"], params["dense"]["kernel"])
    moved, _ = step(new_params, new_state, _grads_at(1))
    assert not np.allclose(moved["dense"]["kernel"], params["dense"]["kernel"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"name": "lamb"}, "config.optimizer.name 'lamb'"),
        ({"schedule": "linear"}, "config.optimizer.schedule 'linear'"),
        ({"warmup_steps": 10}, "warmup_steps"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"schedule": "step", "step_boundaries": (0.75, 0.5)}, "step_boundaries"),
        ({"schedule": "step", "step_boundaries": (0.5, 1.5)}, "step_boundaries"),
        ({"grad_clip_norm": -1.0}, "grad_clip_norm"),
    ],
)
def test_bad_settings_name_the_key_and_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_optimizer(_config(**overrides), total_steps=10)


def test_missing_or_unknown_keys_are_reported():
    config = _config()
    del config.optimizer["nesterov"]
    with pytest.raises(ValueError, match="missing keys \\['nesterov'\\]"):
        make_optimizer(config, total_steps=10)
    with pytest.raises(ValueError, match="no 'optimizer'"):
        make_optimizer(ml_collections.ConfigDict({"seed": 0}), total_steps=10)
    with pytest.raises(ValueError, match="total_steps >= 1, got 0"):
        make_optimizer(_config(), total_steps=0)
