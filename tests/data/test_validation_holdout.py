"""The source validation holdout: a stratified share of each class, the same images whatever is loaded with them,
left out of training by load_data, and evaluated on instead of the test split (which is then never read)."""

import numpy as np
import pytest

from hrrl_jax import schema
from hrrl_jax.data import load_data, load_split, registry
from hrrl_jax.data.registry import holdout_rows, load_split_and_holdout
from hrrl_jax.errors import DataError


def test_holdout_rows_are_a_rounded_share_of_each_class():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 1 + [0] * 10)
    rows = holdout_rows(labels, classes=[0, 1, 2], fraction=0.25, seed=3)
    assert np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(
        np.bincount(labels[rows], minlength=3), [5, 1, 0]
    )  # round(5), round(1.25), round(.25)
    np.testing.assert_array_equal(rows, holdout_rows(labels.copy(), classes=[0, 1, 2], fraction=0.25, seed=3))
    assert not np.array_equal(rows, holdout_rows(labels, classes=[0, 1, 2], fraction=0.25, seed=4))
    assert holdout_rows(labels, classes=[0, 1, 2], fraction=0.0, seed=3).size == 0
    with pytest.raises(ValueError, match="fraction"):
        holdout_rows(labels, classes=[0, 1, 2], fraction=1.0, seed=3)


def test_a_class_keeps_its_held_out_images_whatever_else_is_loaded():
    _, everything = load_split_and_holdout("digits", "train", fraction=0.1, seed=0)
    _, some = load_split_and_holdout("digits", "train", fraction=0.1, seed=0, exclude_classes=(0, 1, 2))
    _, five = load_split_and_holdout("digits", "train", fraction=0.1, seed=0, only_classes=(5,))
    images_of_five = everything.get_images(np.flatnonzero(everything.labels == 5))
    np.testing.assert_array_equal(some.get_images(np.flatnonzero(some.labels == 2)), images_of_five)  # 5 is now 2.
    np.testing.assert_array_equal(five.get_images(np.arange(len(five))), images_of_five)
    # A shifted variant holds out the shifted images of the same rows.
    base = load_split("digits", "train")
    rows = holdout_rows(base.labels, classes=range(10), fraction=0.1, seed=0)
    _, shifted = load_split_and_holdout("digits_shift/blur", "train", fraction=0.1, seed=0)
    full_shifted = load_split("digits_shift/blur", "train")
    np.testing.assert_array_equal(shifted.get_images(np.arange(len(shifted))), full_shifted.get_images(rows))
    np.testing.assert_array_equal(shifted.labels, base.labels[rows])


def _digits_config(**dataset):
    config = schema.default_config()
    config.dataset.name = "digits"
    config.dataset.exclude_classes = (9,)
    for key, value in dataset.items():
        config.dataset[key] = value
    return config


@pytest.fixture
def split_reads(monkeypatch):
    reads = []
    loader = registry._BASE_LOADERS["digits"]

    def spy(split, data_dir):
        reads.append(split)
        return loader(split, data_dir)

    monkeypatch.setitem(registry._BASE_LOADERS, "digits", spy)
    return reads


def test_load_data_trains_without_the_holdout_and_evaluates_on_it_without_reading_test(split_reads):
    full_train, full_test = load_data(_digits_config())
    assert (len(full_train), len(full_test)) == (1347 - 138, 450 - 42)  # Class 9 out; no holdout by default.
    train, validation = load_data(_digits_config(validation_fraction=0.1, test_split=schema.HOLDOUT_SPLIT))
    assert split_reads[-1:] == ["train"] and split_reads.count("test") == 1  # Only the first call read test.
    counts = np.bincount(full_train.labels)
    np.testing.assert_array_equal(np.bincount(validation.labels), np.round(0.1 * counts))
    assert len(train) + len(validation) == len(full_train)
    train_images = {image.tobytes() for image in train.get_images(np.arange(len(train)))}
    assert not any(image.tobytes() in train_images for image in validation.get_images(np.arange(len(validation))))

    same_train, test = load_data(_digits_config(validation_fraction=0.1))
    assert len(test) == len(full_test) and split_reads[-1] == "test"
    np.testing.assert_array_equal(same_train.labels, train.labels)
    with pytest.raises(DataError, match="validation_fraction"):
        load_data(_digits_config(test_split=schema.HOLDOUT_SPLIT))
