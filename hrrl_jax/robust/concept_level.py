"""Closed-form worst-case concept distributions p*(f) for the concept-level adversary.

For concept losses ``f ∈ R^K``, a prior ``q`` on the simplex and a penalty ``λ > 0``, each function
returns the exact maximiser of ``⟨p, f⟩ − λ·D(p, q)`` over the simplex (`method §2 <method.html#2-concept-level>`_).
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp

from hrrl_jax.robust._checks import check_positive
from hrrl_jax.robust.simplex import project_simplex

Divergence = Literal["l2", "kl", "wasserstein", "none"]
DIVERGENCES = ("l2", "kl", "wasserstein", "none")
DEFAULT_CONCEPT_TEMPERATURE = 1.0


def default_cost(num_concepts: int) -> jax.Array:
    """The ground cost ``M = 1 − I`` between concepts: moving mass to any other concept costs 1."""
    return 1.0 - jnp.eye(num_concepts, dtype=jnp.float32)


def concept_best_response(
    concept_losses: jax.Array,
    prior: jax.Array,
    *,
    divergence: Divergence,
    lam: float | jax.Array,
    cost: jax.Array | None = None,
    temperature: float | jax.Array | None = None,
) -> jax.Array:
    """The worst-case concept distribution ``p*(f)`` in closed form.

    * ``"l2"``: ``argmax_p ⟨p,f⟩ − (λ/2)‖p − q‖² = Π_Δ(q + f/λ)`` (sort-based simplex projection).
    * ``"kl"``: ``argmax_p ⟨p,f⟩ − λ·KL(p‖q) = softmax(log q + f/λ)``.
    * ``"wasserstein"``: entropic, penalised optimal transport from ``q`` with ground cost ``M``,
      ``p_l = Σ_k q_k · softmax_l((f_l − λ M_kl) / τ_c)``: the exact maximiser over couplings
      ``π`` with ``π1 = q`` of ``Σ_kl π_kl (f_l − λ M_kl) − τ_c Σ_kl π_kl log(π_kl / q_k)``,
      with ``p = πᵀ1``.
    * ``"none"``: ``p = q`` (no concept-level adversary).

    ``λ = inf`` returns ``q`` for every divergence. ``lam``, ``temperature`` and the losses may be
    traced (``jit``/``vmap`` over hyperparameters). Math in float32 with max-subtracted softmaxes.

    Args:
      concept_losses: ``f``, shape ``[..., K]``.
      prior: ``q``, shape ``[K]``, on the simplex (zeros allowed).
      divergence: one of ``"l2"``, ``"kl"``, ``"wasserstein"``, ``"none"``.
      lam: penalty ``λ > 0``; smaller means a stronger adversary.
      cost: ``[K, K]`` non-negative ground cost for ``"wasserstein"``; default ``1 − I``.
      temperature: ``τ_c > 0`` for ``"wasserstein"`` (default 1.0); not used by the others.

    Returns:
      float32 ``[..., K]`` distributions on the simplex.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}.")
    if divergence != "wasserstein" and (cost is not None or temperature is not None):
        raise ValueError(
            f"cost and temperature only apply to divergence='wasserstein', got divergence={divergence!r} "
            f"with cost={'set' if cost is not None else None}, temperature={temperature!r}; drop them."
        )
    check_positive("lam", lam, allow_arrays=True)
    concept_losses = jnp.asarray(concept_losses, jnp.float32)
    prior = jnp.asarray(prior, jnp.float32)
    if prior.shape != concept_losses.shape[-1:]:
        raise ValueError(
            f"prior has shape {prior.shape} but the concept losses have {concept_losses.shape[-1]} "
            "concepts on their last axis; pass one prior entry per concept."
        )
    if divergence == "wasserstein":
        temperature = DEFAULT_CONCEPT_TEMPERATURE if temperature is None else temperature
        check_positive("temperature", temperature, allow_arrays=True)
    return _best_response(concept_losses, prior, lam, cost, temperature, divergence=divergence)


@functools.partial(jax.jit, static_argnames=("divergence",))
def _best_response(
    concept_losses: jax.Array,
    prior: jax.Array,
    lam: float | jax.Array,
    cost: jax.Array | None,
    temperature: float | jax.Array | None,
    *,
    divergence: Divergence,
) -> jax.Array:
    """The closed forms of :func:`concept_best_response`, compiled once per divergence and shape."""
    lam = jnp.asarray(lam, jnp.float32)
    if divergence == "none":
        return jnp.broadcast_to(prior, concept_losses.shape)
    if divergence == "l2":
        return project_simplex(prior + concept_losses / lam)
    if divergence == "kl":
        return jax.nn.softmax(jnp.log(prior) + concept_losses / lam, axis=-1)
    return _wasserstein_best_response(concept_losses, prior, lam, cost, temperature)


def _wasserstein_best_response(
    concept_losses: jax.Array,
    prior: jax.Array,
    lam: jax.Array,
    cost: jax.Array | None,
    temperature: float | jax.Array,
) -> jax.Array:
    """``p_l = Σ_k q_k softmax_l((f_l − λ M_kl) / τ_c)``, safe for ``λ = inf`` (no ``inf·0``)."""
    num_concepts = concept_losses.shape[-1]
    cost = default_cost(num_concepts) if cost is None else jnp.asarray(cost, jnp.float32)
    if cost.shape != (num_concepts, num_concepts):
        raise ValueError(f"cost must be a [K, K] = [{num_concepts}, {num_concepts}] matrix, got shape {cost.shape}.")
    penalty = jnp.where(cost == 0, 0.0, lam * cost)
    scores = (concept_losses[..., None, :] - penalty) / jnp.asarray(temperature, jnp.float32)
    transport = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("k,...kl->...l", prior, transport)
