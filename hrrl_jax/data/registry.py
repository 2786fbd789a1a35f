"""`load_split`: data sets by name, their appearance-shifted variants, sub-splits and class filters.

Names (hrrl_jax.schema): the base data sets of KNOWN_DATASETS and `<base>_shift/<shift>` for each shift of KNOWN_SHIFTS
(e.g. `fashion_mnist_shift/lowres4`: the base split with every image down-sampled by 4 and restored).
Splits: a split name (`train`, `test`) optionally sliced as in TFDS, `train[:90%]`, `train[54000:]`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np

from hrrl_jax.data import loaders
from hrrl_jax.data.image_readers import ShiftedImages
from hrrl_jax.data.split_data import DatasetInfo, SplitData
from hrrl_jax.errors import DataError
from hrrl_jax.schema import HOLDOUT_SPLIT, SHIFT_MARKER, SPLIT_PATTERN, known_dataset_names

SHIFT_SEED = 0
_BASE_LOADERS: dict[str, Callable[[str, str | None], SplitData]] = {
    "fashion_mnist": loaders.load_fashion_mnist,
    "digits": loaders.load_digits,
    "cifar10": loaders.load_cifar10,
    "cifar100": loaders.load_cifar100,
    "imagenet2012": loaders.load_imagenet,
}  # One loader for each of hrrl_jax.schema.KNOWN_DATASETS (tested).
_BASE_INFOS = {
    "fashion_mnist": loaders.FASHION_MNIST_INFO,
    "digits": loaders.DIGITS_INFO,
    "cifar10": loaders.CIFAR10_INFO,
    "cifar100": loaders.CIFAR100_INFO,
    "imagenet2012": loaders.IMAGENET_INFO,
}


def _slice_bound(bound: str | None, size: int) -> int | None:
    if bound is None:
        return None
    if bound.endswith("%"):
        return round(int(bound[:-1]) * size / 100)
    return int(bound)


def _with_shift(base: SplitData, name: str, shift: str) -> SplitData:
    """The base split with `apply_shift` on every image as it is read (the values of shifting the whole split
    at once: each shift works per image and the noise is drawn per example)."""
    return SplitData(
        dataclasses.replace(base.info, name=name), base.labels, ShiftedImages(base.images, shift, SHIFT_SEED)
    )


def _kept_classes(num_classes: int, exclude_classes: Sequence[int], only_classes: Sequence[int]) -> list[int]:
    for argument, classes in (("exclude_classes", exclude_classes), ("only_classes", only_classes)):
        bad = [c for c in classes if not 0 <= int(c) < num_classes]
        if bad:
            raise DataError(f"{argument} has classes {bad} outside [0, {num_classes}).")
    excluded = {int(c) for c in exclude_classes}
    candidates = [int(c) for c in only_classes] if len(only_classes) else range(num_classes)
    kept = [c for c in candidates if c not in excluded]
    if not kept:
        raise DataError(f"no class left: only_classes={list(only_classes)}, exclude_classes={list(exclude_classes)}.")
    return kept


def _with_classes(split_data: SplitData, kept: list[int]) -> SplitData:
    """The examples of the kept classes, relabelled to their position in `kept`."""
    info = split_data.info
    new_label = np.full(info.num_classes, -1, dtype=np.int32)
    new_label[kept] = np.arange(len(kept), dtype=np.int32)
    in_range = (split_data.labels >= 0) & (split_data.labels < info.num_classes)
    rows = np.flatnonzero(in_range & np.isin(split_data.labels, kept))
    return split_data.select(rows, labels=new_label[split_data.labels[rows]], info=_restricted_info(info, kept))


def _restricted_info(info: DatasetInfo, kept: list[int]) -> DatasetInfo:
    """The description of the data set reduced to the `kept` classes (relabelled 0..len(kept) - 1)."""
    return dataclasses.replace(info, num_classes=len(kept), hierarchy=info.hierarchy.restricted_to(kept))


def describe_dataset(
    name: str, *, exclude_classes: Sequence[int] = (), only_classes: Sequence[int] = ()
) -> DatasetInfo:
    """What `load_split(name, ..., exclude_classes, only_classes).info` holds, without reading any data."""
    _check_name(name)
    info = dataclasses.replace(_BASE_INFOS[name.partition(SHIFT_MARKER)[0]], name=name)
    if len(exclude_classes) or len(only_classes):
        info = _restricted_info(info, _kept_classes(info.num_classes, exclude_classes, only_classes))
    return info


def _check_name(name: str) -> None:
    if name not in known_dataset_names():
        raise DataError(f"unknown data set {name!r}; known: {', '.join(known_dataset_names())}.")


def load_split(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    exclude_classes: Sequence[int] = (),
    only_classes: Sequence[int] = (),
) -> SplitData:
    """Loads one split of a named data set.

    Args:
      name: a base data set (KNOWN_DATASETS) or `<base>_shift/<shift>` (KNOWN_SHIFTS).
      split: `train` or `test` (ImageNet: `test` means `validation`), optionally sliced: `train[:90%]`.
      data_dir: the TFDS data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).
      exclude_classes: classes to leave out.
      only_classes: classes to keep (default all), in the order of their new labels.
        The kept classes are relabelled 0..K-1 and the hierarchy restricted to them.

    Returns:
      The split's SplitData.
    """
    _check_name(name)
    base_name, _, shift = name.partition(SHIFT_MARKER)
    match = SPLIT_PATTERN.match(split)
    if match is None:
        raise DataError(f"cannot parse split {split!r}; use e.g. 'train', 'test' or 'train[:90%]'.")
    split_data = _BASE_LOADERS[base_name](match["split"], data_dir)
    if match["start"] is not None or match["stop"] is not None:
        size = len(split_data)
        rows = np.arange(size)[slice(_slice_bound(match["start"], size), _slice_bound(match["stop"], size))]
        if not rows.size:
            raise DataError(f"split {split!r} of {name} is empty ({size} examples in {match['split']!r}).")
        split_data = split_data.select(rows)
    if shift:
        split_data = _with_shift(split_data, name, shift)
    if len(exclude_classes) or len(only_classes):
        split_data = _with_classes(
            split_data, _kept_classes(split_data.info.num_classes, exclude_classes, only_classes)
        )
    return split_data


def image_side(config: ml_collections.ConfigDict, info: DatasetInfo) -> int:
    """The side of the images a run of `config` builds its model for: `dataset.image_size`, else the data set's
    model image size, else the stored one (the side of what its input pipeline emits)."""
    return info.output_side(config.dataset.image_size) or info.image_shape[0]


def holdout_rows(labels: np.ndarray, classes: Sequence[int], *, fraction: float, seed: int) -> np.ndarray:
    """Sorted rows of a stratified `fraction` of every class: round(fraction · n_c) of the n_c rows of label c.

    `classes[c]` is label c's class in the unfiltered data set; its rows are drawn by default_rng([seed,
    classes[c]]) from its rows in order, so a class keeps the same held-out images whichever other classes
    (and whichever appearance shift) are loaded with it.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1); got {fraction}.")
    labels = np.asarray(labels)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        order = np.random.default_rng([seed, int(classes[label])]).permutation(members.size)
        chosen.append(members[order[: int(round(fraction * members.size))]])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def load_split_and_holdout(
    name: str,
    split: str,
    *,
    fraction: float,
    seed: int,
    data_dir: str | None = None,
    exclude_classes: Sequence[int] = (),
    only_classes: Sequence[int] = (),
) -> tuple[SplitData, SplitData]:
    """`load_split`'s split without its `holdout_rows`, and those held-out rows (empty at fraction 0)."""
    split_data = load_split(name, split, data_dir=data_dir, exclude_classes=exclude_classes, only_classes=only_classes)
    num_classes = _BASE_INFOS[name.partition(SHIFT_MARKER)[0]].num_classes
    classes = _kept_classes(num_classes, exclude_classes, only_classes)
    held = holdout_rows(split_data.labels, classes, fraction=fraction, seed=seed)
    kept = np.setdiff1d(np.arange(len(split_data)), held)
    return split_data.select(kept), split_data.select(held)


