"""BatchNorm over the batch and spatial axes, with a choice of how the batch variance is computed.

Three estimators of the per-channel batch variance, all reduced in float32 (x in bfloat16 is promoted first):

* ``shifted_one_pass`` (the default): with a per-channel shift s that carries no gradient,
  var = E[(x - s)²] - (E[x] - s)². This is the variance exactly for any constant s, and computing both
  moments of (x - s) is one fused read of the activation, as in the plain one-pass form. Its float32 rounding
  is that of the moments, amplified by 1 + (E[x] - s)² / var; s is the batch mean of the activation at the
  centre pixel, which is within about a standard deviation of E[x], so that factor stays near 1 whatever the
  mean. Reading s touches one pixel of every example (1/(H·W) of the activation); under data parallelism it
  adds one all-reduce of C values.
* ``one_pass``: E[x²] - E[x]², Flax's default (``use_fast_variance=True``). Its rounding is amplified by
  E[x²] / var = 1 + E[x]² / var: with a mean 100 x the spread, float32 keeps about three digits of the
  variance, and a change in reduction order (another device count or CPU) moves those digits.
* ``two_pass``: E[(x - E[x])²], exact to rounding however large the mean, at the price of a second read of
  the activation after the mean is known.

Variables have Flax's ``nn.BatchNorm`` names (params ``scale``, ``bias``; ``batch_stats`` ``mean``, ``var``),
and ``one_pass`` / ``two_pass`` compute what ``nn.BatchNorm`` computes with ``use_fast_variance`` True / False,
so checkpoints of either mode load and train on unchanged.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from hrrl_jax.schema import BATCH_NORM_VARIANCES


def batch_moments(x: jax.Array, variance: str) -> tuple[jax.Array, jax.Array]:
    """The float32 mean and variance of `x` [batch, ..., channels] over every axis but the last.

    `variance` is one of ``BATCH_NORM_VARIANCES`` (see the module docstring for their numerics).
    """
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    axes = tuple(range(x.ndim - 1))
    if variance == "two_pass":
        mean = x.mean(axes)
        return mean, jnp.square(x - mean).mean(axes)
    if variance == "one_pass":
        mean, mean_of_squares = x.mean(axes), jnp.square(x).mean(axes)
        return mean, jnp.maximum(0.0, mean_of_squares - jnp.square(mean))
    if variance == "shifted_one_pass":
        centre = tuple(side // 2 for side in x.shape[1:-1])
        shift = jax.lax.stop_gradient(x[(slice(None), *centre)].mean(0))
        shifted = x - shift
        shifted_mean, shifted_mean_of_squares = shifted.mean(axes), jnp.square(shifted).mean(axes)
        return shifted_mean + shift, jnp.maximum(0.0, shifted_mean_of_squares - jnp.square(shifted_mean))
    raise ValueError(f"Unknown batch_norm_variance {variance!r}; choose one of {', '.join(BATCH_NORM_VARIANCES)}.")


class BatchNorm(nn.Module):
    """Normalises each channel with batch statistics (train) or their running averages (eval), then scales.

    Attributes:
        use_running_average: normalise with the running averages and leave them unchanged (eval mode).
        variance: how the batch variance is computed, one of ``BATCH_NORM_VARIANCES``.
        momentum: decay of the running averages (new = momentum * old + (1 - momentum) * batch).
        epsilon: added to the variance before the inverse square root.
        scale_init: initialiser of the per-channel scale.
        dtype: dtype of the output; the statistics and the affine map are computed in float32.
    """

    use_running_average: bool
    variance: str = "shifted_one_pass"
    momentum: float = 0.9
    epsilon: float = 1e-5
    scale_init: nn.initializers.Initializer = nn.initializers.ones
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((channels,), jnp.float32))
        running_var = self.variable("batch_stats", "var", lambda: jnp.ones((channels,), jnp.float32))
        if self.use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            mean, var = batch_moments(x, self.variance)
            if not self.is_initializing():
                running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
                running_var.value = self.momentum * running_var.value + (1 - self.momentum) * var
        scale = self.param("scale", self.scale_init, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        normalised = (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
        return normalised.astype(self.dtype)
