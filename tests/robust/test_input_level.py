"""The input-space example level against closed forms: linear and quadratic losses, a linear-softmax model, per-example
and per-concept γ, fraction, weights, the clean + robust mixture, jit, 8 sharded devices, the argument checks, and the
README's snippet."""

import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import checkify
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from hrrl_jax import robust
from hrrl_jax.robust import clean_robust_mixture, per_example_gamma, perturb_features, worst_case_inputs

RNG = np.random.default_rng(0)
INPUTS = jnp.asarray(RNG.normal(size=(8, 3, 2)), jnp.float32)
SLOPES = jnp.asarray(RNG.normal(size=(8, 3, 2)), jnp.float32)  # a_i of the linear loss ℓ_i(x) = a_i·x_i.
GAMMAS = jnp.asarray([0.5, 1.0, 2.0, 4.0, 0.25, 3.0, 1.5, 0.75], jnp.float32)


def linear_losses(inputs):
    return jnp.sum(SLOPES * inputs, axis=(1, 2))


def rows(vector):
    return jnp.asarray(vector, jnp.float32)[:, None, None]


@pytest.mark.parametrize("steps", [1, 3])
def test_a_linear_loss_moves_each_example_by_its_slope_over_two_gamma_i(steps):
    adversarial = worst_case_inputs(linear_losses, INPUTS, gamma=GAMMAS, steps=steps)
    np.testing.assert_allclose(adversarial, INPUTS + SLOPES / (2 * rows(GAMMAS)), rtol=1e-6, atol=1e-7)
    scalar = worst_case_inputs(linear_losses, INPUTS, gamma=2.0, steps=steps)
    np.testing.assert_allclose(scalar, INPUTS + SLOPES / 4.0, rtol=1e-6, atol=1e-7)


def test_a_quadratic_loss_follows_the_fixed_point_iteration_to_its_exact_maximiser():
    # ℓ_i(x) = (α/2)‖x_i − c_i‖², α < 2γ: the maximiser of ℓ(x') − γ‖x' − x‖² is x* = (2γx − αc)/(2γ − α), and
    # each step shrinks the distance to it by α/(2γ): x_k − x* = (α/(2γ))^k (x − x*).
    alpha, gamma = 0.8, 1.0
    centres = jnp.asarray(RNG.normal(size=INPUTS.shape), jnp.float32)

    def quadratic_losses(inputs):
        return 0.5 * alpha * jnp.sum((inputs - centres) ** 2, axis=(1, 2))

    maximiser = (2 * gamma * INPUTS - alpha * centres) / (2 * gamma - alpha)
    for steps in (1, 2, 5):
        expected = maximiser + (alpha / (2 * gamma)) ** steps * (INPUTS - maximiser)
        adversarial = worst_case_inputs(quadratic_losses, INPUTS, gamma=gamma, steps=steps)
        np.testing.assert_allclose(adversarial, expected, rtol=1e-5, atol=1e-5)
    converged = worst_case_inputs(quadratic_losses, INPUTS, gamma=gamma, steps=60)
    np.testing.assert_allclose(converged, maximiser, rtol=1e-5, atol=1e-5)


def test_a_linear_softmax_model_moves_by_the_hand_computed_gradient_in_float32_from_bfloat16_inputs():
    features = jnp.asarray(RNG.normal(size=(8, 5)), jnp.float32)
    labels = jnp.asarray(RNG.integers(0, 4, 8))
    kernel, bias = jnp.asarray(RNG.normal(size=(5, 4)), jnp.float32), jnp.asarray(RNG.normal(size=4), jnp.float32)

    def losses_at(inputs):
        return optax.softmax_cross_entropy_with_integer_labels(inputs @ kernel + bias, labels)

    by_hand = (jax.nn.softmax(features @ kernel + bias) - jax.nn.one_hot(labels, 4)) @ kernel.T
    np.testing.assert_allclose(
        worst_case_inputs(losses_at, features, gamma=GAMMAS), features + by_hand / (2 * GAMMAS[:, None]), rtol=1e-5
    )
    for steps in (1, 4):
        np.testing.assert_allclose(
            worst_case_inputs(losses_at, features, gamma=2.0, steps=steps),
            perturb_features(features, labels, kernel, bias, gamma=2.0, steps=steps),
            rtol=1e-5,
            atol=1e-6,
        )
    from_bfloat16 = worst_case_inputs(losses_at, features.astype(jnp.bfloat16), gamma=2.0)
    assert from_bfloat16.dtype == jnp.float32


