"""The optimizer factory: an optax transformation and its learning-rate schedule from ``config.optimizer``.

Two recipes:
  * ``sgd``: SGD with (Nesterov) momentum and coupled L2 weight decay, the standard ResNet recipe:
        g <- clip(g) + wd * theta;   t <- momentum * t + g;
        theta <- theta - lr * (g + momentum * t)   (Nesterov)   or   theta - lr * t   (heavy ball).
  * ``adamw``: Adam with decoupled weight decay (Loshchilov & Hutter 2019):
        theta <- theta - lr * (m_hat / (sqrt(v_hat) + eps) + wd * theta).
Weight decay applies to kernels only (leaves with ndim > 1), never to biases or BatchNorm
parameters. Optional clipping by the global gradient norm (``grad_clip_norm``, None: off) comes first.

Schedules (``lr(step)``): linear warm-up from 0 to the peak over ``warmup_steps``, then ``cosine``
decay to 0 at ``total_steps``, ``step`` decay (multiply by ``step_decay`` at each boundary, given as
fractions of ``total_steps``), or ``constant``.
"""

from typing import Any

import jax
import ml_collections
import optax

from hrrl_jax.errors import ConfigError
from hrrl_jax.schema import OPTIMIZER_NAMES, SCHEDULE_NAMES, default_optimizer_config

__all__ = ["OPTIMIZER_NAMES", "SCHEDULE_NAMES", "default_optimizer_config", "kernel_decay_mask", "make_optimizer"]


def kernel_decay_mask(params: Any) -> Any:
    """True for the leaves that get weight decay: kernels (ndim > 1); False for biases and BN scales."""
    return jax.tree.map(lambda leaf: leaf.ndim > 1, params)


def _check_keys(optimizer_config: ml_collections.ConfigDict) -> None:
    expected = set(default_optimizer_config().keys())
    given = set(optimizer_config.keys())
    if given != expected:
        raise ValueError(
            f"config.optimizer has missing keys {sorted(expected - given)} and unknown keys "
            f"{sorted(given - expected)}; build it from hrrl_jax.schema."
            "default_optimizer_config() and change only the values."
        )


def _check_range(key: str, value: float, ok: bool, requirement: str) -> None:
    if not ok:
        raise ConfigError(f"config.optimizer.{key} must be {requirement}, got {value!r}.")


def make_schedule(optimizer_config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """The learning rate as a function of the step: linear warm-up, then cosine, step or constant."""
    peak = float(optimizer_config.learning_rate)
    warmup_steps = int(optimizer_config.warmup_steps)
    _check_range("learning_rate", peak, peak > 0, "> 0")
    _check_range(
        "warmup_steps", warmup_steps, 0 <= warmup_steps < total_steps, f">= 0 and below total_steps={total_steps}"
    )
    name = optimizer_config.schedule
    if name == "cosine":
        after_warmup = optax.cosine_decay_schedule(peak, decay_steps=total_steps - warmup_steps)
    elif name == "step":
        fractions = tuple(float(fraction) for fraction in optimizer_config.step_boundaries)
        increasing_inside_unit = all(0 < f < 1 for f in fractions) and list(fractions) == sorted(set(fractions))
        _check_range(
            "step_boundaries",
            fractions,
            increasing_inside_unit,
            "strictly increasing fractions of total_steps inside (0, 1)",
        )
        boundaries = [round(fraction * total_steps) for fraction in fractions]
        distinct = len(set(boundaries)) == len(boundaries)
        distinct_after_warmup = distinct and all(boundary > warmup_steps for boundary in boundaries)
        _check_range(
            "step_boundaries",
            fractions,
            distinct_after_warmup,
            f"distinct steps after warmup_steps={warmup_steps} once multiplied by total_steps={total_steps} "
            f"(got steps {boundaries})",
        )
        decay = float(optimizer_config.step_decay)
        _check_range("step_decay", decay, decay > 0, "> 0")
        # join_schedules hands the schedule after the warm-up the steps counted from its start.
        after_warmup = optax.piecewise_constant_schedule(
            peak, {boundary - warmup_steps: decay for boundary in boundaries}
        )
    elif name == "constant":
        after_warmup = optax.constant_schedule(peak)
    else:
        raise ValueError(f"Unknown config.optimizer.schedule {name!r}; choose one of {', '.join(SCHEDULE_NAMES)}.")
    if warmup_steps == 0:
        return after_warmup
    warmup = optax.linear_schedule(0.0, peak, transition_steps=warmup_steps)
    return optax.join_schedules([warmup, after_warmup], boundaries=[warmup_steps])


def make_optimizer(
    config: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds the optimizer of ``config.optimizer`` for a run of ``total_steps`` steps.

    Returns:
        (transformation, schedule): the optax transformation (clip -> decay -> momentum/Adam ->
        learning rate) and the learning-rate schedule it uses, for logging ``learning_rate``.
    """
    if "optimizer" not in config:
        raise ValueError(
            "The config has no 'optimizer' sub-config; set config.optimizer = "
            "hrrl_jax.schema.default_optimizer_config()."
        )
    if int(total_steps) < 1:
        raise ValueError(f"make_optimizer needs total_steps >= 1, got {total_steps!r}.")
    optimizer_config = config.optimizer
    _check_keys(optimizer_config)
    schedule = make_schedule(optimizer_config, int(total_steps))

    weight_decay = float(optimizer_config.weight_decay)
    clip_norm = optimizer_config.grad_clip_norm
    _check_range("weight_decay", weight_decay, weight_decay >= 0, ">= 0")
    if clip_norm is not None:
        _check_range("grad_clip_norm", clip_norm, clip_norm > 0, "> 0 (None turns clipping off)")
    clipping = [] if clip_norm is None else [optax.clip_by_global_norm(float(clip_norm))]

    name = optimizer_config.name
    if name == "sgd":
        momentum = float(optimizer_config.momentum)
        _check_range("momentum", momentum, 0 <= momentum < 1, "in [0, 1)")
        transformation = optax.chain(
            *clipping,
            optax.add_decayed_weights(weight_decay, mask=kernel_decay_mask),
            optax.sgd(schedule, momentum=momentum or None, nesterov=bool(optimizer_config.nesterov)),
        )
    elif name == "adamw":
        transformation = optax.chain(
            *clipping,
            optax.adamw(
                schedule,
                b1=float(optimizer_config.b1),
                b2=float(optimizer_config.b2),
                eps=float(optimizer_config.eps),
                weight_decay=weight_decay,
                mask=kernel_decay_mask,
            ),
        )
    else:
        raise ValueError(f"Unknown config.optimizer.name {name!r}; choose one of {', '.join(OPTIMIZER_NAMES)}.")
    return transformation, schedule