def load_data(config: ml_collections.ConfigDict) -> tuple[SplitData, SplitData]:
    """The train and evaluation splits named by `config.dataset` (a resolved hrrl_jax config).

    Training leaves out the stratified `dataset.validation_fraction` of each class (`holdout_rows` with
    `dataset.validation_seed`); `dataset.test_split = "holdout"` evaluates on those rows instead of a test split,
    which is then never read.
    """
    dataset = config.dataset
    if dataset.data_dir is not None and not os.path.isdir(dataset.data_dir) and not dataset.prepare:
        raise DataError(
            f"config.dataset.data_dir={dataset.data_dir!r}: no such directory. Give the directory that holds the "
            "prepared data, or add --config.dataset.prepare=True to create it and prepare the data there."
        )
    if dataset.data_dir is not None and dataset.prepare:
        os.makedirs(dataset.data_dir, exist_ok=True)
    filters = {"exclude_classes": tuple(dataset.exclude_classes), "only_classes": tuple(dataset.only_classes)}
    train, holdout = load_split_and_holdout(
        dataset.name,
        dataset.train_split,
        fraction=dataset.validation_fraction,
        seed=dataset.validation_seed,
        data_dir=dataset.data_dir,
        **filters,
    )
    if dataset.test_split != HOLDOUT_SPLIT:
        return train, load_split(dataset.name, dataset.test_split, data_dir=dataset.data_dir, **filters)
    if not len(holdout):
        raise DataError(
            f"dataset.test_split={HOLDOUT_SPLIT!r} evaluates on the training rows held out by "
            f"dataset.validation_fraction={dataset.validation_fraction}, and it holds out none; raise the fraction."
        )
    return train, holdout
