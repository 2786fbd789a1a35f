"""Example level: the within-class reweighting against its entropic-OT definition, its limits and
radius form, and the linear-head feature perturbation against the exact inner maximiser."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import optimize

from hrrl_jax.robust import example_weights, gamma_for_radius, perturb_features, within_class_coupling
from hrrl_jax.robust.example_level import _pairwise_geometry, _within_class_softmax


def _batch(seed: int, size: int = 12, num_classes: int = 3, dim: int = 4):
    rng = np.random.default_rng(seed)
    loss = rng.uniform(0.0, 2.0, size).astype(np.float32)
    features = rng.normal(size=(size, dim)).astype(np.float32)
    labels = rng.integers(0, num_classes, size)
    return loss, features, labels


def _unit_sq_distances(features: np.ndarray) -> np.ndarray:
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    return np.sum((unit[:, None, :] - unit[None, :, :]) ** 2, axis=-1)


@pytest.mark.parametrize("seed", range(2))
def test_coupling_matches_entropic_transport_solver(seed):
    loss, features, labels = _batch(seed, size=6, num_classes=1)
    gamma, temperature = 0.7, 0.5
    size = loss.size
    gain = loss[None, :] - gamma * _unit_sq_distances(features)

    def negative_objective(flat):
        coupling = flat.reshape(size, size)
        return -(np.sum(coupling * gain) - temperature * np.sum(coupling * np.log(size * coupling)))

    def negative_gradient(flat):
        coupling = flat.reshape(size, size)
        return -(gain - temperature * (np.log(size * coupling) + 1.0)).ravel()

    rows = np.kron(np.eye(size), np.ones(size))
    result = optimize.minimize(
        negative_objective,
        np.full(size * size, 1.0 / size**2),
        jac=negative_gradient,
        bounds=[(1e-12, 1.0)] * size**2,
        constraints=[{"type": "eq", "fun": lambda x: rows @ x - 1.0 / size, "jac": lambda x: rows}],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    assert result.success, result.message
    expected = result.x.reshape(size, size)
    coupling = within_class_coupling(loss, features, labels, gamma=gamma, temperature=temperature)
    np.testing.assert_allclose(coupling, expected, atol=1e-5)
    np.testing.assert_allclose(
        example_weights(loss, features, labels, gamma=gamma, temperature=temperature), size * expected.sum(0), atol=1e-5
    )


def test_coupling_never_crosses_classes_and_weights_average_one_per_class():
    loss, features, labels = _batch(1, size=16, num_classes=4)
    coupling = np.asarray(within_class_coupling(loss, features, labels, gamma=0.3, temperature=0.2))
    assert np.all(coupling[labels[:, None] != labels[None, :]] == 0)
    weights = np.asarray(example_weights(loss, features, labels, gamma=0.3, temperature=0.2))
    for label in np.unique(labels):
        np.testing.assert_allclose(weights[labels == label].mean(), 1.0, atol=1e-5)
    assert weights.std() > 0.1


def test_limits_in_gamma():
    loss, features, labels = _batch(2)
    for huge in (1e6, jnp.inf):
        np.testing.assert_allclose(example_weights(loss, features, labels, gamma=huge, temperature=0.5), 1.0, atol=1e-6)
    zero_gamma = np.asarray(example_weights(loss, features, labels, gamma=0.0, temperature=0.5))
    for label in np.unique(labels):
        members = labels == label
        tilted = members.sum() * np.exp(loss[members] / 0.5) / np.exp(loss[members] / 0.5).sum()
        np.testing.assert_allclose(zero_gamma[members], tilted, atol=1e-5)


def test_weights_permute_with_examples():
    loss, features, labels = _batch(3)
    permutation = np.random.default_rng(0).permutation(loss.size)
    weights = np.asarray(example_weights(loss, features, labels, gamma=0.5, temperature=0.3))
    permuted = example_weights(
        loss[permutation], features[permutation], labels[permutation], gamma=0.5, temperature=0.3
    )
    np.testing.assert_allclose(permuted, weights[permutation], atol=1e-6)


def _reference_row_softmax(loss, features, labels, gamma, temperature):
    """The pre-split ``_row_softmax`` in numpy: unit features, clipped ``d``, ``γ d = 0`` where ``d = 0``, softmax."""
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    sq_distance = np.where(np.eye(loss.size, dtype=bool), 0.0, np.clip(2.0 - 2.0 * unit @ unit.T, 0.0, 4.0))
    gamma_per_row = np.broadcast_to(np.asarray(gamma, np.float64), loss.shape)[:, None]
    with np.errstate(invalid="ignore"):
        penalty = np.where(sq_distance > 0, gamma_per_row * sq_distance, 0.0)
    logits = np.where(labels[:, None] == labels[None, :], (loss[None, :] - penalty) / temperature, -np.inf)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def test_geometry_built_once_gives_the_single_pass_softmax():
    loss, features, labels = _batch(8, size=14, num_classes=3, dim=5)
    features[3] = 0.0  # a zero feature vector takes the 1e-12 floor of the norm
    gamma_per_example = np.random.default_rng(9).uniform(0.0, 2.0, loss.size).astype(np.float32)
    geometry = _pairwise_geometry(loss, features, labels)
    for gamma in (0.0, 0.4, jnp.inf, gamma_per_example):
        expected = _reference_row_softmax(
            loss.astype(np.float64), features.astype(np.float64), labels, np.asarray(gamma), 0.3
        )
        np.testing.assert_allclose(_within_class_softmax(geometry, gamma, 0.3), expected, atol=1e-6)
        group_size = np.sum(labels[:, None] == labels[None, :], axis=1, keepdims=True)
        np.testing.assert_allclose(
            within_class_coupling(loss, features, labels, gamma=gamma, temperature=0.3),
            expected / group_size,
            atol=1e-6,
        )
        np.testing.assert_allclose(
            example_weights(loss, features, labels, gamma=gamma, temperature=0.3), expected.sum(axis=0), atol=1e-5
        )


@pytest.mark.parametrize("radius", [0.05, 0.4])
def test_radius_form_moves_exactly_its_radius(radius):
    loss, features, labels = _batch(4, size=20, num_classes=2)
    gamma = np.asarray(
        jax.jit(lambda *args: gamma_for_radius(*args, radius=radius, temperature=0.3))(loss, features, labels)
    )
    coupling = np.asarray(within_class_coupling(loss, features, labels, gamma=gamma, temperature=0.3))
    distances = _unit_sq_distances(features)
    for label in np.unique(labels):
        members = labels == label
        assert np.all(gamma[members] == gamma[members][0]) and gamma[members][0] > 0
        moved = np.sum(coupling[members] * distances[members])
        np.testing.assert_allclose(moved, radius, rtol=1e-4)
    np.testing.assert_allclose(
        example_weights(loss, features, labels, gamma=None, temperature=0.3, radius=radius),
        example_weights(loss, features, labels, gamma=gamma, temperature=0.3),
        atol=1e-5,
    )


def test_radius_larger_than_unpenalised_transport_gives_zero_gamma():
    loss, features, labels = _batch(5, size=10, num_classes=2)
    labels[0] = 7  # a class with a single example never moves mass
    gamma = gamma_for_radius(loss, features, labels, radius=3.9, temperature=1.0)
    np.testing.assert_array_equal(gamma, 0.0)
    with pytest.raises(ValueError, match="exactly one of gamma"):
        example_weights(loss, features, labels, gamma=1.0, temperature=1.0, radius=0.1)


def test_no_nan_for_huge_losses_ties_one_class_and_zero_features():
    rng = np.random.default_rng(0)
    loss = np.full(16, 1e4, np.float32)
    loss[::2] = 0.0
    features = rng.normal(size=(16, 3)).astype(np.float32)
    features[:4] = features[4]  # duplicated examples
    features[-1] = 0.0
    labels = np.zeros(16, np.int32)
    for gamma in (0.0, 1.0, jnp.inf):
        weights = np.asarray(example_weights(loss, features, labels, gamma=gamma, temperature=0.01))
        assert np.all(np.isfinite(weights))
        np.testing.assert_allclose(weights.mean(), 1.0, atol=1e-4)
    radius_weights = example_weights(loss, features, labels, gamma=None, temperature=0.01, radius=0.1)
    assert np.all(np.isfinite(np.asarray(radius_weights)))


def test_weights_are_float32_without_gradient():
    loss, features, labels = _batch(6)

    def weighted(loss):
        return jnp.sum(example_weights(loss, features, labels, gamma=0.5, temperature=0.5) * loss)

    weights = example_weights(jnp.asarray(loss, jnp.bfloat16), features, labels, gamma=0.5, temperature=0.5)
    assert weights.dtype == jnp.float32
    np.testing.assert_allclose(
        jax.grad(weighted)(loss), example_weights(loss, features, labels, gamma=0.5, temperature=0.5), atol=1e-6
    )


def _linear_head(seed: int, dim: int = 3, num_classes: int = 4):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(dim, num_classes)) * 0.5, rng.normal(size=num_classes) * 0.1


def test_one_step_is_the_closed_form_gradient_step():
    kernel, bias = _linear_head(0)
    features, labels = np.random.default_rng(1).normal(size=(5, 3)), np.array([0, 1, 2, 3, 0])
    gamma = 2.0

    def loss_of_features(z):
        return optax.softmax_cross_entropy_with_integer_labels(z @ kernel + bias, labels).sum()

    expected = features + jax.grad(loss_of_features)(jnp.asarray(features)) / (2 * gamma)
    np.testing.assert_allclose(perturb_features(features, labels, kernel, bias, gamma=gamma), expected, atol=1e-5)


def test_many_steps_reach_the_exact_inner_maximiser():
    kernel, bias = _linear_head(2)
    feature, label, gamma = np.array([0.3, -1.0, 0.5]), 1, 1.5

    def negative_inner(z_adv):
        logits = z_adv @ kernel + bias
        loss = np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - logits[label]
        return -(loss - gamma * np.sum((z_adv - feature) ** 2))

    expected = optimize.minimize(negative_inner, feature, method="BFGS", options={"gtol": 1e-10}).x
    perturbed = perturb_features(feature[None], np.array([label]), kernel, bias, gamma=gamma, steps=50)
    np.testing.assert_allclose(perturbed[0], expected, atol=1e-5)


def test_perturbation_gradient_flows_through_features_only():
    kernel, bias = _linear_head(3)
    features, labels = np.random.default_rng(4).normal(size=(4, 3)), np.array([0, 1, 2, 3])
    jacobian = jax.jacobian(lambda z: perturb_features(z, labels, kernel, bias, gamma=1.0, steps=2))(
        jnp.asarray(features, jnp.float32)
    )
    np.testing.assert_allclose(jacobian, np.eye(12).reshape(4, 3, 4, 3), atol=1e-7)
    np.testing.assert_allclose(perturb_features(features, labels, kernel, bias, gamma=jnp.inf), features, atol=1e-7)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        perturb_features(features, labels, kernel, bias, gamma=1.0, steps=0)


def test_vmap_over_gamma_and_temperature_matches_loop():
    loss, features, labels = _batch(7)
    gammas, temperatures = jnp.array([0.0, 0.5, 5.0]), jnp.array([0.2, 1.0, 3.0])
    batched = jax.vmap(lambda g, t: example_weights(loss, features, labels, gamma=g, temperature=t))(
        gammas, temperatures
    )
    for index in range(3):
        np.testing.assert_allclose(
            batched[index],
            example_weights(loss, features, labels, gamma=float(gammas[index]), temperature=float(temperatures[index])),
            atol=1e-6,
        )
