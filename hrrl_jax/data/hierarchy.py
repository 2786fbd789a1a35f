"""Concept hierarchies: which concept each class belongs to, for every data set the package knows.

A hierarchy is the concept map c: [C] -> [K] of docs/method.md §1 together with the class and concept names.
The robust objective weights concepts, so it needs `concept_of_class` and the number of training
examples per concept n_k = |{i : c(y_i) = k}|.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.resources
from collections.abc import Sequence

import numpy as np

from hrrl_jax.errors import DataError

_CONCEPTS_DIR = importlib.resources.files("hrrl_jax.data") / "concepts"


@dataclasses.dataclass(frozen=True)
class ConceptHierarchy:
    """A two-level label hierarchy: class y belongs to concept `concept_of_class[y]`.

    Attributes:
      class_names: name of each class, index = label.
      concept_names: name of each concept, index = concept id.
      concept_of_class: int32 [C], the concept id of each class; every concept has at least one class.
    """

    class_names: tuple[str, ...]
    concept_names: tuple[str, ...]
    concept_of_class: np.ndarray

    def __post_init__(self) -> None:
        concept_of_class = np.asarray(self.concept_of_class, dtype=np.int32)
        concept_of_class.setflags(write=False)
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "concept_names", tuple(self.concept_names))
        object.__setattr__(self, "concept_of_class", concept_of_class)
        if concept_of_class.shape != (len(self.class_names),):
            raise ValueError(
                f"concept_of_class has shape {concept_of_class.shape} but there are "
                f"{len(self.class_names)} class names; give one concept id per class."
            )
        if concept_of_class.size and (concept_of_class.min() < 0 or concept_of_class.max() >= len(self.concept_names)):
            raise ValueError(
                f"concept ids must lie in [0, {len(self.concept_names)}); saw "
                f"[{concept_of_class.min()}, {concept_of_class.max()}]."
            )
        empty = sorted(set(range(len(self.concept_names))) - set(concept_of_class.tolist()))
        if empty:
            raise ValueError(
                f"concepts {[self.concept_names[k] for k in empty]} have no class; drop them "
                "(ConceptHierarchy.restricted_to does this)."
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_concepts(self) -> int:
        return len(self.concept_names)

    def examples_per_concept(self, labels: np.ndarray) -> np.ndarray:
        """n_k = number of examples whose class belongs to concept k, int64 [K]."""
        labels = np.asarray(labels)
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise DataError(f"labels must lie in [0, {self.num_classes}); saw [{labels.min()}, {labels.max()}].")
        concepts = self.concept_of_class[labels.astype(np.int64)]
        return np.bincount(concepts, minlength=self.num_concepts).astype(np.int64)

    @classmethod
    def identity(cls, class_names: Sequence[str]) -> ConceptHierarchy:
        """One concept per class (data sets without a hierarchy): c(y) = y."""
        return cls(tuple(class_names), tuple(class_names), np.arange(len(class_names), dtype=np.int32))

    def restricted_to(self, classes: Sequence[int]) -> ConceptHierarchy:
        """The hierarchy of a subset of classes, relabelled 0..len(classes)-1 in the given order.

        Concepts keep their relative order; concepts left without a class are dropped.
        """
        classes = [int(y) for y in classes]
        bad = [y for y in classes if not 0 <= y < self.num_classes]
        if bad:
            raise ValueError(f"classes {bad} are outside [0, {self.num_classes}).")
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes must be distinct; got {classes}.")
        old_concepts = self.concept_of_class[classes]
        kept = np.unique(old_concepts)
        new_id = {int(k): i for i, k in enumerate(kept)}
        return ConceptHierarchy(
            class_names=tuple(self.class_names[y] for y in classes),
            concept_names=tuple(self.concept_names[k] for k in kept),
            concept_of_class=np.array([new_id[int(k)] for k in old_concepts], dtype=np.int32),
        )


FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DIGITS_CLASSES = tuple(str(d) for d in range(10))


def fashion_mnist_hierarchy() -> ConceptHierarchy:
    """Fashion-MNIST's garment types: tops, trousers & dresses, footwear, bags."""
    groups = {
        "tops": ("T-shirt/top", "Pullover", "Coat", "Shirt"),
        "trousers & dresses": ("Trouser", "Dress"),
        "footwear": ("Sandal", "Sneaker", "Ankle boot"),
        "bags": ("Bag",),
    }
    concept_names = tuple(groups)
    concept_by_class = {c: k for k, members in enumerate(groups.values()) for c in members}
    return ConceptHierarchy(
        FASHION_MNIST_CLASSES, concept_names, np.array([concept_by_class[c] for c in FASHION_MNIST_CLASSES])
    )


def _read_concept_file(file_name: str) -> list[dict[str, str]]:
    text = (_CONCEPTS_DIR / file_name).read_text()
    return list(csv.DictReader(text.splitlines()))


def cifar100_hierarchy() -> ConceptHierarchy:
    """CIFAR-100's 20 superclasses of 5 classes each.

    The map and names are those of TFDS' `label` and `coarse_label` features (the published CIFAR-100
    fine-to-coarse table), packaged in `concepts/cifar100_superclasses.txt`.
    """
    rows = _read_concept_file("cifar100_superclasses.txt")
    concept_names = [""] * 20
    for row in rows:
        concept_names[int(row["superclass_id"])] = row["superclass_name"]
    return ConceptHierarchy(
        tuple(row["class_name"] for row in rows),
        tuple(concept_names),
        np.array([int(row["superclass_id"]) for row in rows]),
    )


def imagenet_hierarchy() -> ConceptHierarchy:
    """ImageNet's 1000 classes in the authors' 11 WordNet concepts (`concepts/imagenet_concepts.txt`).

    Row i of the file is label i (TFDS' `imagenet2012` label order, by synset id). Concepts are numbered
    in order of first appearance in the file.
    """
    rows = _read_concept_file("imagenet_concepts.txt")
    concept_names: list[str] = []
    for row in rows:
        if row["concept_name"] not in concept_names:
            concept_names.append(row["concept_name"])
    return ConceptHierarchy(
        tuple(row["class_id"] for row in rows),
        tuple(concept_names),
        np.array([concept_names.index(row["concept_name"]) for row in rows]),
    )
