"""The ImageNet-format fixture of real JPEGs (benchmarks/imagenet_fixture.py), read as a prepared ImageNet, and
its input pipeline in worker processes."""

import multiprocessing
import os
import re
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from hrrl_jax.data import InputPipeline, load_split
from hrrl_jax.data.hierarchy import imagenet_hierarchy
from hrrl_jax.train.loop import train_and_evaluate
from tests.train.helpers import REPO_ROOT, tiny_config

sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
import imagenet_fixture  # noqa: E402

TRAIN_EXAMPLES, VALIDATION_EXAMPLES = 48, 16
# Mean absolute error in grey levels: quality-90 JPEG with 4:2:0 chroma subsampling loses 3-4 on these photographs;
# another image, a shifted crop or swapped channels differ by tens.
JPEG_MEAN_ERROR = 6.0


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("imagenet_fixture"))
    imagenet_fixture.build(directory, train_examples=TRAIN_EXAMPLES, validation_examples=VALIDATION_EXAMPLES)
    return directory


def _index(file_name) -> int:
    return int(re.search(r"_(\d+)\.JPEG$", file_name.decode() if isinstance(file_name, bytes) else file_name)[1])


@pytest.mark.parametrize("split, size", [("train", TRAIN_EXAMPLES), ("validation", VALIDATION_EXAMPLES)])
def test_records_decode_to_what_was_encoded_with_their_labels(data_dir, split, size):
    source = tfds.data_source("imagenet2012", split=split, data_dir=data_dir, download=False)
    assert len(source) == size
    names = imagenet_hierarchy().class_names
    jpeg_sizes = []
    for record in (source[i] for i in range(len(source))):
        index = _index(record["file_name"])
        expected = imagenet_fixture.synthetic_photo(split, index)
        assert record["image"].shape == expected.shape and record["image"].dtype == np.uint8
        assert (expected.shape[1], expected.shape[0]) in imagenet_fixture.SIZES
        assert np.mean(np.abs(record["image"].astype(float) - expected)) < JPEG_MEAN_ERROR
        assert record["label"] == imagenet_fixture.fixture_label(index)
        assert record["file_name"].decode().startswith(names[record["label"]])
    encoded = tfds.data_source(
        "imagenet2012", split=split, data_dir=data_dir, download=False, decoders={"image": tfds.decode.SkipDecoding()}
    )
    jpeg_sizes = [len(encoded[i]["image"]) for i in range(len(encoded))]
    assert 20_000 < np.mean(jpeg_sizes) < 120_000  # ImageNet's JPEGs average about 110 KB; 500 x 375 ones less.


def test_the_package_loads_it_as_imagenet_with_the_concept_hierarchy(data_dir):
    train = load_split("imagenet2012", "train", data_dir=data_dir)
    assert (len(train), train.info.num_classes, train.info.hierarchy.num_concepts) == (TRAIN_EXAMPLES, 1000, 11)
    np.testing.assert_array_equal(train.info.hierarchy.concept_of_class, imagenet_hierarchy().concept_of_class)
    images = train.get_images(np.arange(4))
    assert images.shape == (4, 256, 256, 3) and images.dtype == np.uint8
    assert len(load_split("imagenet2012", "test", data_dir=data_dir)) == VALIDATION_EXAMPLES  # test = validation


def test_two_training_steps_on_the_fixture(data_dir, tmp_path):
    config = tiny_config(total_steps=2, log_every_steps=1, batch_size=16)
    config.dataset.name, config.dataset.data_dir, config.dataset.test_split = "imagenet2012", data_dir, "validation"
    config.dataset.image_size = 64
    results = train_and_evaluate(config, str(tmp_path))
    assert results["step"] == 2 and 0.0 <= results["test_accuracy"] <= 1.0
    # The 16 validation images have labels 0-15: the concepts of those classes.
    expected = {imagenet_hierarchy().concept_names[imagenet_hierarchy().concept_of_class[label]] for label in range(16)}
    assert set(results["per_concept_accuracy"]) == expected


def test_two_workers_build_the_batches_of_none_across_an_epoch_and_for_evaluation(data_dir):
    train, validation = (load_split("imagenet2012", split, data_dir=data_dir) for split in ("train", "validation"))
    options = dict(global_batch_size=16, seed=3, image_size=64)
    in_process = InputPipeline(train, **options, train=True)
    assert in_process.steps_per_epoch == 3
    expected = [in_process.host_batch(step) for step in range(1, 5)]
    assert expected[0]["image"].shape == (16, 64, 64, 3) and expected[0]["image"].dtype == np.uint8
    for got, want in zip(InputPipeline(train, **options, train=True, num_workers=2).iterate(1, 5), expected):
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])
    evaluation = InputPipeline(validation, **options, train=False, num_workers=2)
    batches = list(evaluation.eval_batches())
    assert len(batches) == 1 and batches[0]["mask"].sum() == VALIDATION_EXAMPLES
    np.testing.assert_array_equal(batches[0]["image"], evaluation.host_eval_batch(0)["image"])
    assert not multiprocessing.active_children()
