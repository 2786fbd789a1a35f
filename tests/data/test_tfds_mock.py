"""CIFAR-10/100 and ImageNet through tfds.data_source under tfds.testing.mock_data (no real data)."""

import io

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from hrrl_jax.data import InputPipeline, load_split, loaders
from hrrl_jax.data.tfds_sources import decode_image


@pytest.fixture
def mock_tfds():
    """TFDS' mock data for the test, and none of it left in the loaders' cache of arrays afterwards (a later test
    mocking another size, or reading real data, must not get these 24 examples)."""
    loaders._tfds_arrays.cache_clear()
    try:
        with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=24):
            yield
    finally:
        loaders._tfds_arrays.cache_clear()


def _check_eval_pass(pipeline: InputPipeline, split) -> None:
    batches = list(pipeline.eval_batches())
    labels = np.concatenate([b["label"] for b in batches])[: len(split)]
    np.testing.assert_array_equal(labels, split.labels)
    assert sum(b["mask"].sum() for b in batches) == len(split)


@pytest.mark.parametrize("name, num_classes, num_concepts", [("cifar10", 10, 10), ("cifar100", 100, 20)])
def test_cifar_pipeline(mock_tfds, name, num_classes, num_concepts):
    train = load_split(name, "train")
    assert len(train) == 24 and train.info.image_shape == (32, 32, 3)
    assert (train.info.num_classes, train.info.hierarchy.num_concepts) == (num_classes, num_concepts)
    assert train.labels.min() >= 0 and train.labels.max() < num_classes
    pipeline = InputPipeline(train, global_batch_size=8, seed=0, train=True)
    batch = pipeline.host_batch(1)
    assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.uint8
    assert np.all(np.isin(batch["label"], train.labels))
    concepts = train.info.hierarchy.concept_of_class[batch["label"]]
    assert concepts.min() >= 0 and concepts.max() < num_concepts
    test = load_split(name, "test")
    _check_eval_pass(InputPipeline(test, global_batch_size=10, seed=0, train=False), test)
    first = next(InputPipeline(test, global_batch_size=10, seed=0, train=False).eval_batches())
    np.testing.assert_array_equal(first["image"], test.get_images(np.arange(10)))


def test_cifar100_superclass_map(mock_tfds):
    hierarchy = load_split("cifar100", "train").info.hierarchy
    assert hierarchy.concept_names[hierarchy.concept_of_class[hierarchy.class_names.index("tulip")]] == "flowers"


def test_imagenet_pipeline(mock_tfds):
    train = load_split("imagenet2012", "train")
    assert train.info.num_classes == 1000 and train.info.hierarchy.num_concepts == 11
    stored = train.get_images(np.arange(3))
    assert stored.shape == (3, 256, 256, 3) and stored.dtype == np.uint8
    pipeline = InputPipeline(train, global_batch_size=4, seed=0, train=True)
    batch = pipeline.host_batch(0)
    assert batch["image"].shape == (4, 224, 224, 3) and batch["image"].dtype == np.uint8
    assert np.all(np.isin(batch["label"], train.labels))
    concept_names = train.info.hierarchy.concept_names
    assert all(concept_names[k] for k in train.info.hierarchy.concept_of_class[batch["label"]])
    again = InputPipeline(train, global_batch_size=4, seed=0, train=True).host_batch(0)
    np.testing.assert_array_equal(again["image"], batch["image"])

    validation = load_split("imagenet2012", "test")  # `test` means the validation split
    evaluation = InputPipeline(validation, global_batch_size=5, seed=0, train=False, image_size=112)
    _check_eval_pass(evaluation, validation)
    assert next(evaluation.eval_batches())["image"].shape == (5, 112, 112, 3)


def test_encoded_images_are_decoded():
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    np.testing.assert_array_equal(decode_image(buffer.getvalue()), pixels)
    assert decode_image(np.zeros((4, 4), np.uint8)).shape == (4, 4, 1)
