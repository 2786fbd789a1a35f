"""What a loaded split is: its data set description, every label, and batched random access to images."""

from __future__ import annotations

import dataclasses

import numpy as np

from hrrl_jax.data.hierarchy import ConceptHierarchy
from hrrl_jax.data.image_readers import ArrayImages, ImageReader, SelectedRows

NO_AUGMENTATION = "none"
PAD_CROP_FLIP = "pad_crop_flip"  # Zero-pad, random crop back to size, horizontal flip (small images).
RANDOM_RESIZED_CROP_FLIP = "random_resized_crop_flip"  # Random box resized to the output, flip; eval: centre crop.
AUGMENTATIONS = (NO_AUGMENTATION, PAD_CROP_FLIP, RANDOM_RESIZED_CROP_FLIP)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static description of a data set, with the input pipeline's policy for it.

    Attributes:
      name: the registry name, e.g. `fashion_mnist` or `fashion_mnist_shift/lowres4`.
      num_classes: C; labels lie in [0, C).
      image_shape: (H, W, C) of the uint8 images `SplitData.get_images` returns.
      hierarchy: the concept map of the classes.
      mean, std: per-channel statistics of x / 255 on the training split, for (x / 255 - mean) / std.
      augmentation: one of AUGMENTATIONS, the training augmentation (and, for random resized crops, the
        evaluation crop: the centre `image_ops.IMAGENET_EVAL_CROP_FRACTION` of the stored image).
      padding: pixels of zero padding around each image before the random crop of PAD_CROP_FLIP.
      model_image_size: side of the images the pipeline emits, and the model is built for, when
        `config.dataset.image_size` is None; None: the stored size.
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    hierarchy: ConceptHierarchy
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentation: str = NO_AUGMENTATION
    padding: int = 0
    model_image_size: int | None = None

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
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"{self.name}: augmentation must be one of {AUGMENTATIONS}; got {self.augmentation!r}.")
        if self.padding < 0 or (self.augmentation == PAD_CROP_FLIP) != (self.padding > 0):
            raise ValueError(
                f"{self.name}: padding must be > 0 with {PAD_CROP_FLIP} and 0 otherwise; got {self.padding}."
            )

    def output_side(self, image_size: int | None) -> int | None:
        """The side of the square images the pipeline emits for `image_size` (None: the stored H x W)."""
        return image_size or self.model_image_size


class SplitData:
    """One split of a data set: `labels` (int32 [N]) in memory and images read in batches through `images`.

    `images` is a picklable `ImageReader` (an in-memory array for small data sets, TFDS records for large
    ones), so that input worker processes can read the split themselves.
    """

    def __init__(self, info: DatasetInfo, labels: np.ndarray, images: ImageReader) -> None:
        self.info = info
        self.labels = np.asarray(labels, dtype=np.int32)
        self.labels.setflags(write=False)
        self.images = images

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
        return cls(info, labels, ArrayImages(images))

    def __len__(self) -> int:
        return len(self.labels)

    def _checked(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        if indices.ndim != 1:
            raise ValueError(f"indices must be one-dimensional; got shape {indices.shape}.")
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(
                f"{self.info.name}: indices must lie in [0, {len(self)}); saw [{indices.min()}, {indices.max()}]."
            )
        return indices

    def get_images(self, indices: np.ndarray) -> np.ndarray:
        """The stored images of the given examples, uint8 [len(indices), H, W, C]."""
        return self.images.stored(self._checked(indices))

    def crop_and_resize(
        self, indices: np.ndarray, boxes: np.ndarray, size: int, flips: np.ndarray | None = None
    ) -> np.ndarray:
        """uint8 [len(indices), size, size, C]: box (top, left, height, width) of each stored image, resized and
        mirrored where `flips` (bool [len(indices)]; default none) is set.

        One resampling of the best source the reader has (the original JPEG for ImageNet), equal to
        cropping `get_images` and resizing it up to interpolation.
        """
        indices = self._checked(indices)
        boxes = np.asarray(boxes, dtype=np.int64)
        flips = np.zeros(len(indices), bool) if flips is None else np.asarray(flips, bool)
        if boxes.shape != (len(indices), 4) or flips.shape != (len(indices),):
            raise ValueError(
                f"boxes and flips must have shapes ({len(indices)}, 4) and ({len(indices)},); "
                f"got {boxes.shape} and {flips.shape}."
            )
        return self.images.crop_and_resize(indices, boxes, size, flips)

    def select(
        self, rows: np.ndarray, *, labels: np.ndarray | None = None, info: DatasetInfo | None = None
    ) -> SplitData:
        """The sub-split of the given rows (in that order), with optionally new labels and info."""
        rows = np.asarray(rows, dtype=np.int64)
        return SplitData(
            info or self.info,
            self.labels[rows] if labels is None else labels,
            SelectedRows(self.images, rows),
        )
