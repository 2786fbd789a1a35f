"""The `input` example level: the Wasserstein penalty on the image itself, by closed-form ascent steps on x.

The inner problem of docs/method.md §3 with the ground cost on the (normalised) input instead of the deep
features, sup_{x'} Σ_i ℓ_i(x') − γ Σ_i ‖x'_i − x_i‖² (Sinha, Namkoong, Duchi, ICLR 2018). It needs the model's
apply, so it is trainer code; the library's transform then sees the losses at x' and weights nothing here.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


def worst_case_inputs(
    per_example_loss_at: Callable[[jax.Array], jax.Array], images: jax.Array, *, gamma: float, steps: int = 1
) -> jax.Array:
    """x' after `steps` closed-form ascent steps on Σ_i ℓ_i(x') − γ Σ_i ‖x'_i − x_i‖², without gradient.

    Step j: x_{j+1} = x + stop_grad(∇_x L(x_j)) / (2γ), x_0 = x, L = Σ_i ℓ_i: gradient ascent on the penalised
    objective with step 1/(2γ), the fixed-point iteration of its stationarity condition x' = x + ∇L(x')/(2γ),
    as `hrrl_jax.robust.perturb_features` does on the features. One step is the exact maximiser of the
    linearised loss. When examples do not interact, ∇_{x_i} L = ∇_{x_i} ℓ_i; under train-mode BatchNorm an
    example's loss depends on the batch's statistics, and this is the gradient of the joint problem.

    Args:
      per_example_loss_at: inputs [m, ...] -> per-example losses ℓ [m].
      images: x, the normalised float images; the ascent and its gradient run in float32 whatever the
        model's compute dtype.
      gamma: γ > 0; inf gives x' = x.
      steps: number of ascent steps, at least 1.

    Returns:
      float32 x' with stopped gradient.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    clean = jax.lax.stop_gradient(jnp.asarray(images, jnp.float32))
    scale = 1.0 / (2.0 * jnp.asarray(gamma, jnp.float32))
    loss_gradient = jax.grad(lambda inputs: jnp.sum(per_example_loss_at(inputs)))

    def ascent_step(_: int, adversarial: jax.Array) -> jax.Array:
        return clean + scale * loss_gradient(adversarial)

    return jax.lax.stop_gradient(jax.lax.fori_loop(0, steps, ascent_step, clean))


def train_mode_losses(model: nn.Module, variables: Any, labels: jax.Array) -> Callable[[jax.Array], jax.Array]:
    """inputs -> per-example cross-entropy of `model` in train mode (batch statistics, as the step's own pass);
    the BatchNorm statistics these passes compute are discarded."""

    def per_example_loss_at(inputs: jax.Array) -> jax.Array:
        (logits, _), _ = model.apply(variables, inputs, train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

    return per_example_loss_at
