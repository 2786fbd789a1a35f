"""The training loop: data -> sharded jitted step -> metrics, evaluation, checkpoints -> results.json."""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from hrrl_jax.data import InputPipeline, SplitData, load_split
from hrrl_jax.models import create_model
from hrrl_jax.train import evaluation
from hrrl_jax.train.checkpoints import Checkpointer
from hrrl_jax.train.metrics import MetricWriter, ProgressBar
from hrrl_jax.train.objective import build_objective
from hrrl_jax.train.optimizers import make_optimizer
from hrrl_jax.train.sharding import data_parallel_mesh
from hrrl_jax.train.state import TrainState, abstract_train_state, init_train_state
from hrrl_jax.train.steps import eval_step, train_step

PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class _StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step (to save and exit cleanly)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequest":
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc_info: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes the resolved configuration to `workdir/config.json`."""
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as file:
            file.write(config.to_json_best_effort(indent=2, sort_keys=True))


def total_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """The run's length in steps: `num_epochs` (when > 0) converted with the epoch size, else `total_steps`."""
    if config.get("num_epochs", 0) > 0:
        return int(math.ceil(config.num_epochs * steps_per_epoch))
    if config.total_steps <= 0:
        raise ValueError(f"config.total_steps={config.total_steps} must be positive (or set config.num_epochs).")
    return int(config.total_steps)


