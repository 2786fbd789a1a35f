"""Read-outs by concept: accuracy per concept, the worst concept, and the concepts that make a within-concept task.

A classifier's accuracy on a concept pools its classes (correct predictions of the concept's examples over their
number), as the trainer's evaluation does; the worst concept is the one of lowest accuracy (ties: the first).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from hrrl_jax.data import ConceptHierarchy


def per_concept_accuracy(predictions, labels, hierarchy: ConceptHierarchy) -> dict[str, float]:
    """Accuracy of `predictions` on the examples of each concept present in `labels`, by concept name."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or labels.ndim != 1:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must be equal 1-D shapes.")
    concepts = hierarchy.concept_of_class[labels]
    correct = predictions == labels
    return {
        name: float(np.mean(correct[concepts == k]))
        for k, name in enumerate(hierarchy.concept_names)
        if np.any(concepts == k)
    }


def worst_concept(accuracy_by_concept: Mapping[str, float]) -> tuple[str, float]:
    """(name, accuracy) of the concept of lowest accuracy; among equals, the first."""
    if not accuracy_by_concept:
        raise ValueError("no concept accuracies: pass at least one concept.")
    name = min(accuracy_by_concept, key=accuracy_by_concept.__getitem__)
    return name, float(accuracy_by_concept[name])


def concept_groups(hierarchy: ConceptHierarchy, *, min_classes: int = 2) -> dict[str, np.ndarray]:
    """Concept name -> its classes (int labels, ascending), for each concept of at least `min_classes` classes.

    These are the within-concept tasks: telling a concept's classes apart from each other only.
    """
    groups = {}
    for k, name in enumerate(hierarchy.concept_names):
        classes = np.flatnonzero(hierarchy.concept_of_class == k)
        if classes.size >= min_classes:
            groups[name] = classes
    return groups
