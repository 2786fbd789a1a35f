"""The small problem the transform's tests share: 6 classes in 4 concepts, and random batches of it."""

import jax.numpy as jnp
import numpy as np

CONCEPT_OF_CLASS = np.array([0, 0, 1, 2, 2, 3])
CONCEPT_SIZES = np.array([40, 10, 30, 20])


def random_batch(seed: int, size: int = 16) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """(per-example losses in [0, 3), labels of the 6 classes, 5-dimensional features), drawn from `seed`."""
    rng = np.random.default_rng(seed)
    return (
        jnp.asarray(rng.uniform(0.0, 3.0, size), jnp.float32),
        jnp.asarray(rng.integers(0, 6, size)),
        jnp.asarray(rng.normal(size=(size, 5)), jnp.float32),
    )
