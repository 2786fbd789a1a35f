"""Checks of a launch against its work directory and data set description, made before anything is trained.

Each raises a one-line UserError naming the key: a concept cost or per-concept γ of the wrong shape, micro-batches
that do not split over the devices (before any data is read), a
`total_steps` below the step already trained, or a changed `total_steps` that would make the learning-rate
schedule jump at the resumed step.
"""

from __future__ import annotations

import math

import jax
import ml_collections
import optax

from hrrl_jax.config_checks import config_from_json
from hrrl_jax.data import describe_dataset
from hrrl_jax.errors import ConfigError
from hrrl_jax.schema import durations_in_steps
from hrrl_jax.train.objective import input_level, load_concept_cost
from hrrl_jax.train.optimizers import make_optimizer
from hrrl_jax.workdir import WorkDir


def check_before_data(config: ml_collections.ConfigDict) -> None:
    """What can be checked from the data set's description alone: the concept cost's shape and the number of
    `robust.input_gamma_by_concept` values."""
    dataset = config.dataset
    info = describe_dataset(
        dataset.name, exclude_classes=tuple(dataset.exclude_classes), only_classes=tuple(dataset.only_classes)
    )
    load_concept_cost(config.robust.cost, info.hierarchy.num_concepts)
    input_level(config.robust, info.hierarchy.num_concepts, config.seed)
    check_micro_batches(config, jax.device_count())


def check_micro_batches(config: ml_collections.ConfigDict, device_count: int) -> None:
    """With gradient accumulation, every micro-batch must split evenly over the devices: `batch_size` a multiple of
    `gradient_accumulation_steps` × `device_count`."""
    steps = int(config.gradient_accumulation_steps)
    if steps > 1 and config.batch_size % (steps * device_count):
        raise ConfigError(
            f"config.gradient_accumulation_steps={steps}: config.batch_size={config.batch_size} must be a multiple "
            f"of {steps} micro-batches × {device_count} devices = {steps * device_count}, so that every micro-batch "
            "splits evenly over the devices; change either."
        )


def check_resumed_schedule(
    directory: WorkDir,
    config_in_steps: ml_collections.ConfigDict,
    *,
    start_step: int,
    steps_per_epoch: int,
    learning_rate_fn: optax.Schedule,
) -> None:
    """Refuses a `total_steps` below `start_step`, and a changed `total_steps` under which the learning rate at
    `start_step` differs from the one the recorded run would have used (a cosine or step schedule stretched)."""
    total_steps = int(config_in_steps.total_steps)
    if total_steps < start_step:
        raise ConfigError(
            f"config.total_steps={total_steps}: below step {start_step}, which the latest checkpoint in "
            f"{directory.path} has reached; a run cannot be shortened after training. Give total_steps >= "
            f"{start_step} (= {start_step} evaluates what was trained), or use another --workdir."
        )
    if start_step == 0 or not directory.config_history():
        return
    recorded = durations_in_steps(config_from_json(directory.read_config_dict()), steps_per_epoch)
    recorded_total = int(recorded.total_steps)
    if recorded_total == total_steps:
        return
    _, recorded_rate_fn = make_optimizer(recorded, recorded_total)
    before, after = float(recorded_rate_fn(start_step)), float(learning_rate_fn(start_step))
    if not math.isclose(before, after, rel_tol=1e-6, abs_tol=1e-12):
        raise ConfigError(
            f"config.total_steps={total_steps}: this run trained {start_step} steps of a "
            f"'{recorded.optimizer.schedule}' learning-rate schedule over {recorded_total} steps; over "
            f"{total_steps} its rate at step {start_step} would jump from {before:.4g} to {after:.4g}. Keep "
            f"total_steps={recorded_total}, train a new run in another --workdir, or use "
            "optimizer.schedule='constant' (whose rate does not depend on total_steps)."
        )
