"""Schedules for λ, γ and τ_e: read at the transform's step, Group DRO written both ways, bad schedules refused."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hrrl_jax.robust import (
    concept_best_response,
    concept_distribution,
    concept_loss_estimate,
    example_weights,
    hierarchical_reweighting,
    loss_weights,
)
from hrrl_jax.robust.schedules import SCHEDULE_CHECK_STEPS
from tests.robust.helpers import CONCEPT_OF_CLASS, CONCEPT_SIZES, random_batch

UNIT_ROUNDOFF = float(np.finfo(np.float32).eps) / 2


def _update(tx, state, seed: int, with_features: bool = True):
    loss, labels, features = random_batch(seed)
    _, state = tx.update({}, state, per_example_loss=loss, labels=labels, features=features if with_features else None)
    return state


def test_group_dro_on_cumulative_losses_equals_kl_on_running_means_with_lambda_one_over_eta_t():
    eta, num_updates = 0.05, 20
    cumulative = hierarchical_reweighting(
        CONCEPT_OF_CLASS, CONCEPT_SIZES, divergence="kl", lam=1 / eta, accumulate="sum", example_level="none"
    )
    annealed = hierarchical_reweighting(
        CONCEPT_OF_CLASS,
        CONCEPT_SIZES,
        divergence="kl",
        lam=lambda t: 1.0 / (eta * t),  # inf at t = 0: p_0 = q, as the empty sum gives.
        accumulate="mean",
        example_level="none",
    )
    cumulative_state, annealed_state = cumulative.init({}), annealed.init({})
    _, labels, _ = random_batch(100)
    argument = np.zeros(4)  # a_t = η Σ_{s<t} f̂_s, in float64.
    for step in range(num_updates + 1):
        # Both play p_t = softmax(log q + a_t). The sum form rounds a_t by at most (t + 1)u relative (t − 1 additions
        # of terms of one sign, 1/η, the division); the running mean by 5u per update (α_t, 1 − α_t, two products,
        # one sum), λ_t = 1/(η t) and the division by 3u more. An error δ in a moves log p_k by δ_k − Σ_j p_j δ_j,
        # at most 2 max|δ|; the softmax itself rounds each p_k by a few u, the weights' factor N/n_k once more.
        # (Measured: at most 4.2e-7 relative over the 21 steps, against a bound of 3.9e-5 at the last.)
        bound = 2 * np.max(argument) * (6 * step + 4) * UNIT_ROUNDOFF + 8 * UNIT_ROUNDOFF
        p_sum, p_mean = concept_distribution(cumulative_state), concept_distribution(annealed_state)
        np.testing.assert_allclose(p_mean, p_sum, rtol=bound, atol=0)
        np.testing.assert_allclose(
            loss_weights(annealed_state, labels), loss_weights(cumulative_state, labels), rtol=bound + 2 * UNIT_ROUNDOFF
        )
        cumulative_state = _update(cumulative, cumulative_state, step, with_features=False)
        annealed_state = _update(annealed, annealed_state, step, with_features=False)
        loss, batch_labels, _ = random_batch(step)
        argument += eta * np.asarray(concept_loss_estimate(loss, batch_labels, CONCEPT_OF_CLASS, CONCEPT_SIZES))
    assert np.max(np.abs(np.asarray(p_sum) - 0.25)) > 0.05  # p moved far from q: the agreement is not trivial.


def test_lambda_is_read_at_the_state_step_and_inf_defers_the_concept_level():
    defer_steps, lam = 3, 0.4
    tx = hierarchical_reweighting(
        CONCEPT_OF_CLASS,
        CONCEPT_SIZES,
        divergence="l2",
        lam=lambda t: jnp.where(t < defer_steps, jnp.inf, lam),
        example_level="none",
    )
    state = tx.init({})
    prior = np.full(4, 0.25, np.float32)
    for seed in range(6):
        expected_lam = np.inf if seed < defer_steps else lam
        expected = concept_best_response(state.concept_losses, prior, divergence="l2", lam=expected_lam)
        np.testing.assert_array_equal(concept_distribution(state), expected)
        if seed < defer_steps:
            np.testing.assert_allclose(concept_distribution(state), prior, atol=1e-7)
        state = jax.jit(lambda s, seed=seed: _update(tx, s, seed, with_features=False))(state)
    assert np.max(np.abs(np.asarray(concept_distribution(state)) - prior)) > 0.05  # No longer deferred.


def test_example_weights_use_gamma_and_temperature_at_the_state_step_in_weights_and_update():
    def gamma(t):
        return 0.5 * (t + 1.0)

    def temperature(t):
        return 1.0 / (t + 1.0)

    tx = hierarchical_reweighting(
        CONCEPT_OF_CLASS,
        CONCEPT_SIZES,
        divergence="none",
        prior="empirical",
        gamma=gamma,
        example_temperature=temperature,
    )
    state = tx.init({})
    for step in range(3):
        loss, labels, features = random_batch(step)
        v = example_weights(loss, features, labels, gamma=gamma(step), temperature=temperature(step))
        np.testing.assert_allclose(loss_weights(state, labels, per_example_loss=loss, features=features), v, rtol=1e-6)
        estimate = concept_loss_estimate(loss, labels, CONCEPT_OF_CLASS, CONCEPT_SIZES, weights=v)
        expected_losses = (step * np.asarray(state.concept_losses) + np.asarray(estimate)) / (step + 1)
        state = _update(tx, state, step)
        np.testing.assert_allclose(state.concept_losses, expected_losses, rtol=1e-5)


def test_a_constant_schedule_gives_the_number_exactly():
    loss, labels, features = random_batch(5)
    results = []
    for hyperparameters in (
        {"lam": 0.3, "gamma": 0.5, "example_temperature": 0.7},
        {"lam": lambda t: 0.3, "gamma": optax.constant_schedule(0.5), "example_temperature": lambda t: 0.7 + 0 * t},
    ):
        tx = hierarchical_reweighting(CONCEPT_OF_CLASS, CONCEPT_SIZES, divergence="kl", **hyperparameters)
        state = tx.init({})
        for seed in range(3):
            state = _update(tx, state, seed)
        weights = loss_weights(state, labels, per_example_loss=loss, features=features)
        results.append((state.concept_losses, concept_distribution(state), weights))
    for number, schedule in zip(*results):
        np.testing.assert_array_equal(number, schedule)


@pytest.mark.parametrize(
    "name, schedule, message",
    [
        ("lam", lambda t: 100.0 - t, r"lam schedule must be > 0 .* at step 100 it gives 0\.0"),
        ("gamma", lambda t: jnp.where(t == 3, jnp.nan, 1.0), "gamma schedule .* at step 3 it gives nan"),
        (
            "example_temperature",
            optax.linear_schedule(1.0, -1.0, 2**20),
            r"example_temperature schedule .* at step 524288 it gives 0\.0",
        ),
        ("lam", lambda t: 1.0 if t < 10 else 0.5, "lam is a schedule that cannot be evaluated at a traced int32 step"),
        (
            "gamma",
            lambda t: jnp.ones(2),
            r"gamma schedule must return one value \(a scalar\) per step, got shape \(2,\)",
        ),
    ],
)
def test_bad_schedules_are_refused_at_construction_with_the_argument_and_step(name, schedule, message):
    with pytest.raises(ValueError, match=message):
        hierarchical_reweighting(CONCEPT_OF_CLASS, CONCEPT_SIZES, **{name: schedule})


def test_the_check_grid_is_dense_early_and_reaches_two_to_the_24():
    steps = SCHEDULE_CHECK_STEPS
    assert steps.dtype == np.int32 and np.all(np.diff(steps) > 0)
    assert set(range(1025)) <= set(steps.tolist()) and steps[-1] == 2**24 and 3 * 2**22 in steps
