"""The input pipeline: shuffled, augmented, normalised global batches, deterministic given (seed, step).

Training order: epoch e = step // steps_per_epoch visits the split in the permutation drawn from
`np.random.default_rng([seed, 0, e])`; step s takes slice s % steps_per_epoch of it, and the last
len(split) % global_batch_size examples of each permutation are dropped (every batch is full, every
epoch has the same steps). Augmentation draws from `np.random.default_rng([seed, 1, s])` for the whole
global batch, so a resumed run, and any number of processes, see the same examples and augmentations.

Augmentation by data set: digits none; Fashion-MNIST and CIFAR zero-pad (2 px below 32 px, else 4 px),
random crop and horizontal flip; ImageNet a random resized crop of the stored 256 x 256 centre square
(`image_ops.random_resized_crop_boxes`) and a flip, the centre 87.5 % for evaluation. Images are then
normalised to float32 (x / 255 - mean) / std per channel.

Multi-host: each process builds rows [p L, (p + 1) L) of the global batch, L = B / process_count, and
`jax.make_array_from_process_local_data` assembles the global arrays.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np

from hrrl_jax.data import image_ops
from hrrl_jax.data.split_data import SplitData
from hrrl_jax.errors import DataError

Batch = dict[str, Any]
_ORDER_STREAM, _AUGMENT_STREAM = 0, 1
_ON_DEMAND_CROP = frozenset({"imagenet2012"})
_NO_AUGMENTATION = frozenset({"digits"})


class InputPipeline:
    """Batches of one split for training (`global_batch`, `iterate`) or evaluation (`eval_batches`).

    Training batches are `{"image": float32 [B, H, W, C], "label": int32 [B]}`; evaluation batches add
    `"mask"` (float32 [B], 1 for real examples, 0 for the padding of the last batch) and go through
    the split once in order, without augmentation.

    Args:
      split: the data.
      global_batch_size: B, over all processes and devices.
      seed: seed of the order and the augmentation.
      train: whether the pipeline is for training (shuffle, augment) or evaluation.
      image_size: side of the output images (default: the stored size; ImageNet: 224).
      augment: whether to augment training batches.
      sharding: batch sharding of the global arrays; None returns numpy host batches.
      prefetch: batches prepared ahead by a background thread in `iterate` and `eval_batches`.
    """

    def __init__(
        self,
        split: SplitData,
        *,
        global_batch_size: int,
        seed: int,
        train: bool,
        image_size: int | None = None,
        augment: bool = True,
        sharding: jax.sharding.NamedSharding | None = None,
        prefetch: int = 2,
    ) -> None:
        self.split = split
        self.info = split.info
        self.global_batch_size = int(global_batch_size)
        self.seed = int(seed)
        self.train = train
        self.sharding = sharding
        self.prefetch = int(prefetch)
        self._base_name = self.info.name.partition("_shift/")[0]
        stored_height, stored_width, _ = self.info.image_shape
        default_size = 224 if self._base_name in _ON_DEMAND_CROP else None
        size = image_size or default_size
        self.output_shape = ((size, size) if size else (stored_height, stored_width)) + self.info.image_shape[-1:]
        self.augment = augment and train and self._base_name not in _NO_AUGMENTATION
        self._padding = 2 if self.output_shape[0] < 32 else 4
        self._mean = np.asarray(self.info.mean, np.float32)
        self._std = np.asarray(self.info.std, np.float32)

        self._process_index, process_count = jax.process_index(), jax.process_count()
        if self.global_batch_size <= 0 or self.global_batch_size % process_count:
            raise DataError(
                f"global_batch_size must be a positive multiple of the process count "
                f"{process_count}; got {global_batch_size}."
            )
        self.local_batch_size = self.global_batch_size // process_count
        if train and len(split) < self.global_batch_size:
            raise DataError(
                f"{self.info.name} has {len(split)} examples, fewer than global_batch_size "
                f"{self.global_batch_size}; lower the batch size."
            )
        self._check_labels()
        self._epoch_cache: tuple[int, np.ndarray] | None = None

    def _check_labels(self) -> None:
        labels = self.split.labels
        bad = np.flatnonzero((labels < 0) | (labels >= self.info.num_classes))
        if bad.size:
            raise DataError(
                f"label {labels[bad[0]]} of example {bad[0]} of {self.info.name} is outside the class range "
                f"[0, {self.info.num_classes}) ({bad.size} such examples); fix the labels or the data "
                "set's num_classes."
            )

    @property
    def steps_per_epoch(self) -> int:
        """Training steps per pass over the split (the remainder of each permutation is dropped)."""
        return len(self.split) // self.global_batch_size

    @property
    def num_eval_batches(self) -> int:
        """Evaluation batches in one pass: ceil(N / B), the last one padded."""
        return math.ceil(len(self.split) / self.global_batch_size)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            order = np.random.default_rng([self.seed, _ORDER_STREAM, epoch]).permutation(len(self.split))
            self._epoch_cache = (epoch, order)
        return self._epoch_cache[1]

    def _local_rows(self) -> slice:
        start = self._process_index * self.local_batch_size
        return slice(start, start + self.local_batch_size)

    def host_batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of the training batch of `step`, as numpy."""
        if step < 0:
            raise ValueError(f"step must be >= 0; got {step}.")
        if self.steps_per_epoch == 0:
            raise DataError(
                f"{self.info.name} has {len(self.split)} examples, fewer than one batch of "
                f"{self.global_batch_size}; lower the batch size."
            )
        epoch, position = divmod(step, self.steps_per_epoch)
        batch_indices = self._epoch_order(epoch)[
            position * self.global_batch_size : (position + 1) * self.global_batch_size
        ]
        rows = self._local_rows()
        rng = np.random.default_rng([self.seed, _AUGMENT_STREAM, step])
        images = self._transform(self.split.get_images(batch_indices[rows]), rng, rows)
        return {"image": images, "label": self.split.labels[batch_indices[rows]].astype(np.int32)}

    def _transform(self, images: np.ndarray, rng: np.random.Generator | None, rows: slice) -> np.ndarray:
        """Crop/resize, augment (training, with the global batch's random draws) and normalise."""
        height, width, _ = self.output_shape
        batch = self.global_batch_size
        if self._base_name in _ON_DEMAND_CROP:
            boxes = (
                image_ops.random_resized_crop_boxes(rng, batch, images.shape[1])
                if self.augment
                else image_ops.centre_crop_boxes(batch, images.shape[1])
            )
            images = image_ops.crop_boxes_and_resize(images, boxes[rows], height)
        else:
            images = image_ops.resize_bilinear(images, height, width)
            if self.augment:
                offsets = rng.integers(0, 2 * self._padding + 1, size=(batch, 2))
                images = image_ops.crop_with_padding(images, offsets[rows], self._padding)
        if self.augment:
            images = image_ops.flip_horizontally(images, rng.random(batch)[rows] < 0.5)
        return ((images * np.float32(1 / 255) - self._mean) / self._std).astype(np.float32)

    def _to_global(self, host_batch: dict[str, np.ndarray]) -> Batch:
        if self.sharding is None:
            return host_batch
        return {key: jax.make_array_from_process_local_data(self.sharding, value) for key, value in host_batch.items()}

    def global_batch(self, step: int) -> Batch:
        """The training batch of `step`: global jax arrays with `sharding`, else numpy."""
        return self._to_global(self.host_batch(step))

    def iterate(self, start_step: int) -> Iterator[Batch]:
        """global_batch(start_step), global_batch(start_step + 1), ... prepared ahead in a thread."""
        return _prefetched(self.global_batch, _count_from(start_step), self.prefetch)

    def host_eval_batch(self, index: int) -> dict[str, np.ndarray]:
        """This process's rows of evaluation batch `index`, padded past the end with mask 0."""
        if not 0 <= index < self.num_eval_batches:
            raise ValueError(f"evaluation batch index must lie in [0, {self.num_eval_batches}); got {index}.")
        positions = np.arange(index * self.global_batch_size, (index + 1) * self.global_batch_size)
        positions = positions[self._local_rows()]
        mask = positions < len(self.split)
        indices = np.where(mask, positions, 0)
        images = self._transform(self.split.get_images(indices), None, self._local_rows())
        labels = np.where(mask, self.split.labels[indices], 0).astype(np.int32)
        return {"image": images, "label": labels, "mask": mask.astype(np.float32)}

    def eval_batches(self) -> Iterator[Batch]:
        """One pass over the split in order: num_eval_batches batches with "mask", prepared ahead."""
        return _prefetched(
            lambda index: self._to_global(self.host_eval_batch(index)), range(self.num_eval_batches), self.prefetch
        )


def _count_from(start: int) -> Iterator[int]:
    step = start
    while True:
        yield step
        step += 1


_END = object()


def _prefetched(make: Callable[[int], Batch], keys: Iterable[int], depth: int) -> Iterator[Batch]:
    """Yields make(k) for k in keys, computed `depth` ahead by a daemon thread; errors re-raised here.

    The thread stops, and is joined, when the iterator is closed, exhausted or garbage collected.
    """
    if depth <= 0:
        yield from (make(key) for key in keys)
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for key in keys:
                if not put((make(key), None)):
                    return
            put((_END, None))
        except BaseException as error:  # Handed to the consumer, which re-raises it.
            put((None, error))

    producer = threading.Thread(target=produce, daemon=True, name="input-prefetch")
    producer.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        # Joined, not abandoned: a daemon thread killed inside jax or numpy at interpreter exit aborts it.
        stop.set()
        producer.join()
