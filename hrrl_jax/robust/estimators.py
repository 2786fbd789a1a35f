"""Minibatch estimators: the unbiased per-concept loss ``f̂`` and summary statistics of weights."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from hrrl_jax.robust._batch import per_example_concepts
from hrrl_jax.robust._sharding import replicated


def concept_loss_estimate(
    per_example_loss: jax.Array,
    labels: jax.Array,
    concept_of_class: jax.Array,
    concept_sizes: jax.Array,
    weights: jax.Array | None = None,
) -> jax.Array:
    """Unbiased estimate of the per-concept losses from a uniform minibatch.

    See `method §4 <method.html#4-unbiased-minibatch-estimates>`_.

    ``f̂_k = (1/m) Σ_{i∈B, c(y_i)=k} (N/n_k) · v_i ℓ_i`` with ``N = Σ_k n_k``. For a batch drawn
    uniformly from the ``N`` training examples, ``E[f̂_k] = (1/n_k) Σ_{i: c(y_i)=k} v_i ℓ_i``, the
    concept's mean loss. A concept absent from the batch contributes 0 (still unbiased); nothing is
    divided by a batch count, so absent concepts never produce NaN.

    A label outside ``[0, C)`` is never clamped: it raises ``ValueError`` where the labels are concrete; under
    ``jit`` it is a ``checkify`` check (``checkify.user_checks``) and makes every entry NaN.

    Args:
      per_example_loss: ``ℓ``, shape ``[m]``.
      labels: integer class labels, shape ``[m]``.
      concept_of_class: ``c``, integer ``[C]`` mapping class to concept in ``[0, K)``.
      concept_sizes: ``n_k``, training examples per concept, shape ``[K]``, all positive.
      weights: optional example weights ``v`` (``[m]``); default 1.

    Returns:
      float32 ``[K]`` estimate with stopped gradient.
    """
    concept, in_range = per_example_concepts(concept_of_class, jnp.shape(concept_sizes)[0], labels, None)
    estimate = batch_concept_losses(per_example_loss, concept, concept_sizes, weights)
    return jnp.where(in_range, estimate, jnp.nan)


def batch_concept_losses(
    per_example_loss: jax.Array,
    concept: jax.Array,
    concept_sizes: jax.Array,
    weights: jax.Array | None = None,
    *,
    axis_name: Any = None,
) -> jax.Array:
    """``f̂`` of :func:`concept_loss_estimate` from each example's concept id (``[m]``, ids outside ``[0, K)`` left
    out); with ``axis_name``, each device holds a slice of the batch and ``f̂`` is that of the whole batch."""
    loss = replicated(jnp.asarray(per_example_loss, jnp.float32))
    concept = replicated(jnp.asarray(concept))
    if loss.ndim != 1 or concept.shape != loss.shape:
        raise ValueError(
            f"expected per_example_loss [m] and labels (or groups) [m], got shapes {loss.shape} and {concept.shape}."
        )
    concept_sizes = jnp.asarray(concept_sizes, jnp.float32)
    importance = jnp.sum(concept_sizes) / concept_sizes[jnp.maximum(concept, 0)]
    weighted = importance * loss
    if weights is not None:
        weighted = weighted * replicated(jnp.asarray(weights, jnp.float32))
    # segment_sum drops the ids outside [0, K): out-of-range examples are left out, never clamped.
    per_concept = jax.ops.segment_sum(weighted, concept, num_segments=concept_sizes.shape[0])
    batch_size = loss.shape[0]
    if axis_name is not None:
        per_concept = jax.lax.psum(per_concept, axis_name)
        batch_size = jax.lax.psum(batch_size, axis_name)
    return jax.lax.stop_gradient(per_concept / batch_size)


@jax.jit
def weight_stats(weights: jax.Array) -> dict[str, jax.Array]:
    """Summary statistics of per-example weights, as jit-friendly float32 scalars.

    * ``ess``: normalised effective sample size ``(Σw)² / (m Σw²)`` in ``(0, 1]`` (1 = uniform).
    * ``entropy``: ``−Σ p_i log p_i`` of ``p = w / Σw`` in nats, at most ``log m``.
    * ``max_weight``: ``max_i w_i``.

    All-zero weights give ``ess = entropy = 0`` rather than NaN.
    """
    weights = jnp.asarray(weights, jnp.float32)
    total = jnp.sum(weights)
    sum_of_squares = jnp.sum(weights**2)
    has_mass = sum_of_squares > 0
    ess = jnp.where(has_mass, total**2 / (weights.size * jnp.where(has_mass, sum_of_squares, 1.0)), 0.0)
    share = weights / jnp.where(total > 0, total, 1.0)
    entropy = -jnp.sum(jnp.where(share > 0, share * jnp.log(jnp.where(share > 0, share, 1.0)), 0.0))
    return {"ess": ess, "entropy": entropy, "max_weight": jnp.max(weights)}
