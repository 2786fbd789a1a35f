"""Appearance shifts for the example-level transfer targets: deterministic numpy/scipy image transforms.

Each shift keeps the concepts and changes the look of the images (docs/method.md §8):
  lowres2, lowres4  down-sample by k (mean over k x k blocks), then restore the size (the pipeline's bilinear);
  rotate30          rotate by 30 degrees about the centre (bilinear, black corners);
  blur              Gaussian blur with sigma = 1 pixel;
  noise             additive Gaussian noise with std 0.1 of the range (25.5 grey levels), clipped.
The output is uint8 NHWC of the input's shape, the same for the same input and seed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hrrl_jax.data import image_ops
from hrrl_jax.schema import KNOWN_SHIFTS

_NOISE_STD = 0.1 * 255.0
# Images shifted at a time: a batch of 512 stored 256-px ImageNet squares has float32 intermediates of 400 MB that
# miss every cache and fault in fresh pages; 16 at a time reuse a few MB (lowres4 on one core: 5.27 ms an image in
# a first call of 512, 1.45 16 at a time, the same bytes out; BENCHMARKS.md, benchmarks/shift_throughput.py).
_IMAGES_AT_A_TIME = 16


def _restore_low_resolution(images: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor blocks (edges padded by replication), then bilinear back to H x W.

    Each block is summed as integers (uint16 holds 16 x 16 blocks of 255) and divided once: the float mean of
    the block to the bit, in about a third of its time (lowres4 of 256-px images in batches of 512: 2.0 instead of
    5.6 ms an image on one core, the same bytes out)."""
    n, height, width, channels = images.shape
    pad_h, pad_w = (-height) % factor, (-width) % factor
    padded = np.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    row_sums = sum(padded[:, offset::factor].astype(np.uint16) for offset in range(factor))
    block_sums = sum(row_sums[:, :, offset::factor] for offset in range(factor))
    low = block_sums.astype(np.float32) / np.float32(factor * factor)
    return image_ops.resize_bilinear(low, height, width)


def _rotate(images: np.ndarray, degrees: float) -> np.ndarray:
    import scipy.ndimage  # Imported on use: most processes never rotate or blur (0.3 s of start-up).

    return scipy.ndimage.rotate(
        images.astype(np.float32), degrees, axes=(2, 1), reshape=False, order=1, mode="constant", cval=0.0
    )


def _blur(images: np.ndarray, sigma: float) -> np.ndarray:
    import scipy.ndimage

    return scipy.ndimage.gaussian_filter(images.astype(np.float32), sigma=(0, sigma, sigma, 0), mode="nearest")


_DETERMINISTIC_SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "lowres2": lambda images: _restore_low_resolution(images, 2),
    "lowres4": lambda images: _restore_low_resolution(images, 4),
    "rotate30": lambda images: _rotate(images, 30.0),
    "blur": lambda images: _blur(images, 1.0),
}  # With "noise" (drawn per example), every one of KNOWN_SHIFTS (tested).


def apply_shift(images: np.ndarray, shift: str, *, seed: int, example_ids: np.ndarray | None = None) -> np.ndarray:
    """Applies the appearance shift `shift` to uint8 NHWC images.

    Args:
      images: uint8 [N, H, W, C].
      shift: one of KNOWN_SHIFTS.
      seed: seed of the random shifts (`noise`); the others ignore it.
      example_ids: int [N], the identity of each row for the noise draw (default 0..N-1). Row r gets
        the noise of `np.random.default_rng([seed, example_ids[r]])`, so a split shifted whole or in
        batches gets the same values.

    Returns:
      uint8 [N, H, W, C], rounded and clipped to [0, 255].
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"apply_shift expects uint8 images [N, H, W, C]; got {images.dtype} of shape {images.shape}.")
    if shift not in KNOWN_SHIFTS:
        raise ValueError(f"unknown shift {shift!r}; known shifts: {', '.join(KNOWN_SHIFTS)}.")
    ids = np.arange(len(images)) if example_ids is None or shift != "noise" else np.asarray(example_ids)
    if ids.shape != (len(images),):
        raise ValueError(f"example_ids has shape {ids.shape}; expected ({len(images)},).")
    shifted = np.empty(images.shape, np.uint8)
    for start in range(0, len(images), _IMAGES_AT_A_TIME):
        rows = slice(start, start + _IMAGES_AT_A_TIME)
        shifted[rows] = _shifted_uint8(images[rows], shift, seed, ids[rows])
    return shifted


def _shifted_uint8(images: np.ndarray, shift: str, seed: int, example_ids: np.ndarray) -> np.ndarray:
    """`apply_shift` of a few images (`example_ids` are used by `noise` alone): the shift in float32, rounded and
    clipped in place."""
    if shift == "noise":
        noise = np.stack(
            [np.random.default_rng([seed, int(i)]).normal(0.0, _NOISE_STD, images.shape[1:]) for i in example_ids]
        )
        shifted = images.astype(np.float32) + noise.astype(np.float32)
    else:
        shifted = np.asarray(_DETERMINISTIC_SHIFTS[shift](images), np.float32)
    np.rint(shifted, out=shifted)
    np.clip(shifted, 0, 255, out=shifted)
    return shifted.astype(np.uint8)
