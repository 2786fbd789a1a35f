"""Picklable readers of a split's images, so that input worker processes read the split themselves.

A reader gives the stored images of examples (`stored`) and boxes of them resized and mirrored
(`crop_and_resize`). In-memory arrays, row selections and appearance shifts wrap one another; TFDS records are
opened lazily in each process.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from hrrl_jax.data import pil_images, tfds_sources
from hrrl_jax.data.shifts import apply_shift
from hrrl_jax.errors import DataError


class ImageReader(abc.ABC):
    """Batched access to the uint8 images of a split, by example index (the caller checks the range)."""

    @abc.abstractmethod
    def stored(self, indices: np.ndarray) -> np.ndarray:
        """The stored images of the examples, uint8 [n, H, W, C]."""

    def crop_and_resize(self, indices: np.ndarray, boxes: np.ndarray, size: int, flips: np.ndarray) -> np.ndarray:
        """uint8 [n, size, size, C]: box (top, left, height, width) of each stored image resized in one PIL call,
        mirrored where `flips` (bool [n]) is set."""
        images = self.stored(indices)
        out = np.empty((len(indices), size, size, images.shape[3]), np.uint8)
        for row, (image, box, flip) in enumerate(zip(images, boxes, flips)):
            out[row] = pil_images.resize_box(image, box, size, flip=flip)
        return out


class ArrayImages(ImageReader):
    """Images held in memory, uint8 [N, H, W, C] (read-only)."""

    def __init__(self, images: np.ndarray) -> None:
        self._images = images
        self._images.setflags(write=False)

    def stored(self, indices: np.ndarray) -> np.ndarray:
        return self._images[indices]


class SelectedRows(ImageReader):
    """Rows of another reader, in the given order: example i is `rows[i]` of `base`."""

    def __init__(self, base: ImageReader, rows: np.ndarray) -> None:
        self._base, self._rows = base, np.asarray(rows, dtype=np.int64)

    def stored(self, indices: np.ndarray) -> np.ndarray:
        return self._base.stored(self._rows[indices])

    def crop_and_resize(self, indices: np.ndarray, boxes: np.ndarray, size: int, flips: np.ndarray) -> np.ndarray:
        return self._base.crop_and_resize(self._rows[indices], boxes, size, flips)


class ShiftedImages(ImageReader):
    """Another reader's images under `apply_shift(shift, seed)`, the noise of example i drawn with its index i."""

    def __init__(self, base: ImageReader, shift: str, seed: int) -> None:
        self._base, self._shift, self._seed = base, shift, seed

    def stored(self, indices: np.ndarray) -> np.ndarray:
        return apply_shift(self._base.stored(indices), self._shift, seed=self._seed, example_ids=indices)


class CentreSquareRecords(ImageReader):
    """A TFDS split of encoded images of any size whose stored image is the centre square of side `square_size`.

    The records are read with TFDS' image decoding skipped and decoded here by Pillow (so the decoder does not
    depend on whether OpenCV is installed); `crop_and_resize` resizes the decoded original once
    (`pil_images.crop_of_centre_square`). The data source is opened on first use in each process and never
    pickled. Under `tfds.testing.mock_data`, whose records cannot skip decoding without TensorFlow, the
    decoded arrays are used instead, with the same results.
    """

    def __init__(self, name: str, split: str, data_dir: str | None, square_size: int) -> None:
        self._name, self._split, self._data_dir, self._square_size = name, split, data_dir, square_size
        self._source: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_source": None}

    def _original(self, index: int) -> Any:
        if self._source is None:
            self._source = tfds_sources.open_undecoded_source(self._name, self._split, self._data_dir)
        try:
            return pil_images.open_image(self._source[int(index)]["image"])
        except Exception as error:  # A corrupt or unreadable record, named for the user.
            raise DataError(
                f"record {index} of {self._name} split {self._split!r} cannot be read or decoded "
                f"({type(error).__name__}: {error}); re-prepare the data set or drop the record."
            ) from error

    def stored(self, indices: np.ndarray) -> np.ndarray:
        size = self._square_size
        out = np.empty((len(indices), size, size, 3), np.uint8)
        for row, index in enumerate(indices):
            out[row] = pil_images.centre_square(self._original(index), size)
        return out

    def crop_and_resize(self, indices: np.ndarray, boxes: np.ndarray, size: int, flips: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), size, size, 3), np.uint8)
        for row, (index, box, flip) in enumerate(zip(indices, boxes, flips)):
            out[row] = pil_images.crop_of_centre_square(self._original(index), box, self._square_size, size, flip=flip)
        return out
