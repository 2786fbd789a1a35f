"""`input_level_value_and_grad` against closed forms: the clean + robust mixture, the clean-pass step, the fraction,
the coupling to concept weights, per-example prices, the random control of equal norm, and the γ warm-up.

The model is linear in the input with parameters θ of an image's shape: ℓ_i(θ, x_i) = Σ θ ⊙ x_i + b_i. Then
∇_x ℓ_i = θ, ∇_θ ℓ_i = x_i, one ascent step moves x_i by θ/(2γ_i) (by w_i θ/(2γ_i) when coupled), raises ℓ_i by
‖θ‖²/(2γ_i), and every value and gradient has a closed form.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrrl_jax import robust
from hrrl_jax.robust import deferred_ramp, input_level_value_and_grad, worst_case_inputs

ROWS = 8
THETA = jax.random.normal(jax.random.key(0), (3, 2))
INPUTS = jax.random.normal(jax.random.key(1), (ROWS, 3, 2))
OFFSETS = jnp.arange(ROWS, dtype=jnp.float32) / 4  # b_i, carried as the targets.
WEIGHTS = jnp.array([0.5, 2.0, 1.0, 0.0, 1.5, 1.0, 3.0, 0.25])
GAMMAS = jnp.array([0.5, 1.0, 2.0, 4.0, 0.7, 1.3, jnp.inf, 3.0])


def linear_loss(theta, inputs, offsets):
    losses = jnp.sum(theta * inputs, axis=(1, 2)) + offsets
    return losses, {"rows": inputs.shape[0]}


def closed_form(*, beta, fraction, weights, gamma, couple, gradient="ascent"):
    """Loss, θ-gradient, per-example mixed losses and move lengths by hand. The clean pass's backward carries no
    input gradient for a row of weight 0, so under `clean_pass` such a row stays in place (it is not in the loss)."""
    perturbed = int(np.ceil(round(fraction * ROWS, 9)))
    rows = np.arange(ROWS) < perturbed
    gamma = np.broadcast_to(np.asarray(gamma, np.float64), (ROWS,))
    weights = np.asarray(weights, np.float64)
    theta, inputs = np.asarray(THETA, np.float64), np.asarray(INPUTS, np.float64)
    move_scale = np.where(np.isfinite(gamma), 1 / (2 * gamma), 0.0) * (weights if couple else 1.0)
    if gradient == "clean_pass":
        move_scale = np.where(weights > 0, move_scale, 0.0)
    moved = inputs + move_scale[:, None, None] * theta
    clean_losses = np.sum(theta * inputs, axis=(1, 2)) + np.asarray(OFFSETS)
    robust_losses = np.sum(theta * moved, axis=(1, 2)) + np.asarray(OFFSETS)
    clean_coefficients = np.where(rows, 1 - beta, 1.0)
    mixed = clean_coefficients * clean_losses + np.where(rows, beta * robust_losses, 0.0)
    loss = np.mean(weights * mixed)
    grad = np.einsum("i,ijk->jk", weights * clean_coefficients, inputs) / ROWS
    grad += np.einsum("i,ijk->jk", np.where(rows, beta * weights, 0.0), moved) / ROWS
    norms = (move_scale * np.linalg.norm(theta))[rows] * (beta > 0)  # β = 0 crafts nothing.
    return loss, grad, mixed, norms


@pytest.mark.parametrize("gradient", ["ascent", "clean_pass"])
@pytest.mark.parametrize(
    ("beta", "fraction", "couple", "gamma"),
    [(0.5, 1.0, False, 1.5), (0.3, 0.5, False, GAMMAS), (0.75, 0.6, True, GAMMAS), (0.0, 1.0, False, 1.0)],
)
def test_value_gradient_losses_and_norms_match_the_closed_form(gradient, beta, fraction, couple, gamma):
    (loss, aux), grads = jax.jit(
        lambda theta: input_level_value_and_grad(
            linear_loss,
            theta,
            INPUTS,
            OFFSETS,
            gamma=gamma,
            beta=beta,
            fraction=fraction,
            weights=WEIGHTS,
            couple_weights=couple,
            gradient=gradient,
        )
    )(THETA)
    expected_loss, expected_grad, expected_mixed, expected_norms = closed_form(
        beta=beta, fraction=fraction, weights=WEIGHTS, gamma=gamma, couple=couple, gradient=gradient
    )
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads, expected_grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux.mixed_losses, expected_mixed, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux.perturbation_norms, expected_norms, rtol=1e-5, atol=1e-6)
    if beta > 0:
        assert aux.robust_output["rows"] == int(np.ceil(fraction * ROWS))  # The perturbed pass sees n rows only.
    else:
        assert aux.robust_losses is None and aux.robust_output is None  # β = 0 is ERM: no perturbed pass.


def test_beta_one_on_the_whole_batch_is_the_loss_at_the_worst_case_inputs_alone():
    def expected(theta):
        adversarial = worst_case_inputs(lambda x: linear_loss(theta, x, OFFSETS)[0], INPUTS, gamma=GAMMAS, steps=2)
        return jnp.mean(WEIGHTS * linear_loss(theta, adversarial, OFFSETS)[0])

    (loss, aux), grads = input_level_value_and_grad(
        linear_loss, THETA, INPUTS, OFFSETS, gamma=GAMMAS, steps=2, weights=WEIGHTS
    )
    expected_loss, expected_grads = jax.value_and_grad(expected)(THETA)
    assert aux.clean_losses is None and aux.clean_output is None  # No clean pass at β = 1, f = 1.
    np.testing.assert_array_equal(loss, expected_loss)
    np.testing.assert_array_equal(grads, expected_grads)


def test_the_clean_pass_step_under_batch_coupling_follows_the_weighted_clean_objective():
    """Where examples interact (a batch mean in the loss), the clean-pass step follows ∇_x of the clean objective
    (weighted by c_i) divided by c_i, the ascent the gradient of the unweighted sum; both against their closed forms.

    ℓ_i = Σ θ ⊙ (x_i − x̄)² + b_i, d_j = x_j − x̄, Σ_j d_j = 0: the ascent's ∇_{x_i} Σ_j ℓ_j = 2θ d_i, and the
    clean pass's (1/c_i) ∇_{x_i} Σ_j c_j ℓ_j = 2θ d_i − (2θ / (m c_i)) Σ_j c_j d_j; each row moves by that / (2γ)."""

    def coupled_loss(theta, inputs, offsets):
        centred = inputs - jnp.mean(inputs, axis=0)
        return jnp.sum(theta * centred**2, axis=(1, 2)) + offsets, None

    gamma, beta, fraction = 2.0, 0.5, 0.5
    kwargs = dict(gamma=gamma, beta=beta, fraction=fraction)
    (_, from_ascent), _ = input_level_value_and_grad(coupled_loss, THETA, INPUTS, OFFSETS, **kwargs)
    (_, from_clean), _ = input_level_value_and_grad(
        coupled_loss, THETA, INPUTS, OFFSETS, gradient="clean_pass", **kwargs
    )
    theta, inputs = np.asarray(THETA, np.float64), np.asarray(INPUTS, np.float64)
    perturbed = int(np.ceil(fraction * ROWS))
    coefficients = np.where(np.arange(ROWS) < perturbed, 1 - beta, 1.0)
    centred = inputs - inputs.mean(axis=0)
    ascent = 2 * theta * centred
    clean = ascent - 2 * theta * np.einsum("j,jkl->kl", coefficients, centred) / (ROWS * coefficients[:, None, None])

    def move_norms(gradients):
        return np.linalg.norm(gradients.reshape(ROWS, -1), axis=1)[:perturbed] / (2 * gamma)

    # float32 sums of at most ROWS * 6 terms: a few eps (1.2e-7) of relative error; 1e-5 leaves a wide margin, as the
    # closed-form tests above.
    np.testing.assert_allclose(from_ascent.perturbation_norms, move_norms(ascent), rtol=1e-5)
    np.testing.assert_allclose(from_clean.perturbation_norms, move_norms(clean), rtol=1e-5)
    assert not np.allclose(move_norms(clean), move_norms(ascent), rtol=1e-2)  # The coupling's share is visible.


