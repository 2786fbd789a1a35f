"""The batch of a step: a pure, picklable function of (seed, step, process index), so any number of worker
processes build the same batches and a resumed run needs only its step.

Training order: epoch e = step // steps_per_epoch visits the split in the permutation drawn from
`np.random.default_rng([seed, 0, e])`; step s takes slice s % steps_per_epoch of it, and the last
len(split) % global_batch_size examples of each permutation are dropped (every batch is full, every
epoch has the same steps). Augmentation draws from `np.random.default_rng([seed, 1, s])` for the whole
global batch, so a resumed run, and any number of processes, see the same examples and augmentations.

Transforms by `DatasetInfo.augmentation`: `none` resizes to the output size; `pad_crop_flip` resizes, zero-pads
by `DatasetInfo.padding`, crops at a random offset and flips; `random_resized_crop_flip` (ImageNet) resizes a
random box of the stored image (`image_ops.random_resized_crop_boxes`) to the output size in one step from the
original and flips, and for evaluation resizes the centre 87.5 % box. Images stay uint8; the jitted step
normalises them (`hrrl_jax.data.normalisation`).

Multi-host: each process builds rows [p L, (p + 1) L) of the global batch, L = B / process_count.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hrrl_jax.data import image_ops
from hrrl_jax.data.split_data import NO_AUGMENTATION, PAD_CROP_FLIP, RANDOM_RESIZED_CROP_FLIP, SplitData
from hrrl_jax.errors import DataError

HostBatch = dict[str, np.ndarray]
_ORDER_STREAM, _AUGMENT_STREAM = 0, 1


class BatchMaker:
    """This process's rows of the training batch of a step (`train_batch`) and of evaluation batch i (`eval_batch`).

    Training batches are `{"image": uint8 [L, H, W, C], "label": int32 [L]}`; evaluation batches add `"mask"`
    (float32 [L], 1 for real examples, 0 for the padding of the last batch) and go through the split once in
    order, without augmentation.

    Args:
      split: the data.
      global_batch_size: B, over all processes.
      seed: seed of the order and the augmentation.
      output_shape: (H, W, C) of the images out.
      augment: whether to augment training batches (as `split.info.augmentation` says).
      process_index, process_count: this process and how many build the global batch.
    """

    def __init__(
        self,
        split: SplitData,
        *,
        global_batch_size: int,
        seed: int,
        output_shape: tuple[int, int, int],
        augment: bool,
        process_index: int,
        process_count: int,
    ) -> None:
        self.split = split
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.output_shape = output_shape
        self.augmentation = split.info.augmentation if augment else NO_AUGMENTATION
        local = global_batch_size // process_count
        self.rows = slice(process_index * local, (process_index + 1) * local)
        self.steps_per_epoch = len(split) // global_batch_size
        self._epoch_cache: tuple[int, np.ndarray] | None = None

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            order = np.random.default_rng([self.seed, _ORDER_STREAM, epoch]).permutation(len(self.split))
            self._epoch_cache = (epoch, order)
        return self._epoch_cache[1]

    def train_batch(self, step: int) -> HostBatch:
        """The training batch of `step` (this process's rows), as numpy."""
        step = int(step)
        if step < 0:
            raise ValueError(f"step must be >= 0; got {step}.")
        if self.steps_per_epoch == 0:
            raise DataError(
                f"{self.split.info.name} has {len(self.split)} examples, fewer than one batch of "
                f"{self.global_batch_size}; lower the batch size."
            )
        epoch, position = divmod(step, self.steps_per_epoch)
        batch_indices = self._epoch_order(epoch)[
            position * self.global_batch_size : (position + 1) * self.global_batch_size
        ]
        indices = batch_indices[self.rows]
        rng = np.random.default_rng([self.seed, _AUGMENT_STREAM, step])
        images = _with_context(lambda: self._images(indices, rng, train=True), f"the training batch of step {step}")
        return {"image": images, "label": self.split.labels[indices].astype(np.int32)}

    @property
    def num_eval_batches(self) -> int:
        """Evaluation batches in one pass: ceil(N / B), the last one padded."""
        return -(-len(self.split) // self.global_batch_size)

    def eval_batch(self, index: int) -> HostBatch:
        """Evaluation batch `index` (this process's rows), padded past the end with mask 0."""
        index = int(index)
        if not 0 <= index < self.num_eval_batches:
            raise ValueError(f"evaluation batch index must lie in [0, {self.num_eval_batches}); got {index}.")
        positions = np.arange(index * self.global_batch_size, (index + 1) * self.global_batch_size)[self.rows]
        mask = positions < len(self.split)
        indices = np.where(mask, positions, 0)
        images = _with_context(lambda: self._images(indices, None, train=False), f"evaluation batch {index}")
        labels = np.where(mask, self.split.labels[indices], 0).astype(np.int32)
        return {"image": images, "label": labels, "mask": mask.astype(np.float32)}

    def _images(self, indices: np.ndarray, rng: np.random.Generator | None, *, train: bool) -> np.ndarray:
        """uint8 [L, H, W, C]: the examples' images, transformed as `augmentation` says, with the global batch's
        random draws (the same whichever process or worker builds which rows)."""
        height, width, _ = self.output_shape
        batch, info = self.global_batch_size, self.split.info
        augmentation = self.augmentation if train else NO_AUGMENTATION
        if info.augmentation == RANDOM_RESIZED_CROP_FLIP:
            stored_side = info.image_shape[0]
            if augmentation == RANDOM_RESIZED_CROP_FLIP:
                boxes = image_ops.random_resized_crop_boxes(rng, batch, stored_side)
                flips = rng.random(batch) < 0.5
            else:
                boxes, flips = image_ops.centre_crop_boxes(batch, stored_side), np.zeros(batch, bool)
            return self.split.crop_and_resize(indices, boxes[self.rows], height, flips[self.rows])
        images = _resized(self.split.get_images(indices), height, width)
        if augmentation == PAD_CROP_FLIP:
            offsets = rng.integers(0, 2 * info.padding + 1, size=(batch, 2))
            images = image_ops.crop_with_padding(images, offsets[self.rows], info.padding)
            images = image_ops.flip_horizontally(images, rng.random(batch)[self.rows] < 0.5)
        return np.ascontiguousarray(images)


def _resized(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 images resized to height x width (the pipeline's bilinear, rounded), unchanged at their size."""
    if images.shape[1:3] == (height, width):
        return images
    return np.clip(np.rint(image_ops.resize_bilinear(images, height, width)), 0, 255).astype(np.uint8)


def _with_context(build: Callable[[], np.ndarray], what: str) -> np.ndarray:
    """build(), with `what` it was building added to a data error's message and as a note to any other error."""
    try:
        return build()
    except DataError as error:
        raise DataError(f"{error} (while building {what})") from error
    except Exception as error:
        error.add_note(f"while building {what}")
        raise
