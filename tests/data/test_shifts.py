"""Appearance shifts: deterministic, shape-preserving, different from the base, batch-independent."""

import numpy as np
import pytest

from hrrl_jax.data import KNOWN_SHIFTS, apply_shift, image_ops, load_split, shifts


@pytest.fixture(scope="module")
def digits_test_images() -> np.ndarray:
    return load_split("digits", "test").get_images(np.arange(40))


@pytest.mark.parametrize("shift", KNOWN_SHIFTS)
def test_shift_is_deterministic_and_changes_images(digits_test_images, shift):
    first = apply_shift(digits_test_images, shift, seed=3)
    second = apply_shift(digits_test_images, shift, seed=3)
    assert first.dtype == np.uint8 and first.shape == digits_test_images.shape
    np.testing.assert_array_equal(first, second)
    changed = np.mean(first != digits_test_images)
    assert changed > 0.2, f"{shift} changed only {changed:.0%} of the pixels"


def test_noise_depends_on_seed_and_not_on_batching(digits_test_images):
    whole = apply_shift(digits_test_images, "noise", seed=1)
    assert not np.array_equal(whole, apply_shift(digits_test_images, "noise", seed=2))
    ids = np.arange(len(digits_test_images))
    halves = np.concatenate(
        [
            apply_shift(digits_test_images[:15], "noise", seed=1, example_ids=ids[:15]),
            apply_shift(digits_test_images[15:], "noise", seed=1, example_ids=ids[15:]),
        ]
    )
    np.testing.assert_array_equal(whole, halves)
    residual = whole.astype(float) - digits_test_images
    interior = (digits_test_images > 40) & (digits_test_images < 215)  # away from clipping
    assert abs(residual[interior].std() - 25.5) < 2.5


@pytest.mark.parametrize("shift", KNOWN_SHIFTS)
def test_every_shift_gives_each_image_the_same_bytes_whatever_the_batch(digits_test_images, shift):
    """A split shifted whole, in batches of 7 or one image at a time reads the same bytes (apply_shift works
    through a batch a few images at a time; a batch's size must not change an image's rounding)."""
    ids = np.arange(len(digits_test_images))
    whole = apply_shift(digits_test_images, shift, seed=1)
    for size in (7, 1):
        batches = [
            apply_shift(digits_test_images[start : start + size], shift, seed=1, example_ids=ids[start : start + size])
            for start in range(0, len(ids), size)
        ]
        np.testing.assert_array_equal(np.concatenate(batches), whole, err_msg=f"{shift} in batches of {size}")


def test_shift_values():
    constant = np.full((2, 8, 8, 1), 100, np.uint8)
    for shift in ("lowres2", "lowres4", "blur"):
        np.testing.assert_array_equal(apply_shift(constant, shift, seed=0), constant)
    checker = np.zeros((1, 8, 8, 1), np.uint8)
    checker[0, ::2, ::2] = checker[0, 1::2, 1::2] = 200
    np.testing.assert_array_equal(apply_shift(checker, "lowres2", seed=0), np.full_like(checker, 100))
    square = np.zeros((1, 9, 9, 1), np.uint8)
    square[0, 4, 1:8] = 255  # a horizontal bar becomes a tilted one
    rotated = apply_shift(square, "rotate30", seed=0)[0, :, :, 0]
    assert rotated[4, 4] > 200 and rotated[4, 1] < 128 and rotated[4, 7] < 128


@pytest.mark.parametrize("factor", [2, 4])
def test_low_resolution_block_means_are_the_padded_block_means_to_the_bit(factor):
    """The integer block sums, divided once, equal the float mean of each edge-replicated factor x factor block
    exactly, for sides that the factor divides and sides it does not."""
    images = np.random.default_rng(factor).integers(0, 256, (3, 30, 33, 3)).astype(np.uint8)
    pad_h, pad_w = (-30) % factor, (-33) % factor
    padded = np.pad(images.astype(np.float32), ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    n, height, width, channels = padded.shape
    blocks = padded.reshape(n, height // factor, factor, width // factor, factor, channels)
    expected = image_ops.resize_bilinear(blocks.mean(axis=(2, 4)), 30, 33)
    np.testing.assert_array_equal(shifts._restore_low_resolution(images, factor), expected)


def test_unknown_shift_and_wrong_dtype():
    images = np.zeros((1, 8, 8, 1), np.uint8)
    with pytest.raises(ValueError, match="known shifts: lowres2"):
        apply_shift(images, "sepia", seed=0)
    with pytest.raises(ValueError, match="uint8"):
        apply_shift(images.astype(np.float32), "blur", seed=0)