def test_gamma_inf_keeps_its_example_exactly_even_where_the_gradient_is_not_finite():
    gammas = GAMMAS.at[jnp.array([1, 6])].set(jnp.inf)
    slopes = SLOPES.at[1].set(jnp.nan)

    def losses_at(inputs):
        return jnp.sum(slopes * inputs, axis=(1, 2))

    adversarial = worst_case_inputs(losses_at, INPUTS, gamma=gammas, steps=2)
    np.testing.assert_array_equal(adversarial[jnp.array([1, 6])], INPUTS[jnp.array([1, 6])])
    others = jnp.array([0, 2, 3, 4, 5, 7])
    moves = slopes / (2 * rows(gammas))
    # x + move rounds once in float32 whichever way XLA computes it: at most eps · (|x| + |move|) apart, which is
    # what allows an element near 0 (where a relative bound alone would fail).
    rounding = np.finfo(np.float32).eps * np.max(np.abs(INPUTS[others]) + np.abs(moves[others]))
    np.testing.assert_allclose(adversarial[others], (INPUTS + moves)[others], rtol=1e-6, atol=rounding)
    np.testing.assert_array_equal(worst_case_inputs(linear_losses, INPUTS, gamma=jnp.inf), INPUTS)


@pytest.mark.parametrize("fraction, perturbed", [(0.3, 3), (0.5, 4), (1 / 8, 1), (1.0, 8)])
def test_fraction_perturbs_the_first_ceil_f_m_rows_and_leaves_the_tail_exactly_clean(fraction, perturbed):
    assert perturbed == math.ceil(fraction * 8)
    adversarial = worst_case_inputs(linear_losses, INPUTS, gamma=GAMMAS, fraction=fraction, steps=2)
    np.testing.assert_allclose(
        adversarial[:perturbed], (INPUTS + SLOPES / (2 * rows(GAMMAS)))[:perturbed], rtol=1e-6, atol=1e-7
    )
    np.testing.assert_array_equal(adversarial[perturbed:], INPUTS[perturbed:])


def test_fraction_counts_rows_without_float_rounding_up():
    assert 0.28 * 25 > 7  # 7.000000000000001 in floats: ⌈0.28 · 25⌉ is 7 rows, not 8.
    inputs = jnp.ones((25, 2))
    adversarial = worst_case_inputs(lambda x: jnp.sum(x, axis=1), inputs, gamma=0.5, fraction=0.28)
    np.testing.assert_array_equal(adversarial[:7], 2.0)
    np.testing.assert_array_equal(adversarial[7:], 1.0)