def test_the_random_control_moves_each_row_as_far_as_the_gradient_step_in_a_random_direction():
    kwargs = dict(gamma=GAMMAS, beta=1.0, weights=WEIGHTS, couple_weights=True)
    (_, worst), _ = input_level_value_and_grad(linear_loss, THETA, INPUTS, OFFSETS, **kwargs)
    gains = []
    for seed in range(64):
        (_, control), _ = input_level_value_and_grad(
            linear_loss, THETA, INPUTS, OFFSETS, direction="random", key=jax.random.key(1000 + seed), **kwargs
        )
        np.testing.assert_allclose(control.perturbation_norms, worst.perturbation_norms, rtol=1e-5, atol=1e-6)
        gains.append(np.asarray(control.robust_losses - (jnp.sum(THETA * INPUTS, axis=(1, 2)) + OFFSETS)))
    worst_gain = np.asarray(worst.robust_losses - (jnp.sum(THETA * INPUTS, axis=(1, 2)) + OFFSETS))
    moving = np.asarray(worst.perturbation_norms) > 0
    # Up the gradient the loss rises by ‖move‖·‖θ‖; a random direction of that length gains ‖move‖·‖θ‖·cos, whose
    # mean is 0 and whose absolute value stays below it.
    assert np.all(np.abs(np.asarray(gains))[:, moving] < worst_gain[moving] - 1e-6)
    spread = worst_gain[moving] / np.sqrt(THETA.size)
    np.testing.assert_array_less(np.abs(np.mean(gains, axis=0))[moving], 4 * spread / np.sqrt(64))
    (_, again), _ = input_level_value_and_grad(
        linear_loss, THETA, INPUTS, OFFSETS, direction="random", key=jax.random.key(1063), **kwargs
    )
    np.testing.assert_array_equal(again.robust_losses, control.robust_losses)  # The same key, the same directions.


