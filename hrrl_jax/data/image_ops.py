"""Batch image operations of the input pipeline: resizing, crops and flips vectorised over the batch, and the
crop boxes of ImageNet's augmentation.

All take float32 or uint8 NHWC batches and per-example parameters drawn by the caller, so the pipeline
controls every random number (deterministic given seed and step).
"""

from __future__ import annotations

import numpy as np

IMAGENET_MIN_AREA = 0.25
IMAGENET_EVAL_CROP_FRACTION = 0.875


def _interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] weights of a triangle (bilinear) filter, widened when shrinking (antialiasing).

    Output pixel o is centred at c_o = (o + 1/2) in/out - 1/2 in input coordinates and takes
    w_oi ∝ max(0, 1 - |i - c_o| / s), s = max(1, in/out), rows normalised to sum to 1.
    """
    scale = in_size / out_size
    support = max(scale, 1.0)
    centres = (np.arange(out_size) + 0.5) * scale - 0.5
    weights = np.maximum(0.0, 1.0 - np.abs(np.arange(in_size)[None, :] - centres[:, None]) / support)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def resize_bilinear(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 [B, height, width, C]: separable bilinear resize of the batch (antialiased when shrinking)."""
    images = np.asarray(images, dtype=np.float32)
    if images.shape[1:3] == (height, width):
        return images
    rows = _interpolation_matrix(images.shape[1], height)
    cols = _interpolation_matrix(images.shape[2], width)
    return np.einsum("oh,bhwc,pw->bopc", rows, images, cols, optimize=True)


def crop_with_padding(images: np.ndarray, offsets: np.ndarray, padding: int) -> np.ndarray:
    """Zero-pads each image by `padding` pixels and crops H x W at `offsets` (int [B, 2] in [0, 2 padding])."""
    batch, height, width, _ = images.shape
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    rows = offsets[:, 0, None] + np.arange(height)[None, :]
    cols = offsets[:, 1, None] + np.arange(width)[None, :]
    return padded[np.arange(batch)[:, None, None], rows[:, :, None], cols[:, None, :]]


def flip_horizontally(images: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """Mirrors the images where `flips` (bool [B]) is set."""
    return np.where(flips[:, None, None, None], images[:, :, ::-1], images)


def random_resized_crop_boxes(rng: np.random.Generator, batch: int, size: int) -> np.ndarray:
    """Boxes (top, left, height, width), int [batch, 4], inside a size x size image.

    Area fraction uniform in [IMAGENET_MIN_AREA, 1], aspect ratio log-uniform in [3/4, 4/3]: a light
    form of the Inception crop, taken from the stored centre square rather than the full image.
    """
    area = rng.uniform(IMAGENET_MIN_AREA, 1.0, batch)
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), batch))
    heights = np.clip(np.rint(size * np.sqrt(area / ratio)), 1, size).astype(np.int64)
    widths = np.clip(np.rint(size * np.sqrt(area * ratio)), 1, size).astype(np.int64)
    tops = np.floor(rng.uniform(0.0, 1.0, batch) * (size - heights + 1)).astype(np.int64)
    lefts = np.floor(rng.uniform(0.0, 1.0, batch) * (size - widths + 1)).astype(np.int64)
    return np.stack([tops, lefts, heights, widths], axis=1)


def centre_crop_boxes(batch: int, stored_size: int) -> np.ndarray:
    """The evaluation box: the centre IMAGENET_EVAL_CROP_FRACTION of the stored square, int [batch, 4]."""
    crop = round(stored_size * IMAGENET_EVAL_CROP_FRACTION)
    start = (stored_size - crop) // 2
    return np.tile(np.array([start, start, crop, crop], dtype=np.int64), (batch, 1))
