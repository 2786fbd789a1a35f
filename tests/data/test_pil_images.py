"""One-call crops of ImageNet's stored centre square from the original: the geometry of two resamplings in one.

On a smooth image, resampling differences are far below a grey level, while a box 2 px off (in the stored
square's 256-px coordinates) changes the crop by 3 or more grey levels on average: so agreement within 1 grey
level with the two-step path (centre square, then crop and resize) shows the box is mapped back correctly.
"""

import io

import numpy as np
import pytest
from PIL import Image

from hrrl_jax.data import image_ops, pil_images
from hrrl_jax.data.image_readers import CentreSquareRecords
from hrrl_jax.errors import DataError

SQUARE, OUT = 256, 224


def _smooth_photo(width: int, height: int) -> np.ndarray:
    """uint8 [height, width, 3] of slow sinusoids (periods 90-200 px), so interpolation errors stay tiny."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    red = 128 + 90 * np.sin(2 * np.pi * x / 170 + 0.3) * np.cos(2 * np.pi * y / 130)
    green = 128 + 90 * np.cos(2 * np.pi * (x + y) / 200)
    blue = 128 + 60 * np.sin(2 * np.pi * x / 90)
    return np.clip(np.rint(np.stack([red, green, blue], -1)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("width, height", [(500, 375), (375, 500), (500, 333), (640, 480)])
def test_crop_of_the_centre_square_from_the_original_is_the_two_step_crop(width, height):
    photo = Image.fromarray(_smooth_photo(width, height))
    square = pil_images.centre_square(photo, SQUARE)
    assert square.shape == (SQUARE, SQUARE, 3)
    boxes = np.concatenate(
        [
            image_ops.random_resized_crop_boxes(np.random.default_rng(0), 6, SQUARE),
            image_ops.centre_crop_boxes(1, SQUARE),
        ]
    )
    for box in boxes:
        top, left, box_height, box_width = box
        two_step = image_ops.resize_bilinear(square[None, top : top + box_height, left : left + box_width], OUT, OUT)
        one_step = pil_images.crop_of_centre_square(photo, box, SQUARE, OUT)
        assert one_step.shape == (OUT, OUT, 3) and one_step.dtype == np.uint8
        assert np.abs(one_step - two_step[0]).mean() < 1.0, box
        mirrored = pil_images.crop_of_centre_square(photo, box, SQUARE, OUT, flip=True)
        np.testing.assert_array_equal(mirrored, one_step[:, ::-1])


def test_resize_box_of_a_stored_array_keeps_its_channels():
    grey = _smooth_photo(40, 30)[:, :, :1]
    out = pil_images.resize_box(grey, np.array([5, 10, 20, 20]), 16)
    assert out.shape == (16, 16, 1) and out.dtype == np.uint8
    two_step = image_ops.resize_bilinear(grey[None, 5:25, 10:30], 16, 16)[0]
    assert np.abs(out - two_step).mean() < 0.5  # At the box's edges PIL's filter also reads the pixels beyond it.


def test_encoded_images_decode_with_their_channels():
    grey = _smooth_photo(20, 10)[:, :, 1]
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    image = pil_images.open_image(buffer.getvalue())
    assert image.mode == "L" and image.size == (20, 10)
    np.testing.assert_array_equal(np.asarray(image), grey)
    square = pil_images.centre_square(image, 8)  # ImageNet's grey JPEGs become RGB, as its colour ones are.
    assert square.shape == (8, 8, 3) and np.array_equal(square[:, :, 0], square[:, :, 2])


def test_an_undecodable_record_is_a_data_error_naming_it():
    reader = CentreSquareRecords("imagenet2012", "train", None, SQUARE)
    reader._source = [{"image": b"\xff\xd8 not a jpeg"}]  # In place of the TFDS source it would open.
    with pytest.raises(DataError, match=r"record 0 of imagenet2012 split 'train' cannot be read or decoded"):
        reader.crop_and_resize(np.array([0]), np.array([[0, 0, 10, 10]]), 8, np.array([False]))
