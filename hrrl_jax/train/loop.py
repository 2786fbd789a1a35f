"""The training loop: data -> sharded jitted step -> metrics, evaluation, checkpoints -> results.json."""

from __future__ import annotations

import errno
import sys
from typing import Any

import jax
import ml_collections
import numpy as np

from hrrl_jax import robust
from hrrl_jax.config_checks import validate_config
from hrrl_jax.errors import UserError
from hrrl_jax.train import evaluation
from hrrl_jax.train.init_from import checkpoint_of, initialise_from
from hrrl_jax.train.launch_checks import check_before_data, check_resumed_schedule
from hrrl_jax.train.metrics import MetricWriter, ProgressBar
from hrrl_jax.train.preemption import StopRequest
from hrrl_jax.train.profiling import StepProfiler
from hrrl_jax.train.run import build_run
from hrrl_jax.train.state import TrainState, abstract_train_state
from hrrl_jax.train.throughput import meter_for_run
from hrrl_jax.workdir import Checkpointer, WorkDir, WorkDirError, workdir_lock
from hrrl_jax.workdir.layout import FINISHED, INTERRUPTED

# Write failures of the storage, not of the code: a full disk or quota, a read-only or vanished mount.
_STORAGE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.ENOENT, errno.EACCES)


# Metrics that count since the start of the run: logged as their last value in a window, not its mean.
CUMULATIVE_METRICS = {"adversary_skipped_updates"}


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite."""


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, stop_at_step: int | None = None
) -> dict[str, Any]:
    """Trains (or resumes) the configured run in `workdir`, evaluates it and returns the results.

    `stop_at_step` ends the run early with a checkpoint, as a preemption would (time-sliced jobs, tests);
    rerunning without it continues to `total_steps` exactly as an uninterrupted run. An interrupted run returns
    `{"step": N, "interrupted": True, "status": "interrupted"}`. Process 0 holds the work directory's lock for
    the whole launch; SIGTERM/SIGINT are handled from the first line to the last (`StopRequest`).
    """
    validate_config(config)
    directory = WorkDir(workdir)
    directory.prepare()
    check_before_data(config)
    if config.init_from is not None and directory.latest_checkpoint_step() is None:
        checkpoint_of(config.init_from)  # A fresh start: a wrong path fails before any data is read.
    lock = workdir_lock(directory.path) if jax.process_index() == 0 else None
    with StopRequest(interrupt_until_started=True) as stop:
        try:
            if lock is not None:
                lock.acquire()
            return _train_and_evaluate_locked(config, directory, stop, stop_at_step)
        finally:
            if lock is not None:
                lock.release()


def _train_and_evaluate_locked(
    config: ml_collections.ConfigDict, directory: WorkDir, stop: StopRequest, stop_at_step: int | None
) -> dict[str, Any]:
    is_main_process = jax.process_index() == 0
    run = build_run(config)
    state, hierarchy, info = run.trainer.state, run.hierarchy, run.info
    durations = run.config  # Durations in steps, whether given in steps or epochs.
    total_steps = durations.total_steps

    checkpointer = Checkpointer(directory.checkpoints, keep=config.keep_checkpoints)
    iterator = None
    writer = None
    progress = None
    meter = None
    profiler = None
    try:
        start_step = 0
        initialised_from = None  # The checkpoint folder config.init_from took the model from, if any.
        restored = checkpointer.restore_latest(abstract_train_state(state))
        if restored is not None:  # A resume takes its own checkpoint, never config.init_from again.
            state, meta, _ = restored
            start_step = int(jax.device_get(state.step))
            initialised_from = meta.get("init_from")
        elif config.init_from is not None:
            state, initialised_from = initialise_from(state, config.init_from)
        check_resumed_schedule(
            directory,
            durations,
            start_step=start_step,
            steps_per_epoch=run.train_pipeline.steps_per_epoch,
            learning_rate_fn=run.trainer.learning_rate_fn,
        )
        if restored is not None:  # Said only once the resume is accepted.
            print(f"Resuming from the checkpoint at step {start_step} in {checkpointer.directory}.", flush=True)
            if run.trainer.objective.reweights:
                state = _adopt_changed_robust_settings(state)
        stop.started()  # Start-up is over: from here a signal is acted on after the step, the save or the batch.
        if is_main_process:  # Only now: a launch that cannot resume leaves the record of the checkpoints as it was.
            _report_config_changes(directory.record_config(config, step=start_step), start_step)
            directory.truncate_metrics(start_step)  # A resume retrains the steps after it: no duplicate records.
            if start_step < total_steps:
                directory.set_aside_results_before(total_steps)
        jitted_train_step, jitted_eval_step = run.trainer.jitted_train_step, run.trainer.jitted_eval_step
        train_pipeline, eval_pipeline = run.train_pipeline, run.eval_pipeline

        # Only process 0 writes metrics: every process creating the TensorBoard directory races on a shared workdir.
        if is_main_process:
            writer = MetricWriter(directory, vector_names={"concept_distribution": list(hierarchy.concept_names)})
        progress = ProgressBar(start_step=start_step, total_steps=total_steps, enabled=is_main_process)
        meter = meter_for_run(run, state)
        profiler = StepProfiler(config.profile, directory.profile, enabled=is_main_process, excluded=meter.excluded)
        window: list[dict[str, jax.Array]] = []
        unchecked: tuple[int, dict[str, jax.Array]] | None = None
        last_summary: dict[str, np.ndarray] = {}

        def check_finite() -> None:
            """Raises if the last step's loss, gradients or new parameters are not finite (before any save)."""
            nonlocal unchecked
            if unchecked is not None:
                step, metrics = unchecked
                if not bool(jax.device_get(metrics["finite"])):
                    checkpointer.wait()
                    loss = float(jax.device_get(metrics["loss"]))
                    raise NonFiniteLossError(
                        f"The training loss, gradients or parameters are not finite at step {step} (loss {loss}). "
                        "Training stopped; the last checkpoint "
                        f"(step {checkpointer.latest_step()}) was saved before it and is intact. Lower "
                        "config.optimizer.learning_rate, set config.optimizer.grad_clip_norm, or use float32."
                    )
                unchecked = None

        def save(step: int) -> None:
            check_finite()
            if checkpointer.latest_step() == step:
                return
            jax.block_until_ready(state)  # The steps queued before the save count as steps, the save does not.
            with meter.excluded():
                meta = {"step": step, "method": config.robust.method}
                if initialised_from is not None:
                    meta["init_from"] = initialised_from
                checkpointer.save(step, state, meta)

        def interrupted(step: int, reason: str) -> dict[str, Any]:
            save(step)
            checkpointer.wait()
            status = {"step": step, "interrupted": True, "status": INTERRUPTED, "reason": reason}
            if is_main_process and directory.read_results() is None:  # Never replaces a finished run's results.
                directory.write_results({key: value for key, value in status.items() if key != "interrupted"})
            print(f"\n{reason}: saved a checkpoint at step {step}; exiting.", flush=True)
            return status

        iterator = train_pipeline.iterate(start_step, total_steps)  # The batches of steps start_step .. total - 1.
        for step in range(start_step + 1, total_steps + 1):
            batch = next(iterator)
            with profiler.step(step):
                if step == start_step + 1:  # Compiles: neither its time nor the step counts towards throughput.
                    with meter.excluded():
                        state, metrics = jax.block_until_ready(jitted_train_step(state, batch))
                else:
                    state, metrics = jitted_train_step(state, batch)
                    meter.step_done()
            check_finite()  # The previous step's: one step of lag keeps the device busy.
            checkpointer.poll()  # A background save that failed stops training here.
            unchecked = (step, metrics)
            window.append(metrics)
            if step % config.log_every_steps == 0 or step == total_steps:
                check_finite()
                summary = _mean_metrics(window)  # Waits for the window's last step.
                summary.update(meter.window())
                with meter.excluded():
                    record = writer.write(step, summary) if writer is not None else None
                last_summary = summary
                progress.update(len(window), record)
                window = []
            if durations.eval_every_steps > 0 and step % durations.eval_every_steps == 0 and step < total_steps:
                jax.block_until_ready(state)
                with meter.excluded():
                    eval_results = evaluation.evaluate(jitted_eval_step, state, eval_pipeline, hierarchy)
                    if writer is not None:
                        writer.write(step, evaluation.scalar_summary(eval_results), prefix="eval")
            if step % durations.checkpoint_every_steps == 0 and step < total_steps:
                save(step)
            stop_requested = stop.should_stop(step)
            if stop_requested or step == stop_at_step:
                return interrupted(step, stop.reason if stop_requested else f"stop_at_step={step}")
        progress.close()
        profiler.stop()  # A trace that runs past the last step ends with it.
        final_step = int(jax.device_get(state.step))
        save(final_step)  # Evaluation runs while it is written.
        # One process may stop its evaluation on its own signal; several must finish it together (it is collective).
        should_stop = (lambda: stop.requested_here) if jax.process_count() == 1 else (lambda: False)
        eval_results = evaluation.evaluate(jitted_eval_step, state, eval_pipeline, hierarchy, should_stop=should_stop)
        if eval_results is None:
            return interrupted(final_step, f"{stop.reason} during the final evaluation")
        if not last_summary and is_main_process:  # A rerun that only evaluates: the weight ESS its training logged.
            last_summary = _last_logged(directory, final_step)
        adversary = _adversary_summary(state, hierarchy, run.trainer.objective.reweights, last_summary)
        results = {"status": FINISHED, "step": final_step, **eval_results, **adversary}
        if initialised_from is not None:
            results["init_from"] = initialised_from
        checkpointer.wait()  # results.json only names a step whose checkpoint is committed.
        if is_main_process:
            directory.write_results(results)
            print(evaluation.format_results_table(results, title=f"{config.robust.method} on {info.name}"))
        return results
    except OSError as error:
        if error.errno not in _STORAGE_ERRORS:
            raise
        raise WorkDirError(
            f"Writing {error.filename or 'the work directory'} failed: {error.strerror}. Training stopped; the "
            f"checkpoints are intact (the newest at step {checkpointer.latest_step()}). Free space (or fix the "
            "mount) and rerun the same command to resume."
        ) from error
    finally:
        failing = sys.exc_info()[1] is not None  # Then a failure to close must not hide the first error.
        for close in (
            profiler.stop if profiler is not None else None,
            meter.close if meter is not None else None,
            iterator.close if iterator is not None else None,
            progress.close if progress is not None else None,
            writer.close if writer is not None else None,
            checkpointer.close,
        ):
            if close is not None:
                try:
                    close()
                except Exception:
                    if not failing:
                        raise


