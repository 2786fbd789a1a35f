"""Estimators: unbiasedness of f̂ and of the weighted loss by Monte Carlo over uniform minibatches; weight stats."""

import jax
import jax.numpy as jnp
import numpy as np

from hrrl_jax.robust import concept_loss_estimate, hierarchical_reweighting, loss_weights, weight_stats

NUM_EXAMPLES, BATCH, DRAWS = 60, 8, 4000
CONCEPT_OF_CLASS = np.array([0, 0, 1, 2, 2, 3])  # 6 classes, 4 concepts


def _finite_data_set():
    rng = np.random.default_rng(0)
    labels = rng.choice(6, NUM_EXAMPLES, p=[0.35, 0.25, 0.2, 0.1, 0.05, 0.05])
    losses = rng.gamma(2.0, 1.0, NUM_EXAMPLES).astype(np.float32) * (1 + CONCEPT_OF_CLASS[labels])
    concept = CONCEPT_OF_CLASS[labels]
    concept_sizes = np.bincount(concept, minlength=4)
    return jnp.asarray(labels), jnp.asarray(losses), concept, concept_sizes


def _uniform_batches(key: jax.Array) -> jax.Array:
    keys = jax.random.split(key, DRAWS)
    return jax.vmap(lambda k: jax.random.choice(k, NUM_EXAMPLES, (BATCH,), replace=False))(keys)


def test_concept_loss_estimate_is_unbiased():
    labels, losses, concept, concept_sizes = _finite_data_set()
    batches = _uniform_batches(jax.random.key(1))
    estimates = jax.vmap(lambda idx: concept_loss_estimate(losses[idx], labels[idx], CONCEPT_OF_CLASS, concept_sizes))(
        batches
    )
    full_data = np.array([np.asarray(losses)[concept == k].mean() for k in range(4)])
    standard_error = np.asarray(estimates).std(0) / np.sqrt(DRAWS)
    assert np.all(np.abs(np.asarray(estimates).mean(0) - full_data) < 4 * standard_error + 1e-6)
    # Most batches of 8 miss at least one concept, yet nothing is NaN.
    assert np.mean(np.any(np.asarray(estimates) == 0, axis=1)) > 0.3 and np.all(np.isfinite(estimates))


def test_weighted_minibatch_loss_is_unbiased_for_the_robust_objective():
    labels, losses, concept, concept_sizes = _finite_data_set()
    tx = hierarchical_reweighting(CONCEPT_OF_CLASS, concept_sizes, divergence="kl", lam=0.5, example_level="none")
    state = tx.init({})
    _, state = tx.update({}, state, per_example_loss=jnp.array([3.0, 0.5, 1.0, 2.0]), labels=jnp.array([0, 2, 3, 4]))
    distribution = np.asarray(jax.nn.softmax(np.log(np.full(4, 0.25)) + state.concept_losses / 0.5))
    batches = _uniform_batches(jax.random.key(2))
    weighted_means = jax.vmap(lambda idx: jnp.mean(loss_weights(state, labels[idx]) * losses[idx]))(batches)
    full_data = sum(distribution[k] * np.asarray(losses)[concept == k].mean() for k in range(4))
    standard_error = np.asarray(weighted_means).std() / np.sqrt(DRAWS)
    assert abs(float(np.mean(weighted_means)) - full_data) < 4 * standard_error


def test_estimate_with_example_weights_and_absent_concepts():
    concept_sizes = np.array([10, 20, 30, 40])
    estimate = concept_loss_estimate(
        jnp.array([1.0, 2.0, 4.0]),
        jnp.array([0, 1, 5]),
        CONCEPT_OF_CLASS,
        concept_sizes,
        weights=jnp.array([2.0, 1.0, 0.5]),
    )
    # (1/m) Σ (N/n_k) v_i ℓ_i with N = 100, m = 3; concepts 1 and 2 are absent.
    np.testing.assert_allclose(estimate, [(10 * 2 * 1 + 10 * 1 * 2) / 3, 0.0, 0.0, 2.5 * 0.5 * 4 / 3], rtol=1e-6)


def test_weight_stats_values():
    stats = weight_stats(jnp.array([1.0, 1.0, 1.0, 1.0]))
    np.testing.assert_allclose([stats["ess"], stats["entropy"], stats["max_weight"]], [1.0, np.log(4), 1.0], rtol=1e-6)
    stats = weight_stats(jnp.array([3.0, 1.0, 0.0, 0.0]))
    share = np.array([0.75, 0.25])
    np.testing.assert_allclose(
        [stats["ess"], stats["entropy"], stats["max_weight"]],
        [16 / (4 * 10), -np.sum(share * np.log(share)), 3.0],
        rtol=1e-6,
    )
    zero = weight_stats(jnp.zeros(5))
    assert float(zero["ess"]) == 0.0 and float(zero["entropy"]) == 0.0
    assert all(value.dtype == jnp.float32 and value.shape == () for value in stats.values())
