"""concept_best_response: each closed form equals a generic solver's optimum; limits, symmetry, numerics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from hrrl_jax.robust import concept_best_response, default_cost

SOLVER_OPTIONS = {"ftol": 1e-15, "maxiter": 1000}


def _simplex_maximiser(objective, gradient, size: int) -> np.ndarray:
    result = optimize.minimize(
        lambda p: -objective(p),
        np.full(size, 1.0 / size),
        jac=lambda p: -gradient(p),
        bounds=[(1e-12, 1.0)] * size,
        constraints=[{"type": "eq", "fun": lambda p: np.sum(p) - 1.0, "jac": lambda p: np.ones(size)}],
        method="SLSQP",
        options=SOLVER_OPTIONS,
    )
    assert result.success, result.message
    return result.x


def _random_instance(seed: int, size: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 3.0, size), rng.dirichlet(np.full(size, 2.0))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("lam", [0.5, 3.0])
def test_l2_matches_solver(seed, lam):
    losses, prior = _random_instance(seed)
    expected = _simplex_maximiser(
        lambda p: p @ losses - 0.5 * lam * np.sum((p - prior) ** 2), lambda p: losses - lam * (p - prior), losses.size
    )
    np.testing.assert_allclose(concept_best_response(losses, prior, divergence="l2", lam=lam), expected, atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("lam", [0.7, 3.0])
def test_kl_matches_solver(seed, lam):
    losses, prior = _random_instance(seed)
    expected = _simplex_maximiser(
        lambda p: p @ losses - lam * np.sum(p * np.log(p / prior)),
        lambda p: losses - lam * (np.log(p / prior) + 1.0),
        losses.size,
    )
    np.testing.assert_allclose(concept_best_response(losses, prior, divergence="kl", lam=lam), expected, atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_wasserstein_matches_entropic_transport_solver(seed):
    losses, prior = _random_instance(seed, size=4)
    cost = np.random.default_rng(100 + seed).uniform(0.2, 1.0, (4, 4))
    cost = (cost + cost.T) / 2 * (1 - np.eye(4))
    lam, temperature = 0.8, 0.5
    gain = losses[None, :] - lam * cost

    def objective(flat):
        coupling = flat.reshape(4, 4)
        return np.sum(coupling * gain) - temperature * np.sum(coupling * np.log(coupling / prior[:, None]))

    def gradient(flat):
        coupling = flat.reshape(4, 4)
        return (gain - temperature * (np.log(coupling / prior[:, None]) + 1.0)).ravel()

    rows = np.kron(np.eye(4), np.ones(4))
    result = optimize.minimize(
        lambda x: -objective(x),
        np.outer(prior, np.full(4, 0.25)).ravel(),
        jac=lambda x: -gradient(x),
        bounds=[(1e-12, 1.0)] * 16,
        constraints=[{"type": "eq", "fun": lambda x: rows @ x - prior, "jac": lambda x: rows}],
        method="SLSQP",
        options=SOLVER_OPTIONS,
    )
    assert result.success, result.message
    expected = result.x.reshape(4, 4).sum(0)
    response = concept_best_response(
        losses, prior, divergence="wasserstein", lam=lam, cost=cost, temperature=temperature
    )
    np.testing.assert_allclose(response, expected, atol=1e-5)


@pytest.mark.parametrize("divergence", ["l2", "kl", "wasserstein", "none"])
def test_infinite_lambda_returns_prior_and_result_is_on_simplex(divergence):
    losses, prior = _random_instance(7, size=6)
    np.testing.assert_allclose(
        concept_best_response(losses, prior, divergence=divergence, lam=jnp.inf), prior, atol=1e-6
    )
    response = np.asarray(concept_best_response(losses * 100, prior, divergence=divergence, lam=0.3))
    assert np.all(response >= 0)
    np.testing.assert_allclose(response.sum(), 1.0, atol=1e-5)


def test_small_lambda_puts_all_mass_on_worst_concept():
    losses, prior = _random_instance(3)
    for divergence in ("l2", "kl"):
        response = concept_best_response(losses, prior, divergence=divergence, lam=1e-3)
        assert response[np.argmax(losses)] > 0.999


def test_wasserstein_low_temperature_approaches_hard_transport():
    losses = np.array([1.0, 2.5, 0.2, 1.8])
    prior = np.array([0.4, 0.3, 0.2, 0.1])
    lam, cost = 1.0, np.asarray(default_cost(4))
    # Unregularised optimum: each source concept k sends all its mass to argmax_l (f_l − λ M_kl).
    destination = np.argmax(losses[None, :] - lam * cost, axis=1)
    hard = np.bincount(destination, weights=prior, minlength=4)
    soft = concept_best_response(losses, prior, divergence="wasserstein", lam=lam, temperature=1e-3)
    np.testing.assert_allclose(soft, hard, atol=1e-5)


@pytest.mark.parametrize("divergence", ["l2", "kl", "wasserstein"])
def test_permutation_equivariance(divergence):
    losses, prior = _random_instance(11, size=6)
    permutation = np.random.default_rng(0).permutation(6)
    response = concept_best_response(losses, prior, divergence=divergence, lam=0.5)
    permuted = concept_best_response(losses[permutation], prior[permutation], divergence=divergence, lam=0.5)
    np.testing.assert_allclose(permuted, np.asarray(response)[permutation], atol=1e-6)


@pytest.mark.parametrize("divergence", ["l2", "kl", "wasserstein"])
def test_vmap_over_lambda_matches_loop(divergence):
    losses, prior = _random_instance(5)
    lams = jnp.array([0.1, 1.0, 10.0, jnp.inf])
    batched = jax.jit(jax.vmap(lambda lam: concept_best_response(losses, prior, divergence=divergence, lam=lam)))(lams)
    for index, lam in enumerate(lams):
        np.testing.assert_allclose(
            batched[index], concept_best_response(losses, prior, divergence=divergence, lam=float(lam)), atol=1e-6
        )


@pytest.mark.parametrize("divergence", ["l2", "kl", "wasserstein"])
def test_no_nan_for_huge_losses_ties_and_thousand_concepts(divergence):
    rng = np.random.default_rng(0)
    losses = rng.uniform(0, 1e4, 1000).astype(np.float32)
    losses[:10] = 1e4  # ties at the top
    prior = np.full(1000, 1e-3)
    response = np.asarray(jax.jit(lambda f: concept_best_response(f, prior, divergence=divergence, lam=0.01))(losses))
    assert np.all(np.isfinite(response))
    np.testing.assert_allclose(response.sum(), 1.0, atol=1e-4)
    np.testing.assert_allclose(response[:10], response[0], atol=1e-6)


def test_bad_arguments_say_what_to_change():
    with pytest.raises(ValueError, match="divergence must be one of"):
        concept_best_response(np.ones(3), np.ones(3) / 3, divergence="chi2", lam=1.0)
    with pytest.raises(ValueError, match="lam must be > 0"):
        concept_best_response(np.ones(3), np.ones(3) / 3, divergence="kl", lam=0.0)
    with pytest.raises(ValueError, match="only apply to divergence='wasserstein'"):
        concept_best_response(np.ones(3), np.ones(3) / 3, divergence="kl", lam=1.0, temperature=0.1)
    with pytest.raises(ValueError, match="one prior entry per concept"):
        concept_best_response(np.ones(3), np.ones(4) / 4, divergence="l2", lam=1.0)
