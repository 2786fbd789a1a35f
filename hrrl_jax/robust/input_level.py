"""The input-space example level: worst-case inputs by closed-form ascent, and the clean + robust loss mixture.

The inner problem of `method §3 <method.html#3-example-level>`_ ("The input-space form") with the ground cost on
the input itself, ``sup_{x'} Σ_i w_i ℓ_i(x') − Σ_i γ_i ‖x'_i − x_i‖²`` (Sinha, Namkoong, Duchi, "Certifying Some
Distributional Robustness with Principled Adversarial Training", ICLR 2018), for any model given as a
per-example-loss callable.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hrrl_jax.robust._batch import ids_in_range
from hrrl_jax.robust._checks import concrete_value

# A model as the input level sees it: inputs [m, ...] -> per-example losses [m] (unreduced).
PerExampleLoss = Callable[[jax.Array], jax.Array]


def worst_case_inputs(
    per_example_loss_at: PerExampleLoss,
    inputs: jax.Array,
    *,
    gamma: float | jax.Array,
    steps: int = 1,
    fraction: float = 1.0,
    weights: jax.Array | None = None,
) -> jax.Array:
    """``x'`` after ``steps`` closed-form ascent steps on ``Σ_i w_i ℓ_i(x') − Σ_i γ_i ‖x'_i − x_i‖²``, no gradient.

    Step ``j``: ``x_{j+1,i} = x_i + stop_grad(∇_{x_i} L(x_j)) / (2γ_i)``, ``x_0 = x``, ``L = Σ_i w_i ℓ_i``:
    gradient ascent on the penalised objective with step ``1/(2γ_i)`` per example, the fixed-point iteration of
    its stationarity condition ``x'_i = x_i + ∇_{x_i} L(x') / (2γ_i)``. One step is the exact maximiser of the
    loss linearised at ``x``. Where examples do not interact, ``∇_{x_i} L = w_i ∇_{x_i} ℓ_i``, so example ``i``
    moves by ``w_i ∇ℓ_i / (2γ_i)``: only ``w_i / γ_i`` matters. Where they do (train-mode BatchNorm), it is the
    step of the joint problem of the batch.

    Forms: ``gamma`` a per-example ``[m]`` vector prices each example's move on its own (a per-concept ``γ_k``
    through :func:`per_example_gamma`); ``γ_i = inf`` keeps ``x'_i = x_i`` exactly. ``weights`` (``w_i >= 0``,
    e.g. :func:`hrrl_jax.robust.loss_weights`) couple the ascent to the concept level: the inputs then ascend
    the weighted loss ``(1/m) Σ_i w_i ℓ_i`` the model is trained on. ``fraction = f`` perturbs only the first
    ``n = ⌈f·m⌉`` rows; the other rows keep ``x'_i = x_i`` (``γ_i = inf`` for them) but their losses stay in
    ``L``, so under BatchNorm the perturbed rows ascend against the whole batch. The ascent passes run on all
    ``m`` rows either way: ``fraction`` changes the objective, not the cost.

    Runs under ``jit`` with static shapes (``steps`` and ``fraction`` are Python numbers); the ascent and its
    gradient are float32 whatever the dtype of ``inputs``.

    Args:
      per_example_loss_at: inputs ``[m, ...]`` -> per-example losses ``ℓ`` ``[m]``, the model and labels bound.
      inputs: ``x``, float ``[m, ...]`` (e.g. normalised images).
      gamma: ``γ > 0`` (``inf`` allowed): a scalar, or one value per example ``[m]``.
      steps: number of ascent steps, at least 1.
      fraction: ``f ∈ (0, 1]``, the share of the batch (its first rows) that is perturbed.
      weights: optional ``w`` ``[m]``, ``>= 0``; ``None`` is ``w ≡ 1``.

    Returns:
      float32 ``x'`` ``[m, ...]`` with stopped gradient.
    """
    clean = jax.lax.stop_gradient(jnp.asarray(inputs, jnp.float32))
    batch_size = clean.shape[0]
    _check_steps_and_fraction(steps, fraction)
    gamma = _checked_gamma(gamma, batch_size)
    row_shape = (batch_size,) + (1,) * (clean.ndim - 1)
    scale = jnp.reshape(1.0 / (2.0 * gamma), row_shape) if gamma.ndim else 1.0 / (2.0 * gamma)
    # Rounded first so that a product such as 0.28 · 25 = 7.000000000000001 counts 7 rows, not 8.
    perturbed_rows = jnp.arange(batch_size) < math.ceil(round(fraction * batch_size, 9))
    moves = jnp.reshape(perturbed_rows & jnp.isfinite(gamma), row_shape)
    if weights is not None:
        weights = jax.lax.stop_gradient(_checked_weights(weights, batch_size))

    def ascended_loss(adversarial: jax.Array) -> jax.Array:
        losses = per_example_loss_at(adversarial)
        if jnp.shape(losses) != (batch_size,):
            raise ValueError(
                f"per_example_loss_at must return one loss per example, shape ({batch_size},); got "
                f"{jnp.shape(losses)}. Return the unreduced losses (e.g. the output of "
                "optax.softmax_cross_entropy_with_integer_labels), not their mean."
            )
        return jnp.sum(losses) if weights is None else jnp.sum(weights * losses)

    loss_gradient = jax.grad(ascended_loss)

    def ascent_step(_: int, adversarial: jax.Array) -> jax.Array:
        return jnp.where(moves, clean + scale * loss_gradient(adversarial), clean)

    return jax.lax.stop_gradient(jax.lax.fori_loop(0, steps, ascent_step, clean))


def clean_robust_mixture(clean_losses: jax.Array, robust_losses: jax.Array, *, beta: float | jax.Array) -> jax.Array:
    """Per-example ``(1 − β) ℓ_i(x) + β ℓ_i(x')``: the loss of the ε-contamination set ``(1 − β) P̂ + β Q``.

    ``Q`` is the input-space worst case of :func:`worst_case_inputs` (`method §3 <method.html#3-example-level>`_):
    ``β = 1`` is its loss alone, ``β = 0`` ERM's (each exact where the other loss is finite). Gradients flow through
    both terms.

    Args:
      clean_losses: ``ℓ(x)``, ``[m]``.
      robust_losses: ``ℓ(x')``, ``[m]``.
      beta: ``β ∈ [0, 1]``, a number or a scalar array.

    Returns:
      ``[m]`` mixed losses, float32 or wider.
    """
    concrete = concrete_value(beta)
    if concrete is not None and (concrete.shape != () or not 0.0 <= float(concrete) <= 1.0):
        raise ValueError(f"beta must be a number in [0, 1], got {beta!r}; beta=0 is ERM's loss, beta=1 the robust one.")
    if jnp.shape(clean_losses) != jnp.shape(robust_losses):
        raise ValueError(
            f"clean_losses and robust_losses must have the same shape [m], got {jnp.shape(clean_losses)} and "
            f"{jnp.shape(robust_losses)}."
        )
    beta = jnp.asarray(beta, jnp.float32)
    return (1.0 - beta) * clean_losses + beta * robust_losses


def per_example_gamma(gamma_of_concept: Any, labels: Any, *, concept_of_class: Any | None = None) -> jax.Array:
    """``γ_i = γ_{c(y_i)}``: a per-concept price gathered for each example, for :func:`worst_case_inputs`.

    A plain gather (no scaling by ``p`` or the prior): to couple the move to the concept distribution, pass
    :func:`hrrl_jax.robust.loss_weights` as ``weights`` instead, which acts as ``γ_i / w_i``. Ids are never
    clamped: one out of range raises ``ValueError`` where concrete, and under ``jit`` (a ``checkify`` check) its
    example gets ``γ_i = inf``, so it stays clean.

    Args:
      gamma_of_concept: ``γ_k > 0`` (``inf`` allowed), ``[K]``.
      labels: integer ``[m]``: class labels with ``concept_of_class``, else concept ids in ``[0, K)``.
      concept_of_class: optional integer ``[C]``, the concept in ``[0, K)`` of each class.

    Returns:
      float32 ``[m]``.
    """
    gamma_of_concept = jnp.asarray(gamma_of_concept, jnp.float32)
    if gamma_of_concept.ndim != 1:
        raise ValueError(f"gamma_of_concept must be one value per concept, shape [K]; got {gamma_of_concept.shape}.")
    num_concepts = gamma_of_concept.shape[0]
    _checked_gamma(gamma_of_concept, num_concepts, name="gamma_of_concept")
    if concept_of_class is None:
        ids, size = labels, num_concepts
        fix = f"gamma_of_concept has {num_concepts} entries: pass concept ids, or class labels with concept_of_class."
        concept_table = None
    else:
        concept_table = jnp.asarray(concept_of_class)
        ids_in_range(
            concept_table,
            num_concepts,
            name="concept_of_class",
            fix=f"gamma_of_concept has {num_concepts} entries, one per concept id.",
        )
        ids, size = labels, concept_table.shape[0]
        fix = f"concept_of_class maps {size} classes: give it one entry per class (the largest label + 1)."
    in_range = ids_in_range(ids, size, name="labels", fix=fix)
    safe_ids = jnp.where(in_range, jnp.asarray(ids), 0)
    concepts = safe_ids if concept_table is None else concept_table[safe_ids]
    return jnp.where(in_range, gamma_of_concept[concepts], jnp.inf)


def _check_steps_and_fraction(steps: Any, fraction: Any) -> None:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1 (the number of ascent steps), got {steps!r}.")
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0.0 < fraction <= 1.0:
        raise ValueError(
            f"fraction must be a number in (0, 1] (the share of the batch that is perturbed), got {fraction!r}."
        )


def _checked_gamma(gamma: Any, size: int, *, name: str = "gamma") -> jax.Array:
    """``gamma`` as float32 ``[]`` or ``[size]``; raises naming ``name`` if a concrete value is not ``> 0``."""
    concrete = concrete_value(gamma)
    if concrete is not None:
        values = np.ravel(np.asarray(concrete, np.float64))
        bad = ~(values > 0)
        if bad.any():
            first = int(np.argmax(bad))
            raise ValueError(
                f"{name} must be > 0 (inf allowed), got {values[first]}"
                + (f" at index {first}" if np.ndim(concrete) else "")
                + "; inf keeps an example clean."
            )
    gamma = jnp.asarray(gamma, jnp.float32)
    if gamma.shape not in ((), (size,)):
        raise ValueError(f"{name} must be a scalar or one value per example, shape ({size},); got {gamma.shape}.")
    return gamma


def _checked_weights(weights: Any, size: int) -> jax.Array:
    """``weights`` as float32 ``[size]``; raises if a concrete weight is negative or NaN."""
    concrete = concrete_value(weights)
    if concrete is not None:
        values = np.ravel(np.asarray(concrete, np.float64))
        bad = ~(values >= 0)
        if bad.any():
            first = int(np.argmax(bad))
            raise ValueError(
                f"weights must be >= 0, got {values[first]} at index {first}; pass robust.loss_weights(...) or None."
            )
    weights = jnp.asarray(weights, jnp.float32)
    if weights.shape != (size,):
        raise ValueError(f"weights must be one value per example, shape ({size},); got {weights.shape}.")
    return weights
