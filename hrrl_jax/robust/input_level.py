"""The input-space example level: worst-case inputs by closed-form ascent, the clean + robust loss mixture, and
the step's value and gradient under both (:func:`input_level_value_and_grad`).

The inner problem of `method §3 <method.html#3-example-level>`_ ("The input-space form") with the ground cost on
the input itself, ``sup_{x'} Σ_i w_i ℓ_i(x') − Σ_i γ_i ‖x'_i − x_i‖²`` (Sinha, Namkoong, Duchi, "Certifying Some
Distributional Robustness with Principled Adversarial Training", ICLR 2018), for any model given as a
per-example-loss callable.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hrrl_jax.robust._batch import ids_in_range
from hrrl_jax.robust._checks import concrete_value

# A model as the input level sees it: inputs [m, ...] -> per-example losses [m] (unreduced).
PerExampleLoss = Callable[[jax.Array], jax.Array]
# A model and its loss as the step sees them: (params, inputs [r, ...], targets with leading axis r) ->
# (per-example losses [r], auxiliary output such as logits, features or updated BatchNorm statistics).
LossFunction = Callable[[Any, jax.Array, Any], tuple[jax.Array, Any]]
INPUT_GRADIENTS = ("ascent", "clean_pass")  # Where ∇_x ℓ comes from: ascent passes, or the clean pass's backward.
INPUT_DIRECTIONS = ("gradient", "random")  # Which way x' moves: up the gradient, or a random control of equal norm.


class InputLevelAux(NamedTuple):
    """What :func:`input_level_value_and_grad` computed besides the loss: per-example losses and each pass's output.

    ``n = ⌈f·m⌉`` is the number of perturbed rows (the first ones). A pass that did not run is ``None``.
    """

    mixed_losses: jax.Array  # ℓ̃_i = c_i ℓ_i(x) + β ℓ_i(x'_i) [m]: what the concept adversary is fed.
    clean_losses: jax.Array | None  # ℓ_i(x) [m]; None when β = 1 and f = 1 (no clean pass).
    robust_losses: jax.Array | None  # ℓ_i(x'_i) of the perturbed rows [n]; None when β = 0 (no perturbed pass).
    perturbation_norms: jax.Array  # ‖x'_i − x_i‖ of the perturbed rows [n] (zeros when β = 0).
    clean_output: Any  # The loss function's auxiliary output at x, or None.
    robust_output: Any  # The perturbed pass's auxiliary output at x'[:n], or None.


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
    perturbed_rows = jnp.arange(batch_size) < _perturbed_row_count(fraction, batch_size)
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


def input_level_value_and_grad(
    loss_fn: LossFunction,
    params: Any,
    inputs: jax.Array,
    targets: Any,
    *,
    gamma: float | jax.Array,
    beta: float = 1.0,
    fraction: float = 1.0,
    steps: int = 1,
    weights: jax.Array | None = None,
    couple_weights: bool = False,
    gradient: str = "ascent",
    direction: str = "gradient",
    key: jax.Array | None = None,
    robust_loss_fn: LossFunction | None = None,
    craft_loss_fn: LossFunction | None = None,
) -> tuple[tuple[jax.Array, InputLevelAux], Any]:
    """Value and parameter gradient of ``(1/m) Σ_i w_i ℓ̃_i``, ``ℓ̃_i = c_i ℓ_i(x) + β·[i < n] ℓ_i(x'_i)``.

    The input level of `method §3 <method.html#the-input-space-form>`_ in every form, as a drop-in for
    ``jax.value_and_grad(..., has_aux=True)`` of the step's loss: the clean + robust mixture ``β`` over the first
    ``n = ⌈f·m⌉`` rows (``c_i = 1 − β`` for them, ``1`` for the rest, which stay clean), ``x'`` the closed-form
    worst case (:func:`worst_case_inputs`, prices ``γ_i``) or, ``direction="random"``, the control: ``x_i`` moved
    by the same distance ``‖x'_i − x_i‖`` in a uniformly random direction. Two ways to get ``∇_x ℓ``:

    * ``gradient="ascent"``: ``steps`` extra passes of ``craft_loss_fn`` (default: the perturbed pass's loss
      function) on all ``m`` rows, then a clean pass on ``m`` rows (unless ``β = 1`` and ``f = 1``) and a perturbed
      pass on ``n`` rows (unless ``β = 0``).
    * ``gradient="clean_pass"``: one step, from the gradient of the clean pass itself: its backward gives
      ``∇_x (1/m) Σ_j c_j w_j ℓ_j`` with the parameter gradient, and row ``i < n`` moves by
      ``m ∇_{x_i}(...) / (c_i w_i) / (2γ_i)``, which is ``∇ℓ_i(x) / (2γ_i)`` where examples do not interact (one
      ascent step exactly); no extra pass, so the step costs one pass on ``m`` rows plus one on ``n``. Needs
      ``β < 1`` (the clean term carries the input gradient); a row of weight ``w_i = 0`` gets no input gradient
      and stays in place (it is not in the loss either).

    ``couple_weights=True`` makes row ``i`` ascend ``w_i ℓ_i``, the loss it is trained on (a move ``w_i`` times
    as far). ``robust_loss_fn`` evaluates the perturbed pass (e.g. through an auxiliary BatchNorm); its parameter
    gradient is added to the clean pass's.

    Args:
      loss_fn: ``(params, inputs, targets) -> (per-example losses, aux)``, for the clean pass.
      params: differentiated.
      inputs: ``x``, float ``[m, ...]``; cast to float32.
      targets: any pytree whose leaves have leading axis ``m`` (sliced to ``n`` rows for the perturbed pass).
      gamma: ``γ > 0`` (``inf`` allowed), a scalar or ``[m]``.
      beta: ``β ∈ [0, 1]``, a Python number (``0`` skips the perturbed pass; ``1`` with ``f = 1`` the clean one).
      fraction: ``f ∈ (0, 1]``.
      steps: ascent steps of ``gradient="ascent"`` (``1`` with ``"clean_pass"``).
      weights: ``w >= 0`` ``[m]`` (e.g. :func:`hrrl_jax.robust.loss_weights`); ``None`` is ``w ≡ 1``.
      couple_weights: craft ``x'`` against ``Σ w_i ℓ_i`` instead of ``Σ ℓ_i``.
      gradient: one of ``INPUT_GRADIENTS``.
      direction: one of ``INPUT_DIRECTIONS``; ``"random"`` needs ``key``.
      key: a PRNG key for ``direction="random"``.
      robust_loss_fn: the perturbed pass's loss function (default ``loss_fn``).
      craft_loss_fn: the ascent passes' loss function (default the perturbed pass's); ``"ascent"`` only.

    Returns:
      ``((loss, InputLevelAux), grads)``, ``grads`` with the structure of ``params``.
    """
    beta = _checked_beta(beta)
    if gradient not in INPUT_GRADIENTS:
        raise ValueError(f"gradient must be one of {INPUT_GRADIENTS}, got {gradient!r}.")
    if direction not in INPUT_DIRECTIONS:
        raise ValueError(f"direction must be one of {INPUT_DIRECTIONS}, got {direction!r}.")
    if direction == "random" and key is None:
        raise ValueError("direction='random' needs key=, a PRNG key (e.g. jax.random.fold_in(key, step)).")
    if gradient == "clean_pass":
        if beta >= 1.0:
            raise ValueError(
                "gradient='clean_pass' takes ∇_x from the clean term (1 − beta)·ℓ(x), so it needs beta < 1, got "
                f"{beta}; use gradient='ascent' for beta=1."
            )
        if steps != 1 or craft_loss_fn is not None:
            raise ValueError(
                "gradient='clean_pass' takes exactly one step from the clean pass: steps=1, no craft_loss_fn."
            )
    _check_steps_and_fraction(steps, fraction)
    clean = jnp.asarray(inputs, jnp.float32)
    batch_size = clean.shape[0]
    gamma = _checked_gamma(gamma, batch_size)
    perturbed = _perturbed_row_count(fraction, batch_size)
    weights = jnp.ones((batch_size,), jnp.float32) if weights is None else _checked_weights(weights, batch_size)
    weights = jax.lax.stop_gradient(weights)
    clean_coefficients = jnp.where(jnp.arange(batch_size) < perturbed, 1.0 - beta, 1.0)
    robust_loss_fn = robust_loss_fn or loss_fn
    runs_clean = beta < 1.0 or perturbed < batch_size
    runs_robust = beta > 0.0

    def clean_objective(params: Any, at: jax.Array) -> tuple[jax.Array, tuple[jax.Array, Any]]:
        losses, output = loss_fn(params, at, targets)
        _check_loss_shape(losses, batch_size, "loss_fn")
        return jnp.sum(clean_coefficients * weights * losses) / batch_size, (losses, output)

    loss = jnp.zeros((), jnp.float32)
    grads = jax.tree.map(jnp.zeros_like, params)
    clean_losses = clean_output = input_gradient = None
    if runs_clean:
        argnums = (0, 1) if gradient == "clean_pass" else 0
        (loss, (clean_losses, clean_output)), clean_grads = jax.value_and_grad(
            clean_objective, argnums=argnums, has_aux=True
        )(params, clean)
        if gradient == "clean_pass":
            clean_grads, input_gradient = clean_grads
        grads = clean_grads

    robust_losses = robust_output = None
    norms = jnp.zeros((perturbed,), jnp.float32)
    if runs_robust:
        if gradient == "ascent":
            craft = craft_loss_fn or robust_loss_fn
            adversarial = worst_case_inputs(
                lambda at: craft(params, at, targets)[0],
                clean,
                gamma=gamma,
                steps=steps,
                fraction=fraction,
                weights=weights if couple_weights else None,
            )[:perturbed]
        else:
            adversarial = _step_from_clean_gradient(
                clean[:perturbed],
                input_gradient[:perturbed] * batch_size,
                scale=clean_coefficients[:perturbed] * (1.0 if couple_weights else weights[:perturbed]),
                gamma=gamma[:perturbed] if gamma.ndim else gamma,
            )
        if direction == "random":
            adversarial = _random_direction_of_equal_norm(key, clean[:perturbed], adversarial)
        adversarial = jax.lax.stop_gradient(adversarial)
        norms = _row_norms(adversarial - clean[:perturbed])
        robust_targets = jax.tree.map(lambda leaf: leaf[:perturbed], targets)
        robust_weights = weights[:perturbed]

        def robust_objective(params: Any) -> tuple[jax.Array, tuple[jax.Array, Any]]:
            losses, output = robust_loss_fn(params, adversarial, robust_targets)
            _check_loss_shape(losses, perturbed, "robust_loss_fn")
            return jnp.sum(beta * robust_weights * losses) / batch_size, (losses, output)

        (robust_value, (robust_losses, robust_output)), robust_grads = jax.value_and_grad(
            robust_objective, has_aux=True
        )(params)
        loss = loss + robust_value if runs_clean else robust_value
        grads = jax.tree.map(jnp.add, grads, robust_grads) if runs_clean else robust_grads

    mixed = _mixed_losses(clean_losses, robust_losses, clean_coefficients, beta, batch_size)
    aux = InputLevelAux(mixed, clean_losses, robust_losses, norms, clean_output, robust_output)
    return (loss, aux), grads


def _mixed_losses(
    clean_losses: jax.Array | None,
    robust_losses: jax.Array | None,
    clean_coefficients: jax.Array,
    beta: float,
    batch_size: int,
) -> jax.Array:
    """``ℓ̃_i = c_i ℓ_i(x) + β·[i < n] ℓ_i(x'_i)``, from whichever passes ran."""
    if robust_losses is None:
        return clean_losses
    robust_part = beta * jnp.pad(robust_losses, (0, batch_size - robust_losses.shape[0]))
    if clean_losses is None:
        return robust_part
    return clean_coefficients * clean_losses + robust_part


def _step_from_clean_gradient(
    clean: jax.Array, gradient: jax.Array, *, scale: jax.Array, gamma: jax.Array
) -> jax.Array:
    """``x_i + (gradient_i / scale_i) / (2γ_i)``: the clean pass's input gradient, unweighted, as one ascent step
    (no move where ``scale_i = 0``, i.e. ``w_i = 0``, or ``γ_i = inf``)."""
    row_shape = (clean.shape[0],) + (1,) * (clean.ndim - 1)
    scale = jnp.reshape(jnp.broadcast_to(scale, (clean.shape[0],)), row_shape)
    gamma = jnp.reshape(jnp.broadcast_to(gamma, (clean.shape[0],)), row_shape)
    moves = (scale > 0) & jnp.isfinite(gamma)
    step = jnp.where(moves, gradient / jnp.where(moves, scale * 2.0 * gamma, 1.0), 0.0)
    return clean + step.astype(jnp.float32)


def _random_direction_of_equal_norm(key: jax.Array, clean: jax.Array, adversarial: jax.Array) -> jax.Array:
    """``x_i + ‖x'_i − x_i‖ u_i``, ``u_i`` uniform on the unit sphere of an image: the random-perturbation control."""
    noise = jax.random.normal(key, clean.shape, jnp.float32)
    row_shape = (clean.shape[0],) + (1,) * (clean.ndim - 1)
    unit = noise / jnp.reshape(jnp.maximum(_row_norms(noise), 1e-12), row_shape)
    return clean + jnp.reshape(_row_norms(adversarial - clean), row_shape) * unit


def _row_norms(values: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.reshape(values, (values.shape[0], -1)) ** 2, axis=1))


def _perturbed_row_count(fraction: float, batch_size: int) -> int:
    """``n = ⌈f·m⌉``, rounded first so that a product such as 0.28 · 25 = 7.000000000000001 counts 7 rows, not 8."""
    return math.ceil(round(fraction * batch_size, 9))


def _checked_beta(beta: Any) -> float:
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0.0 <= beta <= 1.0:
        raise ValueError(
            f"beta must be a Python number in [0, 1], got {beta!r}; beta=0 is ERM's loss, beta=1 the robust one."
        )
    return float(beta)


def _check_loss_shape(losses: jax.Array, rows: int, name: str) -> None:
    if jnp.shape(losses) != (rows,):
        raise ValueError(
            f"{name} must return one loss per example, shape ({rows},), and its auxiliary output; got losses of "
            f"shape {jnp.shape(losses)}. Return the unreduced losses (e.g. optax.softmax_cross_entropy_with_integer_"
            "labels), not their mean."
        )


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
