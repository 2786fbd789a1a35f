"""The steps' per-group sums (`jax.ops.segment_sum` under jit) against numpy."""

import jax
import jax.numpy as jnp
import numpy as np

from hrrl_jax.train.steps import worst_concept_loss

CONCEPT_OF_CLASS = np.array([0, 0, 1, 3, 3])  # concept 2 has no class, so it is never present


def test_worst_concept_loss_is_the_largest_present_concept_mean():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 1, 3, 4, 4, 0])  # class 2 (concept 1) absent from the batch
    losses = rng.uniform(0.0, 3.0, labels.size).astype(np.float32)
    concepts = CONCEPT_OF_CLASS[labels]
    expected = max(losses[concepts == k].mean() for k in np.unique(concepts))
    got = jax.jit(lambda x, y: worst_concept_loss(x, y, CONCEPT_OF_CLASS))(jnp.asarray(losses), jnp.asarray(labels))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
