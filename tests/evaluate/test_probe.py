"""Tests of the linear probe: recovery of a known rule, l2 chosen without test data, exactness, determinism.

Every fit uses the same feature-matrix shape, so the L-BFGS program compiles once for the whole file.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from hrrl_jax.evaluate import probe

NUM_EXAMPLES, DIMENSION, NUM_CLASSES = 600, 8, 4


def _linear_rule_data(seed: int):
    """Features ~ N(0, I) with labels from a fixed linear rule argmax(x W*): linearly separable."""
    rng = np.random.default_rng(seed)
    true_weights = np.random.default_rng(123).normal(size=(DIMENSION, NUM_CLASSES))
    features = rng.normal(size=(NUM_EXAMPLES, DIMENSION)).astype(np.float32) * 3.0 + 1.0
    return features, np.argmax(features @ true_weights, axis=1)


@pytest.fixture(scope="module")
def train_and_test():
    return _linear_rule_data(seed=0), _linear_rule_data(seed=1)


def test_probe_recovers_a_known_linear_rule(train_and_test):
    (train_features, train_labels), (test_features, test_labels) = train_and_test
    result = probe.evaluate_linear_probe(
        train_features, train_labels, test_features, test_labels, num_classes=NUM_CLASSES
    )
    assert result["test_accuracy"] > 0.95  # chance is 1/4
    assert result["validation_accuracy"] > 0.9
    assert result["l2"] in probe.DEFAULT_L2_GRID
    assert [l2 for l2, _ in result["validation_curve"]] == list(probe.DEFAULT_L2_GRID)


def test_l2_choice_never_looks_at_the_test_set(train_and_test):
    (train_features, train_labels), (test_features, test_labels) = train_and_test
    grid = (1e-3, 1e-1, 1.0, 10.0)
    honest = probe.evaluate_linear_probe(
        train_features, train_labels, test_features, test_labels, num_classes=NUM_CLASSES, l2_grid=grid
    )
    scrambled_labels = np.random.default_rng(7).permutation(test_labels)
    scrambled = probe.evaluate_linear_probe(
        train_features, train_labels, -test_features, scrambled_labels, num_classes=NUM_CLASSES, l2_grid=grid
    )
    assert scrambled["l2"] == honest["l2"]
    assert scrambled["validation_curve"] == honest["validation_curve"]
    assert scrambled["test_accuracy"] < honest["test_accuracy"] - 0.3


def test_validation_picks_the_strength_that_generalises(train_and_test):
    (train_features, train_labels), _ = train_and_test
    # l2 = 1000 shrinks W to ~0, so its validation accuracy is that of the bias alone.
    fitted = probe.fit_linear_probe(train_features, train_labels, num_classes=NUM_CLASSES, l2_grid=(1e3, 1e-4))
    curve = dict(fitted.validation_curve)
    assert curve[1e3] < 0.5 < 0.9 < curve[1e-4]
    assert fitted.l2 == 1e-4
    assert fitted.validation_accuracy == curve[1e-4]


def test_probe_is_deterministic(train_and_test):
    (train_features, train_labels), _ = train_and_test
    first = probe.fit_linear_probe(train_features, train_labels, num_classes=NUM_CLASSES, seed=3)
    second = probe.fit_linear_probe(train_features, train_labels, num_classes=NUM_CLASSES, seed=3)
    np.testing.assert_array_equal(np.asarray(first.weights), np.asarray(second.weights))
    np.testing.assert_array_equal(np.asarray(first.bias), np.asarray(second.bias))
    assert first.validation_curve == second.validation_curve


def test_solver_matches_a_reference_solver_and_ignores_zero_weight_rows():
    rng = np.random.default_rng(5)
    features = rng.normal(size=(NUM_EXAMPLES, DIMENSION)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, NUM_EXAMPLES)  # noisy labels: a unique, finite optimum
    kept = rng.random(NUM_EXAMPLES) < 0.7
    l2 = 1e-2
    weights, bias = probe.fit_logistic_regression(
        jnp.asarray(features),
        jnp.asarray(labels),
        jnp.asarray(kept, jnp.float32),
        jnp.float32(l2),
        (jnp.zeros((DIMENSION, NUM_CLASSES)), jnp.zeros(NUM_CLASSES)),
        max_iterations=300,
        tolerance=1e-6,
    )
    # scikit-learn minimises Σ CE + ‖W‖² / (2C), i.e. our objective times n with C = 1 / (l2 n).
    reference = LogisticRegression(C=1.0 / (l2 * kept.sum()), tol=1e-10, max_iter=10_000)
    reference.fit(features[kept], labels[kept])
    logits = features @ np.asarray(weights) + np.asarray(bias)
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    np.testing.assert_allclose(probabilities, reference.predict_proba(features), atol=2e-3)


def test_stratified_split_is_disjoint_complete_and_per_class():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 1)
    fit, validation = probe.stratified_validation_split(labels, 0.2, seed=0)
    assert np.intersect1d(fit, validation).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([fit, validation])), np.arange(16))
    assert np.bincount(labels[validation], minlength=3).tolist() == [2, 1, 0]


def test_errors_say_what_was_wrong(train_and_test):
    (train_features, train_labels), _ = train_and_test
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*\[0, 3\]"):
        probe.fit_linear_probe(train_features, train_labels, num_classes=3)
    with pytest.raises(ValueError, match="2-D array"):
        probe.fit_linear_probe(train_features[:, 0], train_labels, num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match=r"validation_fraction must be in \(0, 1\); got 1.5"):
        probe.fit_linear_probe(train_features, train_labels, num_classes=NUM_CLASSES, validation_fraction=1.5)