def load_data(config: ml_collections.ConfigDict) -> tuple[SplitData, SplitData]:
    """The train and test splits named by `config.dataset`."""
    dataset = config.dataset
    kwargs = dict(
        data_dir=dataset.data_dir or None,
        exclude_classes=tuple(dataset.exclude_classes),
        only_classes=tuple(dataset.only_classes),
    )
    return (
        load_split(dataset.name, dataset.train_split, **kwargs),
        load_split(dataset.name, dataset.test_split, **kwargs),
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) the configured run in `workdir`, evaluates it and returns the results."""
    os.makedirs(workdir, exist_ok=True)
    write_config(config, workdir)
    is_main_process = jax.process_index() == 0

    mesh, data_sharding, replicated = data_parallel_mesh()
    train_split, test_split = load_data(config)
    info = train_split.info
    hierarchy = info.hierarchy
    image_size = config.dataset.image_size or None
    train_pipeline = InputPipeline(
        train_split,
        global_batch_size=config.batch_size,
        seed=config.seed,
        train=True,
        image_size=image_size,
        augment=config.dataset.augment,
        sharding=data_sharding,
    )
    eval_pipeline = InputPipeline(
        test_split,
        global_batch_size=config.get("eval_batch_size") or config.batch_size,
        seed=config.seed,
        train=False,
        image_size=image_size,
        sharding=data_sharding,
    )
    total_steps = total_train_steps(config, train_pipeline.steps_per_epoch)

    if config.precision not in PRECISIONS:
        raise ValueError(f"config.precision={config.precision!r} is not known; choose one of {tuple(PRECISIONS)}.")
    model = create_model(
        config.model.name,
        num_classes=info.num_classes,
        width=config.model.width,
        stem=config.model.stem,
        dtype=PRECISIONS[config.precision],
    )
    base_optimizer, learning_rate_fn = make_optimizer(config, total_steps)
    concept_sizes = hierarchy.examples_per_concept(train_split.labels)
    objective, reweighting = build_objective(config.robust, hierarchy.concept_of_class, concept_sizes)
    tx = optax.chain(reweighting, base_optimizer) if reweighting is not None else optax.chain(base_optimizer)

    side = image_size or info.image_shape[0]
    image_shape = (side, side, info.image_shape[2])
    state = init_train_state(model, tx, image_shape=image_shape, seed=config.seed, replicated=replicated)
    state_shardings = jax.tree_util.tree_map(lambda leaf: leaf.sharding, state)

    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints)
    start_step = 0
    if checkpointer.latest_step() is not None:
        state, _ = checkpointer.restore(checkpointer.latest_step(), abstract_train_state(state))
        start_step = int(jax.device_get(state.step))
        print(f"Resuming from the checkpoint at step {start_step} in {checkpointer.directory}.", flush=True)

    jitted_train_step = jax.jit(
        functools.partial(
            train_step,
            model=model,
            tx=tx,
            objective=objective,
            learning_rate_fn=learning_rate_fn,
            concept_of_class=np.asarray(hierarchy.concept_of_class),
        ),
        in_shardings=(state_shardings, data_sharding),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )
    jitted_eval_step = jax.jit(
        functools.partial(eval_step, model=model, num_classes=info.num_classes),
        in_shardings=(state_shardings, data_sharding),
        out_shardings=replicated,
    )

    def evaluate(state: TrainState) -> dict[str, Any]:
        return evaluation.evaluate(jitted_eval_step, state, eval_pipeline, hierarchy)

    writer = MetricWriter(workdir, vector_names={"concept_distribution": list(hierarchy.concept_names)})
    progress = ProgressBar(start_step=start_step, total_steps=total_steps, enabled=is_main_process)
    window: list[dict[str, jax.Array]] = []
    window_start = time.perf_counter()
    unchecked_loss: tuple[int, jax.Array] | None = None

    def check_finite() -> None:
        nonlocal unchecked_loss
        if unchecked_loss is not None:
            step, loss = unchecked_loss
            if not np.isfinite(float(jax.device_get(loss))):
                checkpointer.wait()
                raise NonFiniteLossError(
                    f"The training loss is {float(loss)} at step {step}. Training stopped; the last checkpoint "
                    f"(step {checkpointer.latest_step()}) was saved before it and is intact. Lower "
                    "config.optimizer.learning_rate, set config.optimizer.grad_clip_norm, or use float32."
                )
            unchecked_loss = None

    def save(step: int) -> None:
        check_finite()
        checkpointer.save(step, state, {"step": step, "method": config.robust.method})

    try:
        with _StopRequest() as stop:
            iterator = train_pipeline.iterate(start_step)
            for step in range(start_step + 1, total_steps + 1):
                state, metrics = jitted_train_step(state, next(iterator))
                check_finite()  # The previous step's loss: one step of lag keeps the device busy.
                unchecked_loss = (step, metrics["loss"])
                window.append(metrics)
                if step % config.log_every_steps == 0 or step == total_steps:
                    check_finite()
                    elapsed = time.perf_counter() - window_start
                    summary = _mean_metrics(window)
                    summary["steps_per_second"] = len(window) / max(elapsed, 1e-9)
                    record = writer.write(step, summary) if is_main_process else None
                    progress.update(len(window), record)
                    window, window_start = [], time.perf_counter()
                if config.eval_every_steps > 0 and step % config.eval_every_steps == 0 and step < total_steps:
                    eval_results = evaluate(state)
                    if is_main_process:
                        writer.write(step, evaluation.scalar_summary(eval_results), prefix="eval")
                if step % config.checkpoint_every_steps == 0 and step < total_steps:
                    save(step)
                if stop.signal_name is not None:
                    save(step)
                    checkpointer.wait()
                    print(f"\n{stop.signal_name} received: saved a checkpoint at step {step}; exiting.", flush=True)
                    return {"step": step, "interrupted": True}
        final_step = int(jax.device_get(state.step))
        if checkpointer.latest_step() != final_step:
            save(final_step)
        results = evaluate(state)
        results = {"step": final_step, **results}
        if is_main_process:
            with open(os.path.join(workdir, "results.json"), "w") as file:
                json.dump(results, file, indent=2)
            print(evaluation.format_results_table(results, title=f"{config.robust.method} on {info.name}"))
        return results
    finally:
        progress.close()
        writer.close()
        checkpointer.close()


def _mean_metrics(window: list[dict[str, jax.Array]]) -> dict[str, np.ndarray]:
    """Averages each metric over the steps of a log window (vectors entry-wise)."""
    fetched = jax.device_get(window)
    return {name: np.mean([metrics[name] for metrics in fetched], axis=0) for name in fetched[0]}
