"""Concept hierarchies of the known data sets and their restriction to subsets of classes."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from hrrl_jax.data import ConceptHierarchy, hierarchy


def _members(h: ConceptHierarchy) -> dict[str, set[str]]:
    return {
        name: {h.class_names[y] for y in np.flatnonzero(h.concept_of_class == k)}
        for k, name in enumerate(h.concept_names)
    }


def test_fashion_mnist_garment_types():
    h = hierarchy.fashion_mnist_hierarchy()
    assert h.class_names[0] == "T-shirt/top" and h.class_names[9] == "Ankle boot"
    assert _members(h) == {
        "tops": {"T-shirt/top", "Pullover", "Coat", "Shirt"},
        "trousers & dresses": {"Trouser", "Dress"},
        "footwear": {"Sandal", "Sneaker", "Ankle boot"},
        "bags": {"Bag"},
    }
    assert h.concept_of_class.dtype == np.int32


def test_cifar100_twenty_superclasses_of_five():
    h = hierarchy.cifar100_hierarchy()
    assert (h.num_classes, h.num_concepts) == (100, 20)
    np.testing.assert_array_equal(np.bincount(h.concept_of_class), np.full(20, 5))
    members = _members(h)
    assert members["people"] == {"baby", "boy", "girl", "man", "woman"}
    assert members["trees"] == {"maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"}
    assert h.concept_names[0] == "aquatic_mammals" and h.concept_names[19] == "vehicles_2"


def test_imagenet_eleven_concepts_in_tfds_label_order():
    h = hierarchy.imagenet_hierarchy()
    assert (h.num_classes, h.num_concepts) == (1000, 11)
    assert list(h.class_names) == tfds.builder("imagenet2012").info.features["label"].names
    sizes = dict(zip(h.concept_names, np.bincount(h.concept_of_class)))
    assert sizes["dog"] == 118 and sizes["bird"] == 59 and sizes["container"] == 56
    assert h.concept_names[h.concept_of_class[0]] == "animal"  # n01440764, tench


def test_examples_per_concept_counts():
    h = hierarchy.fashion_mnist_hierarchy()
    labels = np.array([0, 2, 4, 6, 1, 8, 8, 9])
    np.testing.assert_array_equal(h.examples_per_concept(labels), [4, 1, 1, 2])
    assert h.examples_per_concept(labels).dtype == np.int64
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        h.examples_per_concept(np.array([10]))


def test_identity_and_restriction():
    identity = ConceptHierarchy.identity(["a", "b", "c"])
    np.testing.assert_array_equal(identity.concept_of_class, [0, 1, 2])
    fashion = hierarchy.fashion_mnist_hierarchy()
    restricted = fashion.restricted_to([8, 0, 2])  # Bag, T-shirt/top, Pullover
    assert restricted.class_names == ("Bag", "T-shirt/top", "Pullover")
    assert restricted.concept_names == ("tops", "bags")  # order kept, empty concepts dropped
    np.testing.assert_array_equal(restricted.concept_of_class, [1, 0, 0])
    with pytest.raises(ValueError, match="outside"):
        fashion.restricted_to([10])


def test_inconsistent_hierarchy_is_rejected():
    with pytest.raises(ValueError, match="have no class"):
        ConceptHierarchy(("a", "b"), ("x", "y", "z"), np.array([0, 1]))
    with pytest.raises(ValueError, match="one concept id per class"):
        ConceptHierarchy(("a", "b"), ("x",), np.array([0]))
