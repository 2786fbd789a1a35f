"""Fashion-MNIST as a TFDS array_record builder that reads the raw IDX files, without TensorFlow.

TFDS' own `fashion_mnist` stores `features.Image` (its encoding needs TensorFlow) and rejects the files
of Debian's `dataset-fashion-mnist` (recompressed, so other checksums). `fashion_mnist_local` stores
uint8 `features.Tensor` images and reads the files from `manual_dir`; where they are missing it downloads
the same raw files TFDS' `fashion_mnist` uses (needs internet).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist as tfds_mnist

from hrrl_jax.data.hierarchy import FASHION_MNIST_CLASSES
from hrrl_jax.errors import DataError

DEFAULT_MANUAL_DIR = "/usr/share/datasets/fashion-mnist"
_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
_HOW_TO_GET = (
    "Install Debian's package (`apt-get update && apt-get install -y dataset-fashion-mnist`, files in "
    f"{DEFAULT_MANUAL_DIR}), or put the four files {sorted(_FILES.values())} in a directory given as "
    "manual_dir, or run once with internet access so TFDS can download them."
)


def read_idx(path: str) -> np.ndarray:
    """An IDX array (the MNIST file format: big-endian header, then uint8 data), gzip or plain."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as file:
        content = file.read()
    zero, dtype_code, num_dims = content[0:2], content[2], content[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:
        raise DataError(f"{path} is not a uint8 IDX file (header {content[:4]!r}).")
    shape = tuple(int.from_bytes(content[4 + 4 * d : 8 + 4 * d], "big") for d in range(num_dims))
    data = np.frombuffer(content, dtype=np.uint8, offset=4 + 4 * num_dims)
    if data.size != int(np.prod(shape)):
        raise DataError(
            f"{path}: header says shape {shape} but holds {data.size} values; the file is truncated or corrupt."
        )
    return data.reshape(shape)


class FashionMnistLocal(tfds.core.GeneratorBasedBuilder):
    """Fashion-MNIST (60,000 train, 10,000 test, 28x28x1 uint8) from the raw IDX files."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Raw IDX files to uint8 Tensor features in array_record."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _HOW_TO_GET

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=FASHION_MNIST_CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        paths = _manual_files(dl_manager) or dl_manager.download(
            {key: tfds_mnist.FashionMNIST.URL + file_name for key, file_name in _FILES.items()}
        )
        return {
            split: self._generate_examples(paths[f"{split}_images"], paths[f"{split}_labels"])
            for split in ("train", "test")
        }

    def _generate_examples(self, images_path: Any, labels_path: Any) -> Iterator[tuple[int, dict]]:
        images, labels = read_idx(str(images_path)), read_idx(str(labels_path))
        if len(images) != len(labels):
            raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels.")
        for index, (image, label) in enumerate(zip(images, labels)):
            yield index, {"image": image[:, :, None], "label": int(label)}


def _manual_files(dl_manager: tfds.download.DownloadManager) -> dict[str, str] | None:
    """Paths of the four IDX files in the manual directory, or None where any is missing."""
    try:
        manual_dir = str(dl_manager.manual_dir)
    except AssertionError:  # TFDS' way of saying the manual directory is absent or empty.
        return None
    paths = {key: os.path.join(manual_dir, file_name) for key, file_name in _FILES.items()}
    return paths if all(os.path.exists(path) for path in paths.values()) else None


def prepared_builder(data_dir: str | None, manual_dir: str = DEFAULT_MANUAL_DIR) -> FashionMnistLocal:
    """The `fashion_mnist_local` builder, prepared as array_record in `data_dir` on first use."""
    builder = FashionMnistLocal(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        try:
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
        except Exception as error:  # No files and no network show up as assorted exception types.
            raise FileNotFoundError(
                f"Fashion-MNIST could not be prepared in {builder.data_dir!r}: no raw files in "
                f"manual_dir {manual_dir!r} and the download failed. {_HOW_TO_GET} "
                f"Cause: {type(error).__name__}: {error}"
            ) from error
    return builder


def load_arrays(
    split: str, data_dir: str | None, manual_dir: str = DEFAULT_MANUAL_DIR
) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 [N, 28, 28, 1]) and labels (int32 [N]) of a Fashion-MNIST split, read through
    `tfds.data_source` in one batched read."""
    if split not in ("train", "test"):
        raise DataError(f"Fashion-MNIST has splits 'train' and 'test'; got {split!r}.")
    source = prepared_builder(data_dir, manual_dir).as_data_source(split)
    examples = source.__getitems__(list(range(len(source))))
    images = np.stack([example["image"] for example in examples]).astype(np.uint8)
    labels = np.array([example["label"] for example in examples], dtype=np.int32)
    return images, labels
