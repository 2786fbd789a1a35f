"""Gradient accumulation inside the jitted step: a logical batch of k micro-batches, one `tx.update`.

The global batch of m rows is split into k micro-batches of m/k rows; micro-batch j holds rows j, j + k, j + 2k, ...
Each device holds m/d consecutive rows, so (with m/d a multiple of k) it holds its own share of every micro-batch:
the split moves no data between devices, and the micro-batches are the same whatever the device count.
A `lax.scan` computes each micro-batch's value and gradient in turn; the gradient is their mean, which is the
logical batch's (1/m) Σ w_i ℓ_i exactly, as the micro-batches are of equal size. Per-example losses, labels,
features, weights and logits of all micro-batches are put back in the batch's row order, so the adversary
(`tx.update`) and the metrics see the whole logical batch.

Each micro-batch runs the model in train mode on its own rows: BatchNorm normalises with the micro-batch's
statistics, and the running averages kept are the mean over the micro-batches of their updates (one update per
step, whose mean statistic is the logical batch's). The concept-level weights depend on the adversary's state
alone, which only `tx.update` changes, so every micro-batch gets the weights the logical batch would. The `reweight`
example level couples the examples of a batch (its weights solve a transport problem on the batch's features):
with `LogicalBatchWeights` a forward pass per micro-batch first gathers the losses and features of the whole logical
batch, whose weights the gradient passes then use, one extra forward pass per micro-batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec


class BatchGradient(NamedTuple):
    """The value, gradient and per-example outputs of the step's loss on one batch (`train.steps`)."""

    loss: jax.Array  # (1/m) Σ w_i ℓ_i.
    grads: Any
    batch_stats: Any  # The model's BatchNorm statistics to keep.
    per_example_loss: jax.Array  # ℓ_i, [m] (ℓ̃_i, the mixture, under the `input` level).
    features: jax.Array  # [m, D].
    weights: jax.Array  # [m].
    logits: jax.Array  # [m, C].
    perturbation_norm: jax.Array | None  # The mean ‖x'_i − x_i‖ of the perturbed rows (`input` level only).


class LogicalBatchWeights(NamedTuple):
    """How to find batch-coupled weights over a logical batch: `forward(state, images, labels) -> (per-example
    losses, features)` of one micro-batch, and `weights(state, labels, losses, features) -> [m]` of all of them."""

    forward: Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
    weights: Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]


def micro_batches(values: jax.Array, count: int, sharding: NamedSharding | None = None) -> jax.Array:
    """[m, ...] -> [count, m / count, ...]: micro-batch j holds rows j, j + count, j + 2 count, ... (kept sharded
    over the batch's devices along its second axis)."""
    split = values.reshape(values.shape[0] // count, count, *values.shape[1:]).swapaxes(0, 1)
    if sharding is None:
        return split
    return jax.lax.with_sharding_constraint(split, NamedSharding(sharding.mesh, PartitionSpec(None, *sharding.spec)))


def logical_batch(values: jax.Array, sharding: NamedSharding | None = None) -> jax.Array:
    """The inverse of `micro_batches`: [count, m / count, ...] -> [m, ...] in the batch's row order."""
    merged = values.swapaxes(0, 1).reshape(values.shape[0] * values.shape[1], *values.shape[2:])
    return merged if sharding is None else jax.lax.with_sharding_constraint(merged, sharding)


def accumulated_value_and_grad(
    batch_gradient: Callable[..., BatchGradient],
    state: Any,
    images: jax.Array,
    labels: jax.Array,
    *,
    accumulation_steps: int,
    data_sharding: NamedSharding | None = None,
    logical_batch_weights: LogicalBatchWeights | None = None,
) -> BatchGradient:
    """`batch_gradient(state, images, labels, weights=, micro_batch=)` over the logical batch of
    `accumulation_steps` micro-batches: mean loss, mean gradient, mean BatchNorm statistics, and every per-example
    field in the batch's row order.

    `state.params`, `state.batch_stats` and `state.opt_state` are the same for every micro-batch: nothing is
    updated until the caller's one `tx.update`.
    """
    count = accumulation_steps

    def split(values: jax.Array) -> jax.Array:
        return micro_batches(values, count, data_sharding)

    def merge(values: jax.Array) -> jax.Array:
        return logical_batch(values, data_sharding)

    micro_images, micro_labels = split(images), split(labels)
    micro_weights = None
    if logical_batch_weights is not None:
        losses, features = jax.lax.map(
            lambda pair: logical_batch_weights.forward(state, *pair), (micro_images, micro_labels)
        )
        losses, features = jax.lax.stop_gradient((merge(losses), merge(features)))
        micro_weights = split(logical_batch_weights.weights(state, labels, losses, features))

    def accumulate(carry: tuple[Any, Any], inputs: tuple[Any, ...]) -> tuple[tuple[Any, Any], BatchGradient]:
        grads_sum, stats_sum = carry
        index, micro_image, micro_label, weights = inputs
        result = batch_gradient(state, micro_image, micro_label, weights=weights, micro_batch=index)
        carry = (
            jax.tree_util.tree_map(jnp.add, grads_sum, result.grads),
            jax.tree_util.tree_map(jnp.add, stats_sum, result.batch_stats),
        )
        return carry, result._replace(grads=None, batch_stats=None)

    zeros = jax.tree_util.tree_map(jnp.zeros_like, (state.params, state.batch_stats))
    inputs = (jnp.arange(count), micro_images, micro_labels, micro_weights)
    (grads_sum, stats_sum), outputs = jax.lax.scan(accumulate, zeros, inputs)
    return BatchGradient(
        loss=jnp.mean(outputs.loss),
        grads=jax.tree_util.tree_map(lambda total: total / count, grads_sum),
        batch_stats=jax.tree_util.tree_map(lambda total: total / count, stats_sum),
        per_example_loss=merge(outputs.per_example_loss),
        features=merge(outputs.features),
        weights=merge(outputs.weights),
        logits=merge(outputs.logits),
        perturbation_norm=None if outputs.perturbation_norm is None else jnp.mean(outputs.perturbation_norm),
    )
