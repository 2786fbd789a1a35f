"""The on-device normalisation (x / 255 - mean) / std against the host one the pipeline did before.

Not bit-identical, and not within a fixed number of ulps: XLA (on CPU, and GPUs alike) contracts x·c − m into one
fused multiply-add and divides by multiplying with 1/std, and near x/255 = mean the subtraction cancels, so a
difference of one rounding of x·c is many ulps of the small result. Each float32 operation rounds once (relative
error u = 2^-24): the host's product, difference and quotient, the device's fused multiply-add, reciprocal and
product. To first order in u the two results differ by at most u (|x·c| + 5 |x·c − m|) / std, the bound tested.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrrl_jax.data import normalise_images
from hrrl_jax.data.loaders import CIFAR100_INFO, FASHION_MNIST_INFO, IMAGENET_INFO

UNIT_ROUNDOFF = 2.0**-24


def _host_normalisation(images: np.ndarray, mean: tuple, std: tuple) -> np.ndarray:
    """The input pipeline's float32 normalisation before it moved into the jitted steps."""
    mean32, std32 = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return ((images.astype(np.float32) * np.float32(1 / 255) - mean32) / std32).astype(np.float32)


@pytest.mark.parametrize("info", [FASHION_MNIST_INFO, CIFAR100_INFO, IMAGENET_INFO], ids=lambda info: info.name)
def test_device_normalisation_equals_the_host_one_to_float32_rounding(info):
    channels = info.image_shape[2]
    every_level = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None, None, None], (256, 2, 3, channels))
    device = np.asarray(jax.jit(lambda x: normalise_images(x, info.mean, info.std))(every_level))
    assert device.dtype == np.float32 and device.shape == every_level.shape
    host = _host_normalisation(every_level, info.mean, info.std)
    scaled = every_level.astype(np.float64) / 255
    mean, std = np.asarray(info.mean), np.asarray(info.std)
    bound = UNIT_ROUNDOFF * (scaled + 5 * np.abs(scaled - mean)) / std
    assert np.all(np.abs(device.astype(np.float64) - host) <= 1.01 * bound)


def test_hand_computed_values_and_float_input():
    mean, std = (0.5, 0.25, 0.0), (0.25, 0.5, 1.0)
    images = jnp.asarray([[[[255, 0, 51]]]], jnp.uint8)  # One pixel: 1.0, 0.0, 0.2 after / 255.
    got = np.asarray(jax.jit(lambda x: normalise_images(x, mean, std))(images))
    np.testing.assert_allclose(got[0, 0, 0], [2.0, -0.5, 0.2], rtol=1e-6)
    as_float = np.asarray(normalise_images(images.astype(jnp.float32), mean, std))
    np.testing.assert_array_equal(as_float, normalise_images(images, mean, std))  # uint8 is cast first.
