"""Pure train and eval steps: per-example losses and deep features in, robust weights, gradients and metrics out.

Both are plain functions of (state, batch) with their collaborators bound by `functools.partial`; the loop
jits them with `NamedSharding`s over the data-parallel mesh and donates the state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypedDict

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding

from hrrl_jax import robust
from hrrl_jax.train.accumulation import BatchGradient, LogicalBatchWeights, accumulated_value_and_grad
from hrrl_jax.train.input_level import input_level_value_and_grad
from hrrl_jax.train.objective import Objective
from hrrl_jax.train.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class LossAux(TypedDict):
    """The auxiliary output of the train step's loss function, one named entry per value it passes on."""

    per_example_loss: jax.Array  # ℓ_i, [m].
    features: jax.Array  # deep features z_i, [m, D].
    weights: jax.Array  # robust weights w_i, [m] (all 1 without reweighting).
    logits: jax.Array  # [m, C].
    batch_stats: Any  # the model's updated batch-norm statistics.


def per_example_losses(
    params: Any, logits: jax.Array, features: jax.Array, labels: jax.Array, objective: Objective
) -> jax.Array:
    """Cross-entropy per example; under the `perturb` form, at the worst-case features of the linear head."""
    if objective.perturb_gamma is None:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    head = params["head"]
    perturbed = robust.perturb_features(
        features,
        labels,
        head["kernel"],
        head["bias"],
        gamma=objective.perturb_gamma,
        steps=objective.perturb_steps,
    )
    robust_logits = perturbed @ head["kernel"].astype(jnp.float32) + head["bias"].astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(robust_logits, labels)


def loss_fn(
    params: Any,
    *,
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    model: nn.Module,
    objective: Objective,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, LossAux]:
    """The weighted mean loss (1/m) Σ w_i ℓ_i of the step's one train-mode pass (every form but `input`).

    `weights`, when given, are used as they are (an accumulated step's weights, found over the logical batch);
    otherwise they come from the adversary (`robust.loss_weights`) on this batch.
    """
    (logits, features), updated = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, images, train=True, mutable=["batch_stats"]
    )
    losses = per_example_losses(params, logits, features, labels, objective)
    if weights is None and objective.reweights:
        weights = robust.loss_weights(
            state.opt_state,
            labels,
            per_example_loss=jax.lax.stop_gradient(losses),
            features=jax.lax.stop_gradient(features),
        )
    elif weights is None:
        weights = jnp.ones_like(losses)
    aux = LossAux(
        per_example_loss=losses, features=features, weights=weights, logits=logits, batch_stats=updated["batch_stats"]
    )
    return jnp.mean(weights * losses), aux


