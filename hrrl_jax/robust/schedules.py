"""Hyperparameters given as a number or as a schedule of the adversary's step: checked once, read at each step.

A schedule is optax-style, a function ``t -> value`` of the step count ``t`` (an int32 scalar, traced under
``jit``); :func:`hyperparameter_at` reads it at the transform's own step count. A schedule cannot be checked
everywhere, so :func:`check_hyperparameter` evaluates it as a step does (traced, on an int32 scalar, in
float32) at every step of :data:`SCHEDULE_CHECK_STEPS` and refuses the first step where it is not ``> 0``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hrrl_jax.robust._checks import check_positive

Hyperparameter = float | optax.Schedule

# Every step from 0 to 1024 (where warm-ups, deferrals and the boundaries of short runs fall), then 2^k and
# 1.5·2^k up to 2^24 (about 16.8 million steps, beyond any run of this package), in increasing order.
SCHEDULE_CHECK_STEPS = np.unique(
    np.concatenate([np.arange(1025), 2 ** np.arange(11, 25), 3 * 2 ** np.arange(10, 23)])
).astype(np.int32)


def check_hyperparameter(name: str, value: Any) -> np.ndarray | None:
    """Raises ``ValueError`` naming ``name`` unless ``value`` is a number ``> 0`` (``inf`` allowed) or a
    schedule whose values at every step of :data:`SCHEDULE_CHECK_STEPS` are ``> 0`` (``inf`` allowed).

    A schedule that is not ``> 0`` somewhere (``<= 0`` or NaN) is reported with the first such step and its
    value; one that cannot be traced with an int32 step, or that returns more than one value, is refused too.

    Returns:
      a schedule's float32 values at :data:`SCHEDULE_CHECK_STEPS` (what the settings' fingerprint records of
      it); ``None`` for a number.
    """
    if not callable(value):
        check_positive(name, value)
        return None
    try:
        shape = jax.eval_shape(value, jax.ShapeDtypeStruct((), jnp.int32)).shape
    except TypeError as error:
        raise ValueError(
            f"{name} is a schedule that cannot be evaluated at a traced int32 step (the transform calls it inside "
            f"jit with its step count): {str(error).splitlines()[0]} Write it with jax.numpy operations "
            "(e.g. jnp.where) or optax schedules, not Python control flow on the step."
        ) from None
    if shape != ():
        raise ValueError(f"{name} schedule must return one value (a scalar) per step, got shape {shape}.")
    values = np.asarray(
        jax.jit(lambda steps: jax.lax.map(lambda step: _float32(value(step)), steps))(SCHEDULE_CHECK_STEPS)
    )
    bad = ~(values > 0)
    if np.any(bad):
        first = int(np.argmax(bad))
        raise ValueError(
            f"{name} schedule must be > 0 (inf allowed) at every step, but at step {SCHEDULE_CHECK_STEPS[first]} "
            f"it gives {values[first]}; steps checked: 0 to 1024, then 2^k and 1.5·2^k up to 2^24."
        )
    return values


def hyperparameter_at(value: Hyperparameter, step: jax.Array) -> float | jax.Array:
    """``value`` itself if it is a number (a number gives exactly the computation it always did), else the
    schedule's value at ``step`` as a float32 scalar."""
    return _float32(value(step)) if callable(value) else value


def _float32(value: Any) -> jax.Array:
    return jnp.asarray(value, jnp.float32)


def deferred_ramp(gamma: Any, *, defer_steps: int, ramp_steps: int) -> optax.Schedule:
    """``t -> γ_t`` for a warm-up of the input level: ``γ_t = inf`` (``x' = x``) for ``t < defer_steps``, then
    ``1/γ_t`` ramps linearly from ``1/(ramp_steps·γ)`` to ``1/γ`` over ``ramp_steps`` steps, then ``γ_t = γ``.

    The step ``1/(2γ_t)`` of :func:`hrrl_jax.robust.worst_case_inputs` thus grows linearly from 0; ``gamma`` may
    be a scalar or a vector (per example or per concept), scaled as a whole.
    """
    if defer_steps < 0 or ramp_steps < 0:
        raise ValueError(f"defer_steps and ramp_steps must be >= 0, got {defer_steps} and {ramp_steps}.")
    gamma = jnp.asarray(gamma, jnp.float32)

    def gamma_at(step: jax.Array) -> jax.Array:
        since = jnp.asarray(step, jnp.float32) - defer_steps
        share = (
            jnp.clip((since + 1.0) / max(ramp_steps, 1), 0.0, 1.0) if ramp_steps else (since >= 0).astype(jnp.float32)
        )
        return jnp.where(share > 0, gamma / jnp.maximum(share, 1e-30), jnp.inf)

    return gamma_at
