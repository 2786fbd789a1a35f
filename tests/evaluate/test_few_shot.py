"""Few-shot probes: hand-computed nearest-class-mean predictions, shared draws, within-concept tasks, worst concept."""

import numpy as np
import pytest

from hrrl_jax.data import ConceptHierarchy
from hrrl_jax.data.hierarchy import fashion_mnist_hierarchy
from hrrl_jax.evaluate import concepts, few_shot

# One shot of each of three classes, centred on their mean (0, 0): the normalised class means are (1, 0), (0, 1)
# and (-1, -1)/√2. The third query (-0.5, -0.1) points at class 2, although the raw mean of class 1 is nearer to it
# (squared distances 6.26, 4.66, 5.86): centring and normalising decide.
SUPPORT = np.array([[2.0, 0.0], [0.0, 2.0], [-2.0, -2.0]])
QUERIES = np.array([[10.0, 1.0], [0.2, 1.0], [-0.5, -0.1]])


def test_nearest_class_mean_on_centred_normalised_features_by_hand():
    predictions = few_shot.nearest_class_mean_predictions(SUPPORT, np.array([0, 1, 2]), QUERIES)
    np.testing.assert_array_equal(predictions, [0, 1, 2])
    # A translation of everything moves the support mean with it; a query's scale is normalised away.
    shifted = few_shot.nearest_class_mean_predictions(SUPPORT + 5.0, np.array([0, 1, 2]), QUERIES * [[3], [1], [7]] + 5)
    np.testing.assert_array_equal(shifted, [0, 1, 2])
    # Labels need not be 0..C-1: predictions are support labels; a query equally far from two means takes the lower.
    tie = few_shot.nearest_class_mean_predictions(np.array([[1.0, 0.0], [-1.0, 0.0]]), [7, 3], np.array([[0.0, 5.0]]))
    np.testing.assert_array_equal(tie, [3])


def test_few_shot_accuracy_per_draw_by_hand():
    # Class 0 has two pool rows, (1, 0) and (0, 1); class 1 one, (-1, 0). The two queries of class 0 are both
    # right with support (0, 1) (centre (-0.5, 0.5)), and one of them with support (1, 0) (centre (0, 0)).
    pool = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    pool_labels = np.array([0, 0, 1])
    queries, query_labels = np.array([[0.1, 1.0], [-0.1, 1.0]]), np.array([0, 0])
    result = few_shot.few_shot_accuracy(pool, pool_labels, queries, query_labels, shots=1, num_draws=20, seed_base=3)
    draws = few_shot.support_draws(pool_labels, shots=1, num_draws=20, seed_base=3)
    expected = [1.0 if 1 in rows else 0.5 for rows in draws]
    assert result["accuracies"] == expected and 0.5 < result["mean"] < 1.0  # Both supports were drawn.
    assert result["mean"] == pytest.approx(np.mean(expected))
    assert result["std"] == pytest.approx(np.std(expected, ddof=1)) and result["shots"] == 1


def test_draws_are_fixed_by_the_seed_and_the_labels_alone():
    labels = np.repeat([2, 0, 1], [10, 12, 9])
    first = few_shot.support_draws(labels, shots=4, num_draws=5, seed_base=7)
    again = few_shot.support_draws(labels.copy(), shots=4, num_draws=5, seed_base=7)
    for draw, (rows, same) in enumerate(zip(first, again)):
        np.testing.assert_array_equal(rows, same)
        np.testing.assert_array_equal(labels[rows], np.repeat([0, 1, 2], 4))  # Classes ascending, 4 shots each.
        assert len(set(rows.tolist())) == 12
        rng = np.random.default_rng([7, draw])  # The documented draw: default_rng([seed_base, d]).
        expected = [rng.choice(np.flatnonzero(labels == c), 4, replace=False) for c in (0, 1, 2)]
        np.testing.assert_array_equal(rows, np.concatenate(expected))
    other = few_shot.support_draws(labels, shots=4, num_draws=5, seed_base=8)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))


