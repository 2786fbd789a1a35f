"""The trainer's side of the `input` example level: the model's per-example losses that the library's ascent
(`hrrl_jax.robust.worst_case_inputs`, docs/method.md §3) differentiates with respect to the images.

It needs the model's apply, so it is trainer code; the library's transform then sees the losses at x' and
weights nothing here.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import optax


def train_mode_losses(model: nn.Module, variables: Any, labels: jax.Array) -> Callable[[jax.Array], jax.Array]:
    """inputs -> per-example cross-entropy of `model` in train mode (batch statistics, as the step's own pass);
    the BatchNorm statistics these passes compute are discarded."""

    def per_example_loss_at(inputs: jax.Array) -> jax.Array:
        (logits, _), _ = model.apply(variables, inputs, train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

    return per_example_loss_at
