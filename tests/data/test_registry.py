"""load_split: data sets by name, sub-splits, class filters, shifted variants and actionable errors."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from hrrl_jax.data import KNOWN_DATASETS, describe_dataset, fashion_mnist, load_split


def test_digits_split_is_fixed_and_disjoint():
    train, test = load_split("digits", "train"), load_split("digits", "test")
    assert (len(train), len(test)) == (1347, 450)
    assert train.info.image_shape == (8, 8, 1) and train.info.hierarchy.num_concepts == 10
    images = train.get_images(np.arange(5))
    assert images.dtype == np.uint8 and images.shape == (5, 8, 8, 1) and images.max() <= 255
    np.testing.assert_array_equal(load_split("digits", "train").labels, train.labels)
    all_train = {img.tobytes() for img in train.get_images(np.arange(len(train)))}
    overlap = sum(img.tobytes() in all_train for img in test.get_images(np.arange(len(test))))
    assert overlap < 10  # only the few duplicate drawings of the original data


def test_sub_splits_partition_the_split():
    train = load_split("digits", "train")
    head, tail = load_split("digits", "train[:90%]"), load_split("digits", "train[90%:]")
    assert len(head) + len(tail) == len(train) and len(head) == round(0.9 * len(train))
    np.testing.assert_array_equal(np.concatenate([head.labels, tail.labels]), train.labels)
    np.testing.assert_array_equal(tail.get_images(np.array([0])), train.get_images(np.array([len(head)])))
    assert len(load_split("digits", "test[10:20]")) == 10


def test_exclude_and_only_classes_relabel():
    full = load_split("digits", "test")
    excluded = load_split("digits", "test", exclude_classes=[0, 5])
    assert excluded.info.num_classes == 8 and excluded.info.hierarchy.class_names[:5] == ("1", "2", "3", "4", "6")
    assert len(excluded) == np.sum((full.labels != 0) & (full.labels != 5))
    original_of_new = np.array([1, 2, 3, 4, 6, 7, 8, 9])
    kept_rows = np.flatnonzero((full.labels != 0) & (full.labels != 5))
    np.testing.assert_array_equal(original_of_new[excluded.labels], full.labels[kept_rows])
    np.testing.assert_array_equal(excluded.get_images(np.arange(3)), full.get_images(kept_rows[:3]))

    only = load_split("digits", "test", only_classes=[7, 3])
    assert only.info.hierarchy.class_names == ("7", "3")
    np.testing.assert_array_equal(np.array([7, 3])[only.labels], full.labels[np.isin(full.labels, [3, 7])])
    with pytest.raises(ValueError, match="outside"):
        load_split("digits", "test", exclude_classes=[10])


def test_held_out_concept_hierarchy(fashion_mnist_data_dir):
    held_out = [0, 1, 5]  # one class of each multi-class concept: T-shirt/top, Trouser, Sandal
    source = load_split("fashion_mnist", "test", data_dir=fashion_mnist_data_dir, exclude_classes=held_out)
    assert source.info.hierarchy.concept_names == ("tops", "trousers & dresses", "footwear", "bags")
    np.testing.assert_array_equal(source.info.hierarchy.examples_per_concept(source.labels), [3000, 1000, 2000, 1000])
    target = load_split("fashion_mnist", "test", data_dir=fashion_mnist_data_dir, only_classes=held_out)
    assert target.info.hierarchy.concept_names == ("tops", "trousers & dresses", "footwear")
    assert len(target) == 3000


def test_fashion_mnist_from_debian_files(fashion_mnist_data_dir):
    test = load_split("fashion_mnist", "test", data_dir=fashion_mnist_data_dir)
    assert len(test) == 10000 and test.info.image_shape == (28, 28, 1)
    np.testing.assert_array_equal(np.bincount(test.labels), np.full(10, 1000))
    images = test.get_images(np.arange(len(test)))
    assert abs(images.mean() / 255 - 0.286) < 0.01  # the published pixel mean
    builder = fashion_mnist.FashionMnistLocal(data_dir=fashion_mnist_data_dir, file_format="array_record")
    assert builder.info.splits["train"].num_examples == 60000


def test_shifted_variant_is_deterministic_and_differs():
    base = load_split("digits", "test")
    shifted = load_split("digits_shift/lowres4", "test")
    assert shifted.info.name == "digits_shift/lowres4" and shifted.info.mean == base.info.mean
    np.testing.assert_array_equal(shifted.labels, base.labels)
    rows = np.arange(50)
    assert np.mean(shifted.get_images(rows) != base.get_images(rows)) > 0.3
    np.testing.assert_array_equal(shifted.get_images(rows), load_split("digits_shift/lowres4", "test").get_images(rows))


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="known: fashion_mnist, digits.*fashion_mnist_shift/lowres4"):
        load_split("mnist", "train")
    with pytest.raises(ValueError, match="unknown data set 'digits_shift/sepia'"):
        load_split("digits_shift/sepia", "train")
    with pytest.raises(ValueError, match="has splits"):
        load_split("digits", "validation")
    assert set(KNOWN_DATASETS) == {"fashion_mnist", "digits", "cifar10", "cifar100", "imagenet2012"}


def test_missing_tfds_data_set_says_how_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_split("cifar100", "train", data_dir=str(tmp_path))
    message = str(error.value)
    assert "'cifar100'" in message and str(tmp_path) in message
    assert f"tfds build cifar100 --file_format=array_record --data_dir={tmp_path}" in message


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(tfds.download.DownloadManager, "download", offline)
    empty_manual_dir = tmp_path / "manual"
    empty_manual_dir.mkdir()
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        fashion_mnist.prepared_builder(str(tmp_path / "tfds"), manual_dir=str(empty_manual_dir))


@pytest.mark.parametrize(
    "name, filters",
    [("digits", {}), ("digits_shift/lowres2", {}), ("digits", {"exclude_classes": (3, 7)}),
     ("digits", {"only_classes": (5, 1, 2), "exclude_classes": (1,)})],
)  # fmt: skip
def test_describe_dataset_is_the_loaded_description_without_reading_data(name, filters, monkeypatch):
    expected = load_split(name, "train", **filters).info
    import hrrl_jax.data.loaders as loaders

    monkeypatch.setattr(loaders, "_digits_arrays", lambda: pytest.fail("describe_dataset read the data"))
    described = describe_dataset(name, **filters)
    assert (described.name, described.num_classes, described.image_shape, described.mean, described.std) == (
        expected.name, expected.num_classes, expected.image_shape, expected.mean, expected.std
    )  # fmt: skip
    assert described.hierarchy.class_names == expected.hierarchy.class_names
    np.testing.assert_array_equal(described.hierarchy.concept_of_class, expected.hierarchy.concept_of_class)