def test_too_few_examples_for_the_shots_are_refused():
    with pytest.raises(ValueError, match=r"classes \(label: count\) \{1: 2\}"):
        few_shot.support_draws(np.array([0, 0, 0, 1, 1]), shots=3, num_draws=1, seed_base=0)
    with pytest.raises(ValueError, match="no pool example"):
        few_shot.few_shot_accuracy(SUPPORT, [0, 1, 1], QUERIES, [0, 1, 2], shots=1, num_draws=2)


def _within_concept_data():
    # Concept "a": classes 0 and 1 far apart (always right); "b": classes 2 and 3 with identical features (every
    # query ties and goes to class 2: half right); "c": class 4 alone, no within-concept task.
    hierarchy = ConceptHierarchy(("0", "1", "2", "3", "4"), ("a", "b", "c"), np.array([0, 0, 1, 1, 2]))
    centres = np.array([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0], [0.0, 5.0], [3.0, 3.0]])
    pool_labels = np.repeat(np.arange(5), 6)
    query_labels = np.repeat(np.arange(5), 4)
    rng = np.random.default_rng(0)
    pool = centres[pool_labels] + 0.1 * rng.normal(size=(30, 2)) * (pool_labels < 2)[:, None]
    queries = centres[query_labels] + 0.1 * rng.normal(size=(20, 2)) * (query_labels < 2)[:, None]
    return hierarchy, pool, pool_labels, queries, query_labels


def test_within_concept_tasks_their_mean_and_the_worst_concept():
    hierarchy, pool, pool_labels, queries, query_labels = _within_concept_data()
    result = few_shot.within_concept_few_shot(
        pool, pool_labels, queries, query_labels, hierarchy, shots=2, num_draws=4, seed_base=0
    )
    assert list(result["per_concept"]) == ["a", "b"]
    assert result["per_concept"]["a"]["accuracies"] == [1.0] * 4
    assert result["per_concept"]["b"]["accuracies"] == [0.5] * 4
    assert result["mean"]["accuracies"] == [0.75] * 4 and result["mean"]["mean"] == 0.75
    assert result["worst_concept"] == "b" and result["worst"]["mean"] == 0.5 and result["worst"]["std"] == 0.0


def test_concept_groups_come_from_the_hierarchy():
    groups = concepts.concept_groups(fashion_mnist_hierarchy())
    assert {name: classes.tolist() for name, classes in groups.items()} == {
        "tops": [0, 2, 4, 6],  # T-shirt/top, Pullover, Coat, Shirt
        "trousers & dresses": [1, 3],  # Trouser, Dress
        "footwear": [5, 7, 9],  # Sandal, Sneaker, Ankle boot
    }
    identity = ConceptHierarchy.identity(["x", "y"])
    assert concepts.concept_groups(identity) == {}
    with pytest.raises(ValueError, match="no concept"):
        few_shot.within_concept_few_shot(SUPPORT[:2], [0, 1], QUERIES[:2], [0, 1], identity, shots=1, num_draws=2)


def test_per_concept_accuracy_and_worst_concept_by_hand():
    hierarchy = ConceptHierarchy(("0", "1", "2"), ("a", "b"), np.array([0, 0, 1]))
    labels = np.array([0, 1, 1, 2, 2])
    predictions = np.array([0, 0, 1, 2, 1])
    accuracy = concepts.per_concept_accuracy(predictions, labels, hierarchy)
    assert accuracy == {"a": pytest.approx(2 / 3), "b": 0.5}  # Pooled over a concept's classes.
    assert concepts.worst_concept(accuracy) == ("b", 0.5)
    assert concepts.worst_concept({"x": 0.4, "y": 0.4, "z": 0.9}) == ("x", 0.4)  # Ties: the first.
    assert concepts.per_concept_accuracy([2], [2], hierarchy) == {"b": 1.0}  # Concepts without examples: absent.
