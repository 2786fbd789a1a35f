"""Euclidean projection onto the probability simplex (the `l2` concept-level best response)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.jit
def project_simplex(v: jax.Array) -> jax.Array:
    """Projects ``v`` onto the probability simplex along its last axis, batched over leading axes.

    Computes ``argmin_p ||p - v||²`` subject to ``p >= 0, sum(p) = 1`` exactly with the sort-based
    algorithm (Held, Wolfe, Crowder 1974; Duchi et al. 2008): with ``u`` = ``v`` sorted in decreasing
    order and ``ρ = max{j : u_j - (Σ_{r<=j} u_r - 1) / j > 0}``, the result is
    ``p = max(v - θ, 0)`` with ``θ = (Σ_{r<=ρ} u_r - 1) / ρ``. Cost O(K log K); math in float32.

    Args:
      v: array of shape ``[..., K]`` (any float dtype).

    Returns:
      float32 array of the shape of ``v`` whose last axis lies on the simplex.
    """
    v = jnp.asarray(v, jnp.float32)
    # The projection commutes with adding a constant; shifting the maximum to 0 keeps the cumulative
    # sums over the support small, so float32 stays exact-enough even for |v| ~ 1e6 and more.
    v = v - jnp.max(v, axis=-1, keepdims=True)
    num_entries = v.shape[-1]
    sorted_desc = -jnp.sort(-v, axis=-1)
    cumulative = jnp.cumsum(sorted_desc, axis=-1) - 1.0
    ranks = jnp.arange(1, num_entries + 1, dtype=jnp.float32)
    in_support = sorted_desc - cumulative / ranks > 0
    # The largest entry is always in the support.
    support_size = jnp.sum(in_support, axis=-1, keepdims=True)
    threshold = jnp.take_along_axis(cumulative, support_size - 1, axis=-1) / support_size
    return jnp.maximum(v - threshold, 0.0)
