"""The input pipeline: shuffled, augmented uint8 global batches, deterministic given (seed, step).

What a batch holds is `hrrl_jax.data.batches` (a pure function of seed, step and process index); this
module checks the split against the batch size, builds batches ahead in Grain worker processes (or a thread)
and assembles the global arrays with `jax.make_array_from_process_local_data`. The jitted steps normalise
the images (`hrrl_jax.data.normalisation`), so a quarter of the bytes cross to the devices.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

import jax
import numpy as np

from hrrl_jax.data.batches import BatchMaker, HostBatch
from hrrl_jax.data.split_data import SplitData
from hrrl_jax.data.workers import prefetched
from hrrl_jax.errors import DataError

Batch = dict[str, Any]


class InputPipeline:
    """Batches of one split for training (`global_batch`, `iterate`) or evaluation (`eval_batches`).

    Training batches are `{"image": uint8 [B, H, W, C], "label": int32 [B]}`; evaluation batches add
    `"mask"` (float32 [B], 1 for real examples, 0 for the padding of the last batch) and go through
    the split once in order, without augmentation.

    Args:
      split: the data.
      global_batch_size: B, over all processes and devices.
      seed: seed of the order and the augmentation.
      train: whether the pipeline is for training (shuffle, augment) or evaluation.
      image_size: side of the output images (default: the data set's model image size, else the stored size).
      augment: whether to augment training batches (as the data set's description says).
      sharding: batch sharding of the global arrays; None returns numpy host batches.
      num_workers: Grain worker processes building batches in `iterate` and `eval_batches` (0: a thread).
      prefetch: batches each worker (or the thread) prepares ahead.
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
        num_workers: int = 0,
        prefetch: int = 2,
    ) -> None:
        self.split = split
        self.info = split.info
        self.global_batch_size = int(global_batch_size)
        self.train = train
        self.sharding = sharding
        self.num_workers = int(num_workers)
        self.prefetch = int(prefetch)
        stored_height, stored_width, channels = self.info.image_shape
        side = self.info.output_side(image_size)
        self.output_shape = (side, side, channels) if side else (stored_height, stored_width, channels)

        process_count = jax.process_count()
        if self.global_batch_size <= 0 or self.global_batch_size % process_count:
            raise DataError(
                f"global_batch_size must be a positive multiple of the process count "
                f"{process_count}; got {global_batch_size}."
            )
        if train and len(split) < self.global_batch_size:
            raise DataError(
                f"{self.info.name} has {len(split)} examples, fewer than global_batch_size "
                f"{self.global_batch_size}; lower the batch size."
            )
        self._check_labels()
        self._maker = BatchMaker(
            split,
            global_batch_size=self.global_batch_size,
            seed=int(seed),
            output_shape=self.output_shape,
            augment=augment and train,
            process_index=jax.process_index(),
            process_count=process_count,
        )
        self.local_batch_size = self.global_batch_size // process_count

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
        return self._maker.steps_per_epoch

    @property
    def num_eval_batches(self) -> int:
        """Evaluation batches in one pass: ceil(N / B), the last one padded."""
        return self._maker.num_eval_batches

    def host_batch(self, step: int) -> HostBatch:
        """This process's rows of the training batch of `step`, as numpy."""
        return self._maker.train_batch(step)

    def _to_global(self, host_batch: HostBatch) -> Batch:
        if self.sharding is None:
            return host_batch
        return {key: jax.make_array_from_process_local_data(self.sharding, value) for key, value in host_batch.items()}

    def global_batch(self, step: int) -> Batch:
        """The training batch of `step`: global jax arrays with `sharding`, else numpy."""
        return self._to_global(self.host_batch(step))

    def iterate(self, start_step: int, stop_step: int | None = None) -> Iterator[Batch]:
        """global_batch(start_step), global_batch(start_step + 1), ... up to stop_step (excluded; None: no end),
        built ahead by the workers. Close it (or exhaust it) to stop them."""
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0; got {start_step}.")
        host_batches = prefetched(
            self._maker.train_batch, start_step, stop_step, num_workers=self.num_workers, prefetch=self.prefetch
        )
        return self._globalised(host_batches)

    def host_eval_batch(self, index: int) -> HostBatch:
        """This process's rows of evaluation batch `index`, padded past the end with mask 0."""
        return self._maker.eval_batch(index)

    def eval_batches(self) -> Iterator[Batch]:
        """One pass over the split in order: num_eval_batches batches with "mask", built ahead by the workers."""
        host_batches = prefetched(
            self._maker.eval_batch, 0, self.num_eval_batches, num_workers=self.num_workers, prefetch=self.prefetch
        )
        return self._globalised(host_batches)

    def _globalised(self, host_batches: Generator[HostBatch, None, None]) -> Iterator[Batch]:
        try:
            for host_batch in host_batches:
                yield self._to_global(host_batch)
        finally:
            host_batches.close()
