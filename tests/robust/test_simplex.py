"""project_simplex: exact Euclidean projection, checked against a generic solver and its defining properties."""

import numpy as np
import pytest
from scipy import optimize

from hrrl_jax.robust import project_simplex


def _solver_projection(point: np.ndarray) -> np.ndarray:
    result = optimize.minimize(
        lambda p: 0.5 * np.sum((p - point) ** 2),
        np.full_like(point, 1.0 / point.size),
        jac=lambda p: p - point,
        bounds=[(0.0, 1.0)] * point.size,
        constraints=[{"type": "eq", "fun": lambda p: np.sum(p) - 1.0, "jac": lambda p: np.ones_like(p)}],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 500},
    )
    return result.x


@pytest.mark.parametrize("seed", range(4))
def test_matches_generic_solver(seed):
    point = np.random.default_rng(seed).normal(scale=1.5, size=7)
    np.testing.assert_allclose(project_simplex(point), _solver_projection(point), atol=1e-5)


def test_batched_over_leading_axes_and_on_simplex():
    points = np.random.default_rng(0).normal(scale=3.0, size=(3, 4, 6))
    projected = np.asarray(project_simplex(points))
    assert projected.shape == points.shape and projected.dtype == np.float32
    assert np.all(projected >= 0)
    np.testing.assert_allclose(projected.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(projected[1, 2], project_simplex(points[1, 2]), atol=1e-7)


def test_points_on_the_simplex_are_fixed_and_ties_split_evenly():
    on_simplex = np.array([0.1, 0.6, 0.0, 0.3])
    np.testing.assert_allclose(project_simplex(on_simplex), on_simplex, atol=1e-7)
    np.testing.assert_allclose(project_simplex(np.array([5.0, 5.0, -1.0])), [0.5, 0.5, 0.0], atol=1e-7)


def test_huge_values_stay_finite():
    projected = np.asarray(project_simplex(np.array([1e9, -1e9, 3.0, 1e9])))
    assert np.all(np.isfinite(projected))
    np.testing.assert_allclose(projected.sum(), 1.0, atol=1e-5)
