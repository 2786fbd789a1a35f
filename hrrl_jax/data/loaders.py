"""Loaders of the base data sets: one function per data set, from (split, data_dir) to a SplitData.

Small data sets (Fashion-MNIST, digits, CIFAR) are read once per process into numpy and kept; ImageNet
is read on demand through its TFDS data source, its stored images the 256 x 256 centre squares of the originals.
Each data set's description carries the input pipeline's policy for it: augmentation, padding, model image size.
"""

from __future__ import annotations

import functools

import numpy as np

from hrrl_jax.data import fashion_mnist, hierarchy, tfds_sources
from hrrl_jax.data.image_readers import CentreSquareRecords
from hrrl_jax.data.split_data import PAD_CROP_FLIP, RANDOM_RESIZED_CROP_FLIP, DatasetInfo, SplitData
from hrrl_jax.errors import DataError

IMAGENET_STORED_SIZE = 256
IMAGENET_MODEL_SIZE = 224
_DIGITS_TEST_SIZE = 450
_DIGITS_SPLIT_SEED = 0

FASHION_MNIST_INFO = DatasetInfo(
    "fashion_mnist",
    10,
    (28, 28, 1),
    hierarchy.fashion_mnist_hierarchy(),
    mean=(0.2860,),
    std=(0.3530,),
    augmentation=PAD_CROP_FLIP,
    padding=2,
)
DIGITS_INFO = DatasetInfo(
    "digits",
    10,
    (8, 8, 1),
    hierarchy.ConceptHierarchy.identity(hierarchy.DIGITS_CLASSES),
    mean=(0.3053,),
    std=(0.3759,),
)
CIFAR10_INFO = DatasetInfo(
    "cifar10",
    10,
    (32, 32, 3),
    hierarchy.ConceptHierarchy.identity(hierarchy.CIFAR10_CLASSES),
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    augmentation=PAD_CROP_FLIP,
    padding=4,
)
CIFAR100_INFO = DatasetInfo(
    "cifar100",
    100,
    (32, 32, 3),
    hierarchy.cifar100_hierarchy(),
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    augmentation=PAD_CROP_FLIP,
    padding=4,
)
IMAGENET_INFO = DatasetInfo(
    "imagenet2012",
    1000,
    (IMAGENET_STORED_SIZE, IMAGENET_STORED_SIZE, 3),
    hierarchy.imagenet_hierarchy(),
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    augmentation=RANDOM_RESIZED_CROP_FLIP,
    model_image_size=IMAGENET_MODEL_SIZE,
)


def _check_split(info: DatasetInfo, split: str, known: tuple[str, ...]) -> None:
    if split not in known:
        raise DataError(
            f"{info.name} has splits {known}; got {split!r}. Sub-splits such as '{known[0]}[:90%]' are also accepted."
        )


@functools.lru_cache(maxsize=8)
def _fashion_mnist_arrays(split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    return fashion_mnist.load_arrays(split, data_dir)


def load_fashion_mnist(split: str, data_dir: str | None) -> SplitData:
    """Fashion-MNIST, prepared from Debian's files (or TFDS' download) on first use."""
    _check_split(FASHION_MNIST_INFO, split, ("train", "test"))
    images, labels = _fashion_mnist_arrays(split, data_dir)
    return SplitData.from_arrays(FASHION_MNIST_INFO, images, labels)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # Ships its data inside scikit-learn: always offline.

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, :, :, None]
    return images, digits.target.astype(np.int32)


def load_digits(split: str, data_dir: str | None) -> SplitData:
    """scikit-learn's 1,797 8x8 digits (grey levels 0..16 scaled to 0..255).

    Fixed split: a permutation seeded with 0 puts 450 examples in `test` and 1,347 in `train`.
    `data_dir` is not used.
    """
    del data_dir
    _check_split(DIGITS_INFO, split, ("train", "test"))
    images, labels = _digits_arrays()
    order = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(labels))
    rows = np.sort(order[:_DIGITS_TEST_SIZE] if split == "test" else order[_DIGITS_TEST_SIZE:])
    return SplitData.from_arrays(DIGITS_INFO, images[rows], labels[rows])


@functools.lru_cache(maxsize=8)
def _tfds_arrays(name: str, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    return tfds_sources.read_all(tfds_sources.open_data_source(name, split, data_dir))


def load_cifar10(split: str, data_dir: str | None) -> SplitData:
    """CIFAR-10 from a TFDS array_record preparation in `data_dir`."""
    _check_split(CIFAR10_INFO, split, ("train", "test"))
    return SplitData.from_arrays(CIFAR10_INFO, *_tfds_arrays("cifar10", split, data_dir))


def load_cifar100(split: str, data_dir: str | None) -> SplitData:
    """CIFAR-100 (fine labels; superclasses as the hierarchy) from TFDS array_record in `data_dir`."""
    _check_split(CIFAR100_INFO, split, ("train", "test"))
    return SplitData.from_arrays(CIFAR100_INFO, *_tfds_arrays("cifar100", split, data_dir))


def load_imagenet(split: str, data_dir: str | None) -> SplitData:
    """ImageNet (ILSVRC 2012) read on demand from TFDS array_record in `data_dir`.

    `test` is an alias of `validation` (the test labels are not public). The stored images are the
    256 x 256 centre squares of the originals (`pil_images.centre_square`); the input pipeline resizes
    its crops of them from the decoded originals in one step (`image_readers.CentreSquareRecords`).
    """
    split = "validation" if split == "test" else split
    _check_split(IMAGENET_INFO, split, ("train", "validation"))
    labels = tfds_sources.cached_labels("imagenet2012", split, data_dir)
    return SplitData(IMAGENET_INFO, labels, CentreSquareRecords("imagenet2012", split, data_dir, IMAGENET_STORED_SIZE))