def test_weights_scale_each_step_exactly_and_the_unperturbed_rows_losses_still_pull_on_the_perturbed_ones():
    weights = jnp.asarray([1.0, 0.0, 2.0, 0.5, 3.0, 1.0, 0.25, 4.0], jnp.float32)
    adversarial = worst_case_inputs(linear_losses, INPUTS, gamma=GAMMAS, weights=weights, steps=2)
    np.testing.assert_allclose(adversarial, INPUTS + rows(weights) * SLOPES / (2 * rows(GAMMAS)), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(adversarial[1], INPUTS[1])  # w = 0: no move.
    # Examples that interact through the batch mean: ℓ_i(x) = a_i·x_i + b·mean_j x_j, so
    # ∇_{x_i} Σ_j w_j ℓ_j = w_i a_i + (Σ_j w_j) b / m, the tail rows' weights included.
    pull = jnp.asarray(RNG.normal(size=(3, 2)), jnp.float32)

    def interacting_losses(inputs):
        return linear_losses(inputs) + jnp.sum(pull * jnp.mean(inputs, axis=0))

    adversarial = worst_case_inputs(interacting_losses, INPUTS, gamma=GAMMAS, weights=weights, fraction=0.5)
    gradient = rows(weights) * SLOPES + jnp.sum(weights) * pull / 8
    np.testing.assert_allclose(adversarial[:4], (INPUTS + gradient / (2 * rows(GAMMAS)))[:4], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(adversarial[4:], INPUTS[4:])


def test_the_mixture_is_erm_at_beta_0_the_robust_loss_at_beta_1_and_linear_between_under_jit():
    clean, robust_losses = jnp.asarray([0.5, 1.0, 2.0]), jnp.asarray([0.9, 3.0, 2.5])
    np.testing.assert_array_equal(clean_robust_mixture(clean, robust_losses, beta=0.0), clean)
    np.testing.assert_array_equal(clean_robust_mixture(clean, robust_losses, beta=1.0), robust_losses)
    traced = jax.jit(lambda beta: clean_robust_mixture(clean, robust_losses, beta=beta))(jnp.float32(0.25))
    np.testing.assert_allclose(traced, [0.6, 1.5, 2.125], rtol=1e-6)
    gradient = jax.grad(lambda c, r: jnp.sum(clean_robust_mixture(c, r, beta=0.25)), argnums=(0, 1))(
        clean, robust_losses
    )
    np.testing.assert_allclose(gradient[0], 0.75)
    np.testing.assert_allclose(gradient[1], 0.25)


def test_per_concept_gamma_is_gathered_through_the_class_map_and_out_of_range_stays_clean_under_jit():
    gamma_of_concept = jnp.asarray([0.5, 2.0, jnp.inf])
    concept_of_class = np.array([0, 0, 1, 2, 1])
    labels = jnp.asarray([0, 1, 2, 3, 4, 2])
    np.testing.assert_array_equal(
        per_example_gamma(gamma_of_concept, labels, concept_of_class=concept_of_class),
        [0.5, 0.5, 2.0, jnp.inf, 2.0, 2.0],
    )
    np.testing.assert_array_equal(per_example_gamma(gamma_of_concept, jnp.asarray([2, 0, 1])), [jnp.inf, 0.5, 2.0])
    with pytest.raises(ValueError, match="labels contains 5 outside"):
        per_example_gamma(gamma_of_concept, jnp.asarray([0, 5]), concept_of_class=concept_of_class)
    with pytest.raises(ValueError, match="concept_of_class contains 3 outside"):
        per_example_gamma(gamma_of_concept, labels, concept_of_class=np.array([0, 3]))
    checked = checkify.checkify(
        jax.jit(lambda labels: per_example_gamma(gamma_of_concept, labels, concept_of_class=concept_of_class)),
        errors=checkify.user_checks,
    )
    error, gammas = checked(jnp.asarray([1, 7]))
    np.testing.assert_array_equal(gammas, [0.5, jnp.inf])
    with pytest.raises(checkify.JaxRuntimeError, match="labels contains 7 outside"):
        error.throw()


def _softmax_problem():
    features = jnp.asarray(RNG.normal(size=(32, 6)), jnp.float32)
    labels = jnp.asarray(RNG.integers(0, 5, 32))
    kernel = jnp.asarray(RNG.normal(size=(6, 5)), jnp.float32)
    gammas = jnp.asarray(RNG.uniform(0.5, 2.0, 32), jnp.float32)
    weights = jnp.asarray(RNG.uniform(0.0, 2.0, 32), jnp.float32)
    return features, labels, kernel, gammas, weights


def _ascend(features, labels, kernel, gammas, weights):
    def losses_at(inputs):
        # A batch-mean centring makes the examples interact, as train-mode BatchNorm does.
        centred = inputs - jnp.mean(inputs, axis=0)
        return optax.softmax_cross_entropy_with_integer_labels(centred @ kernel, labels)

    return worst_case_inputs(losses_at, features, gamma=gammas, weights=weights, steps=3, fraction=0.7)


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
def test_jit_and_eight_sharded_devices_give_the_eager_single_device_result(axis_type):
    problem = _softmax_problem()
    eager = _ascend(*problem)
    np.testing.assert_allclose(jax.jit(_ascend)(*problem), eager, rtol=1e-6, atol=1e-6)
    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    with jax.set_mesh(mesh):
        batch, replicated = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())
        features, labels, kernel, gammas, weights = problem
        sharded = jax.jit(_ascend)(
            jax.device_put(features, NamedSharding(mesh, PartitionSpec("data", None))),
            jax.device_put(labels, batch),
            jax.device_put(kernel, replicated),
            jax.device_put(gammas, batch),
            jax.device_put(weights, batch),
        )
    sharded = np.asarray(sharded)
    # The batch mean and the weighted loss sum run in another order over 8 devices: float32 rounding of inputs of
    # order 1, through 3 ascent steps.
    np.testing.assert_allclose(sharded, eager, rtol=1e-5, atol=2e-5)
    np.testing.assert_array_equal(sharded[23:], problem[0][23:])  # ⌈0.7 · 32⌉ = 23 rows perturbed.


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"steps": 1.5}, "steps must be an integer >= 1"),
        ({"fraction": 0.0}, r"fraction must be a number in \(0, 1\]"),
        ({"fraction": 1.5}, r"fraction must be a number in \(0, 1\]"),
        ({"gamma": -1.0}, r"gamma must be > 0 \(inf allowed\), got -1.0"),
        ({"gamma": 0.0}, r"gamma must be > 0 \(inf allowed\), got 0.0"),
        ({"gamma": GAMMAS.at[3].set(-2.0)}, r"gamma must be > 0 \(inf allowed\), got -2.0 at index 3"),
        ({"gamma": GAMMAS.at[2].set(jnp.nan)}, r"gamma must be > 0 \(inf allowed\), got nan at index 2"),
        ({"gamma": GAMMAS[:3]}, r"gamma must be a scalar or one value per example, shape \(8,\)"),
        ({"weights": jnp.ones(8).at[5].set(-1.0)}, "weights must be >= 0, got -1.0 at index 5"),
        ({"weights": jnp.ones(7)}, r"weights must be one value per example, shape \(8,\)"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        worst_case_inputs(linear_losses, INPUTS, **{"gamma": 1.0, **kwargs})


def test_invalid_mixture_gammas_and_loss_shapes_raise_value_error_naming_them():
    losses = jnp.ones(3)
    for beta in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"beta must be a number in \[0, 1\]"):
            clean_robust_mixture(losses, losses, beta=beta)
    with pytest.raises(ValueError, match="clean_losses and robust_losses must have the same shape"):
        clean_robust_mixture(losses, jnp.ones(4), beta=0.5)
    with pytest.raises(ValueError, match=r"gamma_of_concept must be > 0 \(inf allowed\), got -1.0 at index 1"):
        per_example_gamma(jnp.asarray([1.0, -1.0]), jnp.asarray([0, 1]))
    with pytest.raises(ValueError, match=r"per_example_loss_at must return one loss per example, shape \(8,\)"):
        worst_case_inputs(lambda inputs: jnp.sum(inputs), INPUTS, gamma=1.0)


