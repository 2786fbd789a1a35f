"""Tests of kNN retrieval: exact Recall@k and kNN accuracy on hand-made points, self-exclusion, blocking."""

import numpy as np
import pytest

from hrrl_jax.evaluate import retrieval

# Four directions in the plane: a, b close together; c, d close together.
POINTS = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], np.float32)


def test_recall_at_1_on_hand_made_points():
    assert retrieval.recall_at_k(POINTS, np.array([0, 0, 1, 1])) == 1.0
    assert retrieval.recall_at_k(POINTS, np.array([0, 1, 1, 0])) == 0.0
    # a <-> b hit; c -> d and d -> c miss.
    assert retrieval.recall_at_k(POINTS, np.array([0, 0, 1, 0])) == 0.5


def test_recall_at_2_counts_a_hit_anywhere_in_the_top_2():
    # c's two nearest are d, b (both label 0): miss. d's are c, b: b shares its label: hit.
    assert retrieval.recall_at_k(POINTS, np.array([0, 0, 1, 0]), k=2) == 0.75


def test_similarity_is_cosine_so_scale_does_not_matter():
    scaled = POINTS * np.array([[5.0], [0.1], [3.0], [100.0]], np.float32)
    labels = np.array([0, 0, 1, 0])
    assert retrieval.recall_at_k(scaled, labels) == retrieval.recall_at_k(POINTS, labels) == 0.5


def test_query_is_excluded_only_when_it_is_its_own_gallery():
    labels = np.array([0, 1, 1, 0])
    assert retrieval.recall_at_k(POINTS, labels) == 0.0
    # The same arrays passed as an explicit gallery: each query finds itself.
    assert retrieval.recall_at_k(POINTS, labels, gallery_features=POINTS, gallery_labels=labels) == 1.0


def test_separate_gallery():
    gallery = np.array([[1.0, 0.05], [0.05, 1.0]], np.float32)
    queries = np.array([[1.0, 0.0], [0.0, 1.0], [0.2, 0.8]], np.float32)
    recall = retrieval.recall_at_k(
        queries, np.array([7, 7, 3]), gallery_features=gallery, gallery_labels=np.array([7, 3])
    )
    assert recall == pytest.approx(2 / 3)


@pytest.mark.parametrize("block_size", [1, 7, 64])
def test_neighbours_do_not_depend_on_the_block_size(block_size):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(37, 5)).astype(np.float32)
    labels = rng.integers(0, 3, 37)
    reference = retrieval.nearest_neighbour_labels(features, labels=labels, k=3, block_size=1024)
    blocked = retrieval.nearest_neighbour_labels(features, labels=labels, k=3, block_size=block_size)
    np.testing.assert_array_equal(blocked, reference)
    assert retrieval.recall_at_k(features, labels, block_size=block_size) == retrieval.recall_at_k(features, labels)


def test_knn_accuracy_majority_vote_and_tie_break():
    gallery = np.array([[1.0, 0.0], [0.95, 0.05], [0.9, 0.1], [0.0, 1.0]], np.float32)
    gallery_labels = np.array([2, 1, 1, 0])
    queries = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    # k=3: query 0 sees labels (2, 1, 1) -> 1, right; query 1 sees (0, 1, 1) -> 1, wrong.
    assert (
        retrieval.knn_accuracy(queries, np.array([1, 0]), k=3, gallery_features=gallery, gallery_labels=gallery_labels)
        == 0.5
    )
    # k=2: query 0 sees (2, 1), a tie: the nearest label, 2, wins.
    assert (
        retrieval.knn_accuracy(queries[:1], np.array([2]), k=2, gallery_features=gallery, gallery_labels=gallery_labels)
        == 1.0
    )


def test_errors_say_what_was_wrong():
    with pytest.raises(ValueError, match="k must be between 1 and the 3 gallery rows.*k=4"):
        retrieval.recall_at_k(POINTS, np.array([0, 0, 1, 1]), k=4)
    with pytest.raises(ValueError, match="gallery_labels is required"):
        retrieval.recall_at_k(POINTS, np.array([0, 0, 1, 1]), gallery_features=POINTS)
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        retrieval.recall_at_k(POINTS, np.array([0, 0, 1]))
