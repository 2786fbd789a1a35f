"""The trainer's side of the `input` example level: the model's loss functions for the clean, perturbed and
crafting passes, and the step's value and gradient through the library's `robust.input_level_value_and_grad`
(docs/method.md §3).

It needs the model's apply, so it is trainer code; every closed form (the ascent, the clean-pass step, the random
control, the mixture) is the library's.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hrrl_jax import robust
from hrrl_jax.robust.input_level import LossFunction
from hrrl_jax.train.objective import InputLevel

AUXILIARY_BATCH_NORM = "bn_aux"  # The name of the auxiliary BatchNorm's variables in the model's trees.


def model_loss_fn(model: nn.Module, batch_stats: Any, *, batch_norm: str = "main", train: bool = True) -> LossFunction:
    """(params, images, labels) -> (per-example cross-entropy, {"logits", "features", "batch_stats"}).

    `batch_norm` picks the model's BatchNorm set ("auxiliary": the AdvProp one, built with
    `config.robust.input_batch_norm="auxiliary"`); `train` normalises with batch statistics (and returns the updated
    running averages) or with the running averages (returned unchanged).
    """
    selection = {} if batch_norm == "main" else {"batch_norm": batch_norm}

    def loss_fn(params: Any, images: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        variables = {"params": params, "batch_stats": batch_stats}
        if train:
            (logits, features), updated = model.apply(
                variables, images, train=True, mutable=["batch_stats"], **selection
            )
            updated_stats = updated["batch_stats"]
        else:
            logits, features = model.apply(variables, images, train=False, **selection)
            updated_stats = batch_stats
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return losses, {"logits": logits, "features": features, "batch_stats": updated_stats}

    return loss_fn


def gamma_at(level: InputLevel, step: jax.Array, labels: jax.Array, concept_of_class: np.ndarray) -> jax.Array:
    """γ of train step `step`: the scalar γ or each example's γ_{c(y_i)}, deferred and ramped
    (`robust.deferred_ramp`)."""
    if level.gamma_by_concept is None:
        gamma = jnp.float32(level.gamma)
    else:
        gamma = robust.per_example_gamma(level.gamma_by_concept, labels, concept_of_class=concept_of_class)
    if level.defer_steps == 0 and level.ramp_steps == 0:
        return gamma
    return robust.deferred_ramp(gamma, defer_steps=level.defer_steps, ramp_steps=level.ramp_steps)(step)


def input_level_value_and_grad(
    level: InputLevel,
    *,
    model: nn.Module,
    params: Any,
    batch_stats: Any,
    images: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    step: jax.Array,
    concept_of_class: np.ndarray,
    micro_batch: jax.Array | None = None,
) -> tuple[tuple[jax.Array, robust.InputLevelAux], Any, Any]:
    """The step's `((loss, aux), grads)` under the `input` level, and the BatchNorm statistics to keep.

    The main running statistics come from the clean pass (from the perturbed pass when there is none: β = 1,
    f = 1); the auxiliary set's from the perturbed pass. The crafting passes' statistics are discarded.
    `micro_batch`, the index of an accumulated step's micro-batch, is folded into the random control's key.
    """
    clean_loss_fn = model_loss_fn(model, batch_stats)
    robust_loss_fn = model_loss_fn(model, batch_stats, batch_norm=level.batch_norm)
    craft_loss_fn = None
    if level.gradient == "ascent":
        craft_loss_fn = model_loss_fn(
            model, batch_stats, batch_norm=level.batch_norm, train=level.craft_batch_norm == "train"
        )
    key = None
    if level.direction == "random":
        key = jax.random.fold_in(jax.random.key(level.seed), step)
        if micro_batch is not None:
            key = jax.random.fold_in(key, micro_batch)
    (loss, aux), grads = robust.input_level_value_and_grad(
        clean_loss_fn,
        params,
        images,
        labels,
        gamma=gamma_at(level, step, labels, concept_of_class),
        beta=level.beta,
        fraction=level.fraction,
        steps=level.steps,
        weights=weights,
        couple_weights=level.coupling == "weights",
        gradient=level.gradient,
        direction=level.direction,
        key=key,
        robust_loss_fn=robust_loss_fn,
        craft_loss_fn=craft_loss_fn,
    )
    return (loss, aux), grads, _kept_batch_stats(aux)


def _kept_batch_stats(aux: robust.InputLevelAux) -> Any:
    """The main set's statistics from the clean pass if it ran, the auxiliary set's from the perturbed pass."""
    if aux.clean_output is None:
        return aux.robust_output["batch_stats"]
    clean_stats = aux.clean_output["batch_stats"]
    if aux.robust_output is None:
        return clean_stats

    def pick(path: tuple[Any, ...], clean: jax.Array, perturbed: jax.Array) -> jax.Array:
        names = {getattr(entry, "key", None) for entry in path}
        return perturbed if AUXILIARY_BATCH_NORM in names else clean

    return jax.tree_util.tree_map_with_path(pick, clean_stats, aux.robust_output["batch_stats"])
