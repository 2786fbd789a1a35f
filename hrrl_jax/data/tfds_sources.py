"""Random access to TFDS data sets prepared as array_record (`tfds.data_source`), without TensorFlow.

Opening never downloads: a data set that is not prepared in `data_dir` gives an error naming it, the
directory searched and the `tfds build` command that prepares it.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

_PREPARE_HINTS = {
    "imagenet2012": " (ImageNet needs ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in "
    "--manual_dir, see the TFDS catalogue page of imagenet2012)",
}


def resolved_data_dir(data_dir: str | None) -> str:
    """The directory TFDS searches: `data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR") or tfds.core.constants.DATA_DIR)


def open_data_source(name: str, split: str, data_dir: str | None) -> Sequence[dict[str, Any]]:
    """The `tfds.data_source` of a prepared array_record data set; never downloads."""
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as error:  # tfds raises assorted types for "not there" and "wrong format".
        directory = resolved_data_dir(data_dir)
        raise FileNotFoundError(
            f"data set {name!r} (split {split!r}) is not prepared as array_record in data_dir "
            f"{directory!r}. Prepare it on a machine with internet access with\n"
            f"  tfds build {name} --file_format=array_record --data_dir={directory}"
            f"{_PREPARE_HINTS.get(name, '')}\n"
            f"or pass data_dir= where it is prepared. TFDS said: {type(error).__name__}: {error}"
        ) from error


def decode_image(value: Any) -> np.ndarray:
    """An image feature as uint8 [H, W, C]: decoded arrays pass through, encoded bytes go through PIL."""
    if isinstance(value, (bytes, np.bytes_)):
        from PIL import Image  # Only for encoded images; TFDS normally decodes them itself.

        with Image.open(io.BytesIO(bytes(value))) as image:
            value = np.asarray(image.convert("RGB"))
    image = np.asarray(value, dtype=np.uint8)
    return image[:, :, None] if image.ndim == 2 else image


def read_labels(source: Sequence[dict[str, Any]], label_key: str = "label") -> np.ndarray:
    """Every label of a data source, int32 [N], in record order (one pass over the records)."""
    return np.array([int(source[i][label_key]) for i in range(len(source))], dtype=np.int32)


def read_all(source: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """All images (uint8 [N, H, W, C], equal sizes) and labels (int32 [N]) of a small data set."""
    images, labels = [], []
    for i in range(len(source)):
        example = source[i]
        images.append(decode_image(example["image"]))
        labels.append(int(example["label"]))
    return np.stack(images), np.array(labels, dtype=np.int32)


def cached_labels(name: str, split: str, data_dir: str | None) -> np.ndarray:
    """Labels of a large split, read once and cached as `hrrl_labels_<split>.npy` beside its records.

    The first call reads every record, skipping image decoding where the data source allows it; later
    calls load the cache. Where the data directory is missing or read-only, nothing is cached.
    """
    source = open_data_source(name, split, data_dir)
    cache_dir = str(source.dataset_info.data_dir)
    cache_file = os.path.join(cache_dir, f"hrrl_labels_{split}.npy")
    if os.path.exists(cache_file):
        labels = np.load(cache_file)
        if len(labels) == len(source):
            return labels.astype(np.int32)
        logging.warning("ignoring %s: %d labels for %d records", cache_file, len(labels), len(source))
    labels = read_labels(open_undecoded_source(name, split, data_dir))
    if os.path.isdir(cache_dir):
        try:
            np.save(cache_file, labels)
        except OSError as error:
            logging.warning("could not cache labels in %s: %s", cache_file, error)
    return labels


def open_undecoded_source(name: str, split: str, data_dir: str | None) -> Sequence[dict[str, Any]]:
    """The data source with image decoding skipped (`image` holds the encoded bytes), or the decoding one where
    skipping cannot read: TFDS' mock data re-encodes images for it, which needs TensorFlow."""
    decoding = open_data_source(name, split, data_dir)
    source = tfds.data_source(
        name, split=split, data_dir=data_dir, download=False, decoders={"image": tfds.decode.SkipDecoding()}
    )
    try:
        if len(source):
            source[0]
    except ImportError:
        return decoding
    return source
