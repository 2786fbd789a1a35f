"""kNN retrieval on frozen features: Recall@k and kNN classification accuracy, by cosine similarity.

Features are L2-normalised, so similarity(q, g) = <q/‖q‖, g/‖g‖>. Queries are processed in blocks of
``block_size`` rows (one compiled ``lax.map`` over the blocks), so only a (block_size x gallery) matrix of
similarities lives at a time: 10k x 10k needs about 40 MB per 1024-query block, never 400 MB.
When no gallery is given the queries are their own gallery and each query's own entry is excluded.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Norms below this are treated as this, so an all-zero feature yields zero similarities, not NaN.
_MIN_NORM = 1e-12


def _l2_normalise(features: jax.Array) -> jax.Array:
    return features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True), _MIN_NORM)


@functools.partial(jax.jit, static_argnames=("k", "exclude_self", "block_size"))
def _nearest_gallery_indices(
    queries: jax.Array, gallery: jax.Array, *, k: int, exclude_self: bool, block_size: int
) -> jax.Array:
    """(Q, k) gallery indices of each query's k most similar gallery rows, most similar first.

    Ties go to the lower gallery index (``lax.top_k``'s order). With ``exclude_self``, gallery row i is
    never a neighbour of query i.
    """
    num_queries = queries.shape[0]
    num_blocks = -(-num_queries // block_size)
    padding = num_blocks * block_size - num_queries
    query_blocks = jnp.pad(_l2_normalise(queries), ((0, padding), (0, 0))).reshape(num_blocks, block_size, -1)
    index_blocks = jnp.arange(num_blocks * block_size).reshape(num_blocks, block_size)
    gallery = _l2_normalise(gallery)
    gallery_index = jnp.arange(gallery.shape[0])

    def neighbours_of_block(block):
        query_block, query_index = block
        similarity = query_block @ gallery.T
        if exclude_self:
            similarity = jnp.where(query_index[:, None] == gallery_index[None, :], -jnp.inf, similarity)
        return jax.lax.top_k(similarity, k)[1]

    neighbours = jax.lax.map(neighbours_of_block, (query_blocks, index_blocks))
    return neighbours.reshape(num_blocks * block_size, k)[:num_queries]


def nearest_neighbour_labels(
    features,
    *,
    k: int,
    gallery_features=None,
    gallery_labels=None,
    labels=None,
    block_size: int = 1024,
) -> np.ndarray:
    """(Q, k) labels of each query's k nearest gallery rows by cosine similarity, nearest first.

    With ``gallery_features=None`` the queries ``features`` are the gallery (labelled by ``labels``) and
    each query's own row is excluded; otherwise ``gallery_labels`` must be given.
    """
    queries = np.asarray(features, np.float32)
    if queries.ndim != 2:
        raise ValueError(f"features must be a 2-D array (queries x dimensions); got shape {queries.shape}.")
    exclude_self = gallery_features is None
    if exclude_self:
        gallery, gallery_labels = queries, labels
    else:
        if gallery_labels is None:
            raise ValueError("gallery_labels is required when gallery_features is given.")
        gallery = np.asarray(gallery_features, np.float32)
    gallery_labels = np.asarray(gallery_labels)
    if gallery.ndim != 2 or gallery.shape[1] != queries.shape[1]:
        raise ValueError(
            f"gallery features must have shape (G, {queries.shape[1]}) like the queries; got {gallery.shape}."
        )
    if gallery_labels.shape != (gallery.shape[0],):
        raise ValueError(f"gallery labels must have shape ({gallery.shape[0]},); got {gallery_labels.shape}.")
    available = gallery.shape[0] - int(exclude_self)
    if not 1 <= k <= available:
        raise ValueError(f"k must be between 1 and the {available} gallery rows a query can retrieve; got k={k}.")
    if block_size < 1:
        raise ValueError(f"block_size must be a positive number of queries; got {block_size}.")
    indices = _nearest_gallery_indices(
        jnp.asarray(queries), jnp.asarray(gallery), k=k, exclude_self=exclude_self, block_size=block_size
    )
    return gallery_labels[np.asarray(indices)]


def _check_query_labels(labels, num_queries: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (num_queries,):
        raise ValueError(f"labels must have shape ({num_queries},) to match the features; got {labels.shape}.")
    return labels


def recall_at_k(
    features,
    labels,
    *,
    k: int = 1,
    gallery_features=None,
    gallery_labels=None,
    block_size: int = 1024,
) -> float:
    """Recall@k: the fraction of queries with at least one same-label item among their k nearest neighbours.

        Recall@k = (1/Q) Σ_q [ ∃ j ≤ k : label(neighbour_j(q)) = label(q) ]

    Args:
      features: (Q, d) query features; labels: (Q,) their labels.
      k: neighbours considered.
      gallery_features, gallery_labels: the searched set; by default the queries themselves, each query
        excluded from its own neighbours (leave-one-out retrieval).
      block_size: queries per similarity block (memory ~ block_size x gallery size floats).
    """
    labels = _check_query_labels(labels, np.shape(features)[0])
    neighbour_labels = nearest_neighbour_labels(
        features,
        k=k,
        gallery_features=gallery_features,
        gallery_labels=gallery_labels,
        labels=labels,
        block_size=block_size,
    )
    return float(np.mean(np.any(neighbour_labels == labels[:, None], axis=1)))


def knn_accuracy(
    features,
    labels,
    *,
    k: int = 5,
    gallery_features=None,
    gallery_labels=None,
    block_size: int = 1024,
) -> float:
    """Accuracy of the majority vote of the k nearest gallery neighbours (cosine similarity).

    A tie in votes goes to the tied label whose first occurrence is nearest to the query. Gallery and
    self-exclusion as in ``recall_at_k``.
    """
    labels = _check_query_labels(labels, np.shape(features)[0])
    neighbour_labels = nearest_neighbour_labels(
        features,
        k=k,
        gallery_features=gallery_features,
        gallery_labels=gallery_labels,
        labels=labels,
        block_size=block_size,
    )
    same_label = neighbour_labels[:, :, None] == neighbour_labels[:, None, :]  # (Q, k, k)
    votes = same_label.sum(axis=2)
    first_rank = np.argmax(same_label, axis=2)  # rank of the nearest neighbour with the same label
    # Integer votes plus a fraction < 1 that prefers the earlier first occurrence: breaks ties only.
    score = votes + (k - first_rank) / (k + 1)
    predictions = np.take_along_axis(neighbour_labels, np.argmax(score, axis=1)[:, None], axis=1)[:, 0]
    return float(np.mean(predictions == labels))
