"""An ImageNet-format data set of real JPEGs, built offline: prepared `imagenet2012` array_record splits.

    python benchmarks/imagenet_fixture.py --data_dir DIR [--train_examples 512 --validation_examples 128]

The records have the feature spec of TFDS' own `imagenet2012` (version 5.1.0: JPEG-encoded `image`, 1000-class
`label` with the WordNet ids as names, `file_name`), so `tfds.data_source("imagenet2012", data_dir=DIR)` and the
package's ImageNet loader read them exactly as a prepared ImageNet. The photographs are synthetic: crops of the
two photographs scikit-learn ships, resized to ImageNet's common sizes (500 x 375, 375 x 500, 500 x 333,
500 x 400; `image_sizes` picks others, e.g. small ones for a quick test), with a per-image colour and
brightness change, saved at JPEG quality 90. Image `index` of a split is a pure function of (split, index) and
the sizes (`synthetic_photo`), so a test can compare what it reads with what was encoded. Labels cycle through
the 1000 classes.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from hrrl_jax.data.hierarchy import imagenet_hierarchy

SIZES = ((500, 375), (375, 500), (500, 333), (500, 400))  # (width, height), the most common ImageNet sizes.
JPEG_QUALITY = 90
SPLIT_SEEDS = {"train": 0, "validation": 1}
VERSION = "5.1.0"  # TFDS' imagenet2012 version whose feature spec the records follow.


def _sample_photographs() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return list(load_sample_images().images)


def synthetic_photo(
    split: str,
    index: int,
    photographs: list[np.ndarray] | None = None,
    image_sizes: tuple[tuple[int, int], ...] = SIZES,
) -> np.ndarray:
    """uint8 [H, W, 3]: image `index` of `split`, a crop of a real photograph resized to one of `image_sizes`
    (width, height), with a colour change."""
    photographs = photographs if photographs is not None else _sample_photographs()
    rng = np.random.default_rng([SPLIT_SEEDS[split], index])
    source = photographs[index % len(photographs)]
    height, width = source.shape[:2]
    crop_height, crop_width = int(height * rng.uniform(0.5, 1.0)), int(width * rng.uniform(0.5, 1.0))
    top, left = rng.integers(0, height - crop_height + 1), rng.integers(0, width - crop_width + 1)
    crop = source[top : top + crop_height, left : left + crop_width]
    size = image_sizes[rng.integers(len(image_sizes))]
    resized = np.asarray(Image.fromarray(crop).resize(size, Image.BILINEAR), np.float32)
    tinted = resized * rng.uniform(0.7, 1.3, 3) + rng.uniform(-20, 20)
    return np.clip(np.rint(tinted), 0, 255).astype(np.uint8)


def encode_jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def fixture_label(index: int) -> int:
    return index % 1000


class Imagenet2012(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Writes the fixture under TFDS' name and version of ImageNet, with its feature spec.

    Not registered, so `tfds.builder("imagenet2012")` in the same process stays TFDS' own builder.
    """

    VERSION = tfds.core.Version(VERSION)

    def __init__(
        self,
        *,
        train_examples: int,
        validation_examples: int,
        image_sizes: tuple[tuple[int, int], ...],
        **kwargs,
    ) -> None:
        self._sizes = {"train": train_examples, "validation": validation_examples}
        self._image_sizes = image_sizes
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        names = imagenet_hierarchy().class_names  # TFDS' label names: the WordNet ids in its order.
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(names=names),
                "file_name": tfds.features.Text(),
            }
        )
        return tfds.core.DatasetInfo(builder=self, features=features, supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        return {split: self._generate_examples(split) for split in self._sizes}

    def _generate_examples(self, split: str) -> Iterator[tuple[str, dict]]:
        photographs = _sample_photographs()
        names = self.info.features["label"].names
        for index in range(self._sizes[split]):
            label = fixture_label(index)
            jpeg = encode_jpeg(synthetic_photo(split, index, photographs, self._image_sizes))
            file_name = f"{names[label]}_{index:08d}.JPEG"
            yield file_name, {"image": io.BytesIO(jpeg), "label": label, "file_name": file_name}


def build(
    data_dir: str,
    *,
    train_examples: int = 512,
    validation_examples: int = 128,
    image_sizes: tuple[tuple[int, int], ...] = SIZES,
) -> str:
    """Prepares the fixture in `data_dir` (array_record) and returns the data set's directory."""
    builder = Imagenet2012(
        data_dir=data_dir,
        file_format="array_record",
        train_examples=train_examples,
        validation_examples=validation_examples,
        image_sizes=image_sizes,
    )
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(verify_ssl=False))
    return str(builder.data_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True, help="TFDS data directory to prepare imagenet2012 in.")
    parser.add_argument("--train_examples", type=int, default=512)
    parser.add_argument("--validation_examples", type=int, default=128)
    args = parser.parse_args(argv)
    path = build(args.data_dir, train_examples=args.train_examples, validation_examples=args.validation_examples)
    print(f"Prepared imagenet2012 ({args.train_examples} train, {args.validation_examples} validation) in {path}.")


if __name__ == "__main__":
    main()