def _adopt_changed_robust_settings(state: TrainState) -> TrainState:
    """The restored state, its adversary carried over to this launch's robust settings if they changed (a deliberate
    change: config_history.jsonl records it), said on the console."""
    try:
        robust.find_reweighting_state(state.opt_state)
    except ValueError as mismatch:
        if "saved by a transform with other settings" not in str(mismatch):
            raise
        print(
            "The adversary's settings changed since the checkpoint; its concept losses carry over under the new "
            f"ones ({str(mismatch).split(': ', 1)[-1].split('. ')[0]}).",
            flush=True,
        )
        return state.replace(opt_state=robust.adopt_settings(state.opt_state))
    return state


def _last_logged(directory: WorkDir, step: int) -> dict[str, np.ndarray]:
    """The last metrics record at or before `step` that this run logged, without its step."""
    records = [record for record in directory.read_metrics() if record["step"] <= step]
    return {name: np.asarray(value) for name, value in records[-1].items() if name != "step"} if records else {}


def _adversary_summary(
    state: TrainState, hierarchy: Any, reweights: bool, last_summary: dict[str, np.ndarray]
) -> dict[str, Any]:
    """For the methods that reweight: the final concept distribution p by concept name, and the mean weight ESS
    of the last log window this launch trained (absent when it trained none); empty for the others."""
    if not reweights:
        return {}
    distribution = np.asarray(jax.device_get(robust.concept_distribution(state.opt_state)), np.float64)
    summary: dict[str, Any] = {"concept_distribution": dict(zip(hierarchy.concept_names, distribution.tolist()))}
    if "weight_ess" in last_summary:
        summary["weight_ess"] = float(last_summary["weight_ess"])
    return summary


def _report_config_changes(changed: dict[str, list[Any]], step: int) -> None:
    """Says on the console which keys of the configuration a resumed run changed, and where that is kept."""
    if changed:
        lines = "".join(f"\n  {key}: {old!r} -> {new!r}" for key, (old, new) in changed.items())
        print(f"The configuration changed at step {step} (recorded in config_history.jsonl):{lines}", flush=True)


def _mean_metrics(window: list[dict[str, jax.Array]]) -> dict[str, np.ndarray]:
    """Averages each metric over the steps of a log window (vectors entry-wise)."""
    fetched = jax.device_get(window)
    summary = {name: np.mean([metrics[name] for metrics in fetched], axis=0) for name in fetched[0] if name != "finite"}
    for name in CUMULATIVE_METRICS & set(summary):  # Counts since the start: the window's last value.
        summary[name] = np.asarray(fetched[-1][name])
    return summary
