"""Per-image work with PIL: decoding, ImageNet's stored centre square, and a box resized in one call.

ImageNet's stored image is the centre square of side S of the original: the shorter side resized to S
(bilinear, antialiased), then the centre S x S. A box in the square's coordinates is a box of the original
scaled back, so `crop_of_centre_square` resizes the decoded original once and gives what cropping the stored
square and resizing the crop gives, up to interpolation, at the cost of one resampling instead of two.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

RESAMPLE = Image.Resampling.BILINEAR  # A triangle filter, widened when shrinking (antialiased).


def open_image(value: Any) -> Image.Image:
    """An image feature as an RGB or grey PIL image: encoded bytes decoded by Pillow, uint8 arrays wrapped."""
    if isinstance(value, (bytes, np.bytes_)):
        image = Image.open(io.BytesIO(bytes(value)))
        image.load()  # Decodes here, so that a corrupt file fails where its caller can name it.
        return image if image.mode in ("RGB", "L") else image.convert("RGB")
    array = np.asarray(value, dtype=np.uint8)
    return Image.fromarray(array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array)


def _as_array(image: Image.Image, channels: int) -> np.ndarray:
    """uint8 [H, W, channels] of an RGB or grey image (grey repeated to three channels when asked)."""
    if channels == 3 and image.mode != "RGB":
        image = image.convert("RGB")
    array = np.asarray(image)
    return array[:, :, None] if array.ndim == 2 else array


def _square_geometry(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(resized width, resized height, left, top) of the centre square of side `size`, in the resized image."""
    scale = size / min(width, height)
    new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
    return new_width, new_height, (new_width - size) // 2, (new_height - size) // 2


def centre_square(image: Image.Image, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: the shorter side resized to `size`, then the centre size x size (grey made RGB)."""
    new_width, new_height, left, top = _square_geometry(*image.size, size)
    resized = image.resize((new_width, new_height), RESAMPLE)
    return _as_array(resized.crop((left, top, left + size, top + size)), 3)


def crop_of_centre_square(
    image: Image.Image, box: np.ndarray, square_size: int, size: int, *, flip: bool = False
) -> np.ndarray:
    """uint8 [size, size, 3]: box (top, left, height, width) of the image's centre square, resized from the
    original (and mirrored if `flip`).

    The box is in the coordinates of `centre_square(image, square_size)`; it is mapped back to the original
    and resized to size x size in one `Image.resize` call.
    """
    width, height = image.size
    new_width, new_height, left, top = _square_geometry(width, height, square_size)
    box_top, box_left, box_height, box_width = (int(value) for value in box)
    x_scale, y_scale = width / new_width, height / new_height
    original_box = (
        (left + box_left) * x_scale,
        (top + box_top) * y_scale,
        (left + box_left + box_width) * x_scale,
        (top + box_top + box_height) * y_scale,
    )
    return _as_array(_flipped(image.resize((size, size), RESAMPLE, box=original_box), flip), 3)


def resize_box(image: np.ndarray, box: np.ndarray, size: int, *, flip: bool = False) -> np.ndarray:
    """uint8 [size, size, C]: box (top, left, height, width) of a uint8 [H, W, C] image resized in one call (and
    mirrored if `flip`)."""
    top, left, height, width = (int(value) for value in box)
    resized = open_image(image).resize((size, size), RESAMPLE, box=(left, top, left + width, top + height))
    return _as_array(_flipped(resized, flip), image.shape[2])


def _flipped(image: Image.Image, flip: bool) -> Image.Image:
    """The image mirrored left to right if `flip` (in PIL: a tenth of the cost of numpy's reversed copy)."""
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else image