def test_per_concept_prices_gathered_by_label_keep_an_infinite_concept_clean():
    labels = jnp.array([0, 1, 2, 3, 0, 1, 2, 3])
    gamma = robust.per_example_gamma(
        jnp.array([1.0, 2.0, jnp.inf, 0.5]), labels, concept_of_class=jnp.array([0, 1, 2, 3])
    )
    (_, aux), _ = input_level_value_and_grad(linear_loss, THETA, INPUTS, OFFSETS, gamma=gamma)
    expected = np.linalg.norm(THETA) / (2 * np.array([1.0, 2.0, np.inf, 0.5, 1.0, 2.0, np.inf, 0.5]))
    np.testing.assert_allclose(aux.perturbation_norms, expected, rtol=1e-5)


def test_deferred_ramp_keeps_x_clean_then_grows_the_step_linearly():
    schedule = deferred_ramp(2.0, defer_steps=3, ramp_steps=4)
    values = np.array([float(schedule(jnp.int32(step))) for step in range(9)])
    assert np.all(np.isinf(values[:3]))
    np.testing.assert_allclose(1 / values[3:], np.array([1, 2, 3, 4, 4, 4]) / 4 / 2.0, rtol=1e-6)
    assert float(deferred_ramp(2.0, defer_steps=0, ramp_steps=0)(jnp.int32(0))) == 2.0
    np.testing.assert_allclose(deferred_ramp(jnp.array([1.0, 3.0]), defer_steps=0, ramp_steps=2)(1), [1.0, 3.0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beta": 1.5}, "beta must be a Python number in [0, 1]"),
        ({"beta": 1.0, "gradient": "clean_pass"}, "gradient='clean_pass' takes ∇_x from the clean term"),
        ({"beta": 0.5, "gradient": "clean_pass", "steps": 2}, "gradient='clean_pass' takes exactly one step"),
        ({"direction": "random"}, "direction='random' needs key="),
        ({"gradient": "both"}, "gradient must be one of"),
        ({"fraction": 0.0}, "fraction must be a number in (0, 1]"),
    ],
)
def test_bad_arguments_raise_one_line_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=r"^" + __import__("re").escape(message)):
        input_level_value_and_grad(linear_loss, THETA, INPUTS, OFFSETS, **{"gamma": 1.0, **kwargs})


def test_a_reduced_loss_is_refused():
    with pytest.raises(ValueError, match=r"^loss_fn must return one loss per example, shape \(8,\)"):
        input_level_value_and_grad(
            lambda t, x, b: (jnp.mean(linear_loss(t, x, b)[0]), None), THETA, INPUTS, OFFSETS, gamma=1.0, beta=0.5
        )
