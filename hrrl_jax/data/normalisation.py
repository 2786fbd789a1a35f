"""The images' normalisation, (x / 255 - mean) / std per channel, done on the devices inside the jitted steps.

The input pipeline emits uint8 (a quarter of the bytes of float32 to copy to the devices); the train step,
the eval step and feature extraction call `normalise_images` first, with the data set's statistics.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def normalise_images(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """float32 (images / 255 - mean) / std, per channel (the last axis), of uint8 (or float) images.

    The same float32 operations, in the same order, as the host normalisation the pipeline did before.
    """
    scaled = images.astype(jnp.float32) * np.float32(1 / 255)
    return (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