def test_the_readme_snippet_gives_the_loss_at_the_hand_computed_worst_case_and_its_mixture():
    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    snippet = re.search(r"### Worst-case inputs.*?```python\n(.*?)```", readme, re.DOTALL).group(1)
    namespace = {"optax": optax, "robust": robust}
    exec(compile(snippet, "README.md", "exec"), namespace)
    images = jnp.asarray(RNG.normal(size=(8, 5)), jnp.float32)
    labels = jnp.asarray(RNG.integers(0, 4, 8))
    params = {"kernel": jnp.asarray(RNG.normal(size=(5, 4)), jnp.float32), "bias": jnp.zeros(4)}

    def losses_at(inputs):
        return optax.softmax_cross_entropy_with_integer_labels(inputs @ params["kernel"], labels)

    by_hand = images + (jax.nn.softmax(images @ params["kernel"]) - jax.nn.one_hot(labels, 4)) @ params["kernel"].T / 2
    robust_loss = namespace["robust_per_example_loss"](params, images, labels, gamma=1.0)
    np.testing.assert_allclose(robust_loss, losses_at(by_hand), rtol=1e-5)
    mixed = namespace["robust_per_example_loss"](params, images, labels, gamma=1.0, beta=0.5)
    np.testing.assert_allclose(mixed, 0.5 * losses_at(images) + 0.5 * losses_at(by_hand), rtol=1e-5)
