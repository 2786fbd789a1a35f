"""Builds everything a run needs from its config: data, mesh, model, optimizer chain, state, jitted steps.

The trainer and the benchmarks both use `build_run`, so a benchmark times exactly the step that trains.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import optax

from hrrl_jax.data import (
    ConceptHierarchy,
    DatasetInfo,
    InputPipeline,
    SplitData,
    image_side,
    load_data,
    normalise_images,
)
from hrrl_jax.mesh import DataParallelMesh, data_parallel_mesh
from hrrl_jax.models import configured_model
from hrrl_jax.schema import durations_in_steps
from hrrl_jax.train.launch_checks import check_micro_batches
from hrrl_jax.train.objective import Objective, build_objective
from hrrl_jax.train.optimizers import make_optimizer
from hrrl_jax.train.state import TrainState, init_train_state
from hrrl_jax.train.steps import eval_step, train_step


@dataclasses.dataclass
class Trainer:
    """The model, optimizer chain, initial state and jitted steps of a run (what the benchmarks time)."""

    model: Any
    tx: optax.GradientTransformationExtraArgs
    objective: Objective
    learning_rate_fn: optax.Schedule
    state: TrainState
    data_sharding: jax.sharding.NamedSharding
    jitted_train_step: Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]
    jitted_eval_step: Callable[[TrainState, dict[str, jax.Array]], dict[str, jax.Array]]


@dataclasses.dataclass
class Run:
    """The pieces of one training run, before any step is taken.

    `config` is the run's config with every duration in steps (`hrrl_jax.schema.durations_in_steps`).
    """

    config: ml_collections.ConfigDict
    info: DatasetInfo
    hierarchy: ConceptHierarchy
    concept_sizes: np.ndarray
    train_pipeline: InputPipeline
    eval_pipeline: InputPipeline
    trainer: Trainer


def make_optimizer_chain(
    config: ml_collections.ConfigDict, hierarchy: ConceptHierarchy, concept_sizes: np.ndarray, total_steps: int
) -> tuple[optax.GradientTransformationExtraArgs, Objective, optax.Schedule]:
    """The robust reweighting transform (if the method has one) chained before the base optimizer."""
    base_optimizer, learning_rate_fn = make_optimizer(config, total_steps)
    objective, reweighting = build_objective(config.robust, hierarchy.concept_of_class, concept_sizes, seed=config.seed)
    transforms = [base_optimizer] if reweighting is None else [reweighting, base_optimizer]
    return optax.chain(*transforms), objective, learning_rate_fn


def build_trainer(
    config: ml_collections.ConfigDict,
    info: DatasetInfo,
    concept_sizes: np.ndarray,
    *,
    total_steps: int,
    mesh: DataParallelMesh | None = None,
) -> Trainer:
    """Model, optimizer chain, state and jitted steps for data described by `info`, on `mesh` (default: all
    devices)."""
    _, data_sharding, replicated = mesh if mesh is not None else data_parallel_mesh()
    check_micro_batches(config, data_sharding.mesh.size)
    model = configured_model(config, info.num_classes)
    tx, objective, learning_rate_fn = make_optimizer_chain(config, info.hierarchy, concept_sizes, total_steps)
    side = image_side(config, info)
    state = init_train_state(
        model, tx, image_shape=(side, side, info.image_shape[2]), seed=config.seed, replicated=replicated
    )
    state_shardings = jax.tree_util.tree_map(lambda leaf: leaf.sharding, state)
    normalise = functools.partial(normalise_images, mean=info.mean, std=info.std)
    jitted_train_step = jax.jit(
        functools.partial(
            train_step,
            model=model,
            tx=tx,
            objective=objective,
            learning_rate_fn=learning_rate_fn,
            concept_of_class=np.asarray(info.hierarchy.concept_of_class),
            normalise=normalise,
            accumulation_steps=int(config.gradient_accumulation_steps),
            data_sharding=data_sharding,
        ),
        in_shardings=(state_shardings, data_sharding),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )
    jitted_eval_step = jax.jit(
        functools.partial(eval_step, model=model, num_classes=info.num_classes, normalise=normalise),
        in_shardings=(state_shardings, data_sharding),
        out_shardings=replicated,
    )
    return Trainer(
        model=model,
        tx=tx,
        objective=objective,
        learning_rate_fn=learning_rate_fn,
        state=state,
        data_sharding=data_sharding,
        jitted_train_step=jitted_train_step,
        jitted_eval_step=jitted_eval_step,
    )


def build_run(
    config: ml_collections.ConfigDict,
    *,
    devices: list[jax.Device] | None = None,
    splits: tuple[SplitData, SplitData] | None = None,
) -> Run:
    """Data, pipelines and trainer for `config` on `devices` (default: all); `splits` skips loading."""
    mesh = data_parallel_mesh(devices)
    data_sharding = mesh.batch
    train_split, test_split = splits if splits is not None else load_data(config)
    info = train_split.info
    image_size = config.dataset.image_size
    train_pipeline = InputPipeline(
        train_split,
        global_batch_size=config.batch_size,
        seed=config.seed,
        train=True,
        image_size=image_size,
        augment=config.dataset.augment,
        sharding=data_sharding,
        num_workers=config.dataset.num_workers,
    )
    eval_pipeline = InputPipeline(
        test_split,
        global_batch_size=config.batch_size if config.eval_batch_size is None else config.eval_batch_size,
        seed=config.seed,
        train=False,
        image_size=image_size,
        sharding=data_sharding,
        num_workers=config.dataset.num_workers,
    )
    config = durations_in_steps(config, train_pipeline.steps_per_epoch)
    total_steps = int(config.total_steps)
    concept_sizes = info.hierarchy.examples_per_concept(train_split.labels)
    trainer = build_trainer(config, info, concept_sizes, total_steps=total_steps, mesh=mesh)
    return Run(
        config=config,
        info=info,
        hierarchy=info.hierarchy,
        concept_sizes=concept_sizes,
        train_pipeline=train_pipeline,
        eval_pipeline=eval_pipeline,
        trainer=trainer,
    )