def batch_value_and_grad(
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    *,
    model: nn.Module,
    objective: Objective,
    concept_of_class: np.ndarray,
    weights: jax.Array | None = None,
    micro_batch: jax.Array | None = None,
) -> BatchGradient:
    """The loss of docs/method.md §5 on one batch: its value, gradient and per-example outputs.

    Under the `input` example level they are those of `robust.input_level_value_and_grad` (the clean + robust
    mixture ℓ̃ as the per-example loss; features and logits of the clean pass, of the pass at x' when there is none).
    `weights` replaces the adversary's weights of the other forms; `micro_batch` (an index) is folded into the
    random control's key, so that the micro-batches of one step draw different directions.
    """
    if objective.input_level is not None:
        weights = robust.loss_weights(state.opt_state, labels) if objective.reweights else jnp.ones(labels.shape)
        (loss, input_aux), grads, batch_stats = input_level_value_and_grad(
            objective.input_level,
            model=model,
            params=state.params,
            batch_stats=state.batch_stats,
            images=images,
            labels=labels,
            weights=weights,
            step=state.step,
            concept_of_class=concept_of_class,
            micro_batch=micro_batch,
        )
        output = input_aux.clean_output if input_aux.clean_output is not None else input_aux.robust_output
        return BatchGradient(
            loss=loss,
            grads=grads,
            batch_stats=batch_stats,
            per_example_loss=input_aux.mixed_losses,
            features=output["features"],
            weights=weights,
            logits=output["logits"],
            perturbation_norm=jnp.mean(input_aux.perturbation_norms),
        )
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state=state, images=images, labels=labels, model=model, objective=objective, weights=weights
    )
    return BatchGradient(
        loss=loss,
        grads=grads,
        batch_stats=aux["batch_stats"],
        per_example_loss=aux["per_example_loss"],
        features=aux["features"],
        weights=aux["weights"],
        logits=aux["logits"],
        perturbation_norm=None,
    )


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    model: nn.Module,
    tx: optax.GradientTransformationExtraArgs,
    objective: Objective,
    learning_rate_fn: optax.Schedule,
    concept_of_class: np.ndarray,
    normalise: Callable[[jax.Array], jax.Array],
    accumulation_steps: int = 1,
    data_sharding: NamedSharding | None = None,
) -> tuple[TrainState, Metrics]:
    """One SGD step on the (robustly) weighted mean loss of the global batch.

    The algorithm of docs/method.md §5: forward, example weights w_i from the adversary in the optimizer state (no
    gradient through them), gradient of (1/m) Σ w_i ℓ_i, then `tx.update` advances both the parameters and the
    adversary with the same per-example losses, labels and features. Under the `input` example level the value,
    gradient and per-example losses are those of `robust.input_level_value_and_grad` (the clean + robust mixture
    ℓ̃ goes to the adversary); features and accuracy come from the clean pass (from the pass at x' when there is
    none), and `input_perturbation_norm` logs the mean ‖x'_i − x_i‖ of the perturbed rows.

    With `accumulation_steps` k > 1 the global batch is the logical batch of k micro-batches
    (`hrrl_jax.train.accumulation`): the gradient is their mean, and `tx.update` and the metrics see every
    example of the logical batch. `data_sharding` is the batch's, which each micro-batch keeps.
    """
    images, labels = normalise(batch["image"]), batch["label"]  # uint8 from the pipeline, float32 from here on.
    batch_gradient = functools.partial(
        batch_value_and_grad, model=model, objective=objective, concept_of_class=concept_of_class
    )
    if accumulation_steps == 1:
        result = batch_gradient(state, images, labels)
    else:
        coupled = _logical_batch_weights(model, objective) if _couples_batch(state, objective) else None
        result = accumulated_value_and_grad(
            batch_gradient,
            state,
            images,
            labels,
            accumulation_steps=accumulation_steps,
            data_sharding=data_sharding,
            logical_batch_weights=coupled,
        )
    loss, grads, losses, features, weights = (
        result.loss,
        result.grads,
        result.per_example_loss,
        result.features,
        result.weights,
    )
    updates, opt_state = tx.update(
        grads,
        state.opt_state,
        state.params,
        per_example_loss=jax.lax.stop_gradient(losses),
        labels=labels,
        features=jax.lax.stop_gradient(features),
    )
    new_params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1,
        params=new_params,
        batch_stats=result.batch_stats,
        opt_state=opt_state,
    )
    metrics = {
        "loss": loss,
        "unweighted_loss": jnp.mean(losses),
        "accuracy": jnp.mean((jnp.argmax(result.logits, -1) == labels).astype(jnp.float32)),
        "learning_rate": learning_rate_fn(state.step),
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(new_params),
        "worst_concept_loss": worst_concept_loss(losses, labels, concept_of_class),
    }
    if result.perturbation_norm is not None:
        metrics["input_perturbation_norm"] = result.perturbation_norm
    metrics["finite"] = jnp.isfinite(loss) & jnp.isfinite(metrics["grad_norm"]) & jnp.isfinite(metrics["param_norm"])
    if objective.reweights:
        metrics["concept_distribution"] = robust.concept_distribution(opt_state)
        # Adversary updates skipped so far (a non-finite concept-loss estimate or an id out of range).
        metrics["adversary_skipped_updates"] = robust.find_reweighting_state(opt_state).skipped_updates
        metrics.update({f"weight_{name}": value for name, value in robust.weight_stats(weights).items()})
    return new_state, metrics


def _couples_batch(state: TrainState, objective: Objective) -> bool:
    """Whether the weights of one example depend on the others of its batch (the `reweight` example level)."""
    if not objective.reweights or objective.input_level is not None:
        return False
    return robust.find_reweighting_state(state.opt_state).settings.example_level == "reweight"


def _logical_batch_weights(model: nn.Module, objective: Objective) -> LogicalBatchWeights:
    """The `reweight` level's weights of a logical batch: a forward pass per micro-batch (train mode, as the
    gradient's), then `robust.loss_weights` over all of their losses and features at once."""

    def forward(state: TrainState, images: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
        (logits, features), _ = model.apply(
            {"params": state.params, "batch_stats": state.batch_stats}, images, train=True, mutable=["batch_stats"]
        )
        return per_example_losses(state.params, logits, features, labels, objective), features

    def weights(state: TrainState, labels: jax.Array, losses: jax.Array, features: jax.Array) -> jax.Array:
        return robust.loss_weights(state.opt_state, labels, per_example_loss=losses, features=features)

    return LogicalBatchWeights(forward=forward, weights=weights)


def worst_concept_loss(losses: jax.Array, labels: jax.Array, concept_of_class: np.ndarray) -> jax.Array:
    """The largest mean per-example loss over the concepts present in the batch (`concept_of_class`: numpy)."""
    num_concepts = int(concept_of_class.max()) + 1
    concepts = jnp.asarray(concept_of_class)[labels]
    totals = jax.ops.segment_sum(losses.astype(jnp.float32), concepts, num_segments=num_concepts)
    counts = jax.ops.segment_sum(jnp.ones_like(losses, jnp.float32), concepts, num_segments=num_concepts)
    means = jnp.where(counts > 0, totals / jnp.maximum(counts, 1.0), -jnp.inf)
    return jnp.max(means)


def eval_step(
    state: TrainState,
    batch: Batch,
    *,
    model: nn.Module,
    num_classes: int,
    normalise: Callable[[jax.Array], jax.Array],
) -> Metrics:
    """Per-class correct and total counts (padding masked out) and the summed loss of one eval batch."""
    images = normalise(batch["image"])
    logits, _ = model.apply({"params": state.params, "batch_stats": state.batch_stats}, images, train=False)
    labels, mask = batch["label"], batch["mask"]
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32) * mask
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels) * mask
    return {
        "correct_per_class": jax.ops.segment_sum(correct, labels, num_segments=num_classes),
        "count_per_class": jax.ops.segment_sum(mask.astype(jnp.float32), labels, num_segments=num_classes),
        "loss_sum": jnp.sum(losses),
    }
