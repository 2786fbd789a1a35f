"""What a loaded split is: its data set description, every label, and batched random access to images."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from hrrl_jax.data.hierarchy import ConceptHierarchy


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static description of a data set.

    Attributes:
      name: the registry name, e.g. `fashion_mnist` or `fashion_mnist_shift/lowres4`.
      num_classes: C; labels lie in [0, C).
      image_shape: (H, W, C) of the uint8 images `SplitData.get_images` returns.
      hierarchy: the concept map of the classes.
      mean, std: per-channel statistics of x / 255 on the training split, for (x / 255 - mean) / std.
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    hierarchy: ConceptHierarchy
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.hierarchy.num_classes != self.num_classes:
            raise ValueError(
                f"{self.name}: num_classes is {self.num_classes} but the hierarchy has "
                f"{self.hierarchy.num_classes} classes."
            )
        channels = self.image_shape[-1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"{self.name}: mean {self.mean} and std {self.std} need one value per channel ({channels})."
            )


class SplitData:
    """One split of a data set: `labels` (int32 [N]) in memory and images read in batches.

    Images are read through `read_images(indices) -> uint8 [n, H, W, C]`: an in-memory array for small
    data sets, a TFDS data source for large ones.
    """

    def __init__(self, info: DatasetInfo, labels: np.ndarray, read_images: Callable[[np.ndarray], np.ndarray]) -> None:
        self.info = info
        self.labels = np.asarray(labels, dtype=np.int32)
        self.labels.setflags(write=False)
        self._read_images = read_images

    @classmethod
    def from_arrays(cls, info: DatasetInfo, images: np.ndarray, labels: np.ndarray) -> SplitData:
        """A split held in memory: images uint8 [N, H, W, C]."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.shape[1:] != info.image_shape:
            raise ValueError(
                f"{info.name}: images must be uint8 of shape [N, *{info.image_shape}]; "
                f"got {images.dtype} {images.shape}."
            )
        if len(images) != len(labels):
            raise ValueError(f"{info.name}: {len(images)} images but {len(labels)} labels.")
        images.setflags(write=False)
        return cls(info, labels, lambda indices: images[indices])

    def __len__(self) -> int:
        return len(self.labels)

    def get_images(self, indices: np.ndarray) -> np.ndarray:
        """The images of the given examples, uint8 [len(indices), H, W, C]."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.ndim != 1:
            raise ValueError(f"indices must be one-dimensional; got shape {indices.shape}.")
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(
                f"{self.info.name}: indices must lie in [0, {len(self)}); saw [{indices.min()}, {indices.max()}]."
            )
        return self._read_images(indices)

    def select(
        self, rows: np.ndarray, *, labels: np.ndarray | None = None, info: DatasetInfo | None = None
    ) -> SplitData:
        """The sub-split of the given rows (in that order), with optionally new labels and info."""
        rows = np.asarray(rows, dtype=np.int64)
        return SplitData(
            info or self.info,
            self.labels[rows] if labels is None else labels,
            lambda indices: self._read_images(rows[indices]),
        )
