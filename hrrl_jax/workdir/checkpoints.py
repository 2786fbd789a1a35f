"""Orbax checkpoints of the whole train state: async, atomic, keep the last N, digest-verified on restore.

Every checkpoint carries a SHA-256 digest of its array data per process (`hrrl_jax.workdir.digest`), written into
its step directory once the save has committed. A restore reads the newest checkpoint, recomputes the digest of
what it read and compares: a checkpoint that fails (or cannot be read at all) is never used. It is moved to
`WORKDIR/corrupt_checkpoints/STEP` (its bytes kept, out of the way of later saves of that step) and the run falls
back to the next newest checkpoint that verifies. If none verifies, nothing is moved and the restore refuses.
A checkpoint written with another configuration (other structure or shapes) is not corrupt: it stops the run and
nothing is moved.
"""

from __future__ import annotations

import concurrent.futures
import errno
import json
import logging
import os
import shutil
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from hrrl_jax.errors import UserError
from hrrl_jax.workdir import digest as digests
from hrrl_jax.workdir import storage

CORRUPT_CHECKPOINTS = "corrupt_checkpoints"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint in the work directory cannot be restored into the current run."""


class CheckpointSaveError(UserError, OSError):
    """An asynchronous save failed (a full disk, a lost mount): training stops at once."""


class CorruptCheckpoint(Exception):
    """A checkpoint whose data cannot be read or does not match its digest (internal: triggers the fall-back)."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(error).__name__}: {line[:300]}"


def _root_cause(error: BaseException) -> BaseException:
    """The innermost exception of a chain (Orbax wraps the OSError of a failed write)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return error


class Checkpointer:
    """Saves and restores `{"state": train state, "meta": JSON}` under `directory` with Orbax.

    Saves are asynchronous (training continues while the files are written) and atomic (a step directory
    appears only once complete), so a crash mid-save leaves the previous checkpoint intact. The newest
    `keep` checkpoints are kept. `report` receives the one-line messages about rejected checkpoints.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep: int = 3,
        asynchronous: bool = True,
        report: Callable[[str], None] = lambda line: print(line, flush=True),
    ):
        self.directory = storage.as_path(directory)  # A local folder or an object store URL.
        self._report = report
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            enable_async_checkpointing=asynchronous,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
        )
        self._hasher = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-digest")
        self._pending: dict[int, concurrent.futures.Future[str]] = {}
        self._bytes_per_save = 0
        self._save_failed_once = False

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def step_directory(self, step: int) -> epath.Path:
        return self.directory / str(step)

    # Saving.

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Starts an asynchronous save of `state` and JSON-serialisable `meta` at `step`.

        The digest is taken of host copies made now (the state's buffers may be donated to the next step) and
        written when the save has committed (`poll`, `wait`).
        """
        self.poll()
        shards = digests.local_shards(state)
        self._bytes_per_save = sum(array.nbytes for _, leaf_shards in shards for _, array in leaf_shards)
        meta_json = json.dumps(meta, sort_keys=True)
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                force=True,
            )
        except Exception as error:
            raise self._save_failed(step, error) from error
        self._pending[step] = self._hasher.submit(_checkpoint_digest, shards, meta_json)

    def poll(self) -> None:
        """Raises CheckpointSaveError if a background save failed; writes the digests of committed saves.

        Cheap (no file access while a save is in flight): call it after every step.
        """
        if self._pending and not self._manager.is_saving_in_progress():
            self.wait()

    def wait(self) -> None:
        """Blocks until every pending save has committed and its digest is written; raises if one failed."""
        try:
            self._manager.wait_until_finished()
            self._manager.check_for_errors()
        except Exception as error:
            raise self._save_failed(self._oldest_pending_step(), error) from error
        self._write_pending_digests()

    def close(self) -> None:
        """Waits for pending saves (raising if one failed), then releases Orbax's threads."""
        try:
            self.wait()
        finally:
            self._manager.close()
            self._hasher.shutdown(wait=True)
            if self._save_failed_once:  # Orbax's threads may have gone on writing after the failure.
                self._remove_temporary_folders(settle_seconds=0.2)

    def _oldest_pending_step(self) -> int | None:
        return min(self._pending) if self._pending else None

    def _write_pending_digests(self) -> None:
        """Writes the digest of each pending save whose step directory exists (Orbax's atomic commit)."""
        for step, future in sorted(self._pending.items()):
            if not self.step_directory(step).is_dir():
                raise self._save_failed(step, RuntimeError("the save ended without committing its step directory"))
            digests.write_digest(self.step_directory(step), jax.process_index(), future.result())
            del self._pending[step]

    def _save_failed(self, step: int | None, error: BaseException) -> CheckpointSaveError:
        """One line: the cause, the step and, for a full disk, the space a save needs and what is free."""
        cause = _root_cause(error)
        where = f"at step {step}" if step is not None else ""
        message = f"Saving the checkpoint {where} in {self.directory} failed: {_first_line(cause)}."
        # Orbax's own threads report the same failure again as their futures are collected: once is enough.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        self._save_failed_once = True
        disk_full = isinstance(cause, OSError) and cause.errno == errno.ENOSPC
        if disk_full or "No space left on device" in str(cause):
            message += f" A checkpoint needs about {self._bytes_per_save / 2**20:.1f} MiB per process"
            if not storage.is_object_store(self.directory) and self.directory.is_dir():
                message += f"; {shutil.disk_usage(self.directory).free / 2**20:.1f} MiB are free"
            message += "."
        self._pending.clear()
        self._remove_temporary_folders()
        return CheckpointSaveError(
            message + " Training stopped; the earlier checkpoints are intact. Free space (or fix the mount) and "
            "rerun the same command to resume."
        )

    def _remove_temporary_folders(self, *, settle_seconds: float = 0.0) -> None:
        """Removes the temporary folders of failed saves (process 0); with `settle_seconds`, again until none has
        come back for that long (writes that Orbax's threads had already queued may recreate one)."""
        if jax.process_index() != 0:
            return
        pattern = "*.orbax-checkpoint-tmp*"
        for _ in range(10):
            for path in self.directory.glob(pattern):
                try:
                    path.rmtree()
                except OSError:
                    pass  # Already gone (Orbax's own clean-up), or unreachable: a later save tries again.
            time.sleep(settle_seconds)
            if not settle_seconds or not list(self.directory.glob(pattern)):
                return

    # Restoring.

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict[str, Any], int] | None:
        """The newest checkpoint that verifies, restored into `abstract_state`: (state, meta, step); None if none.

        Rejected checkpoints are reported in one line each and moved to `corrupt_checkpoints/` once an intact
        one is found. Raises CheckpointError if every checkpoint is corrupt (nothing moved) or the newest one was
        written with another configuration.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        rejected: list[int] = []
        for step in steps:
            _check_tree_matches(self._saved_tree(step), abstract_state, step, self.directory)
            try:
                state, meta = self._restore_verified(step, abstract_state)
            except CorruptCheckpoint as corrupt:
                self._agreed(False)  # Collective under multi-host: the other processes learn of it.
                self._report(str(corrupt))
                rejected.append(step)
                continue
            if not self._agreed(True):  # Another process found its part of this checkpoint corrupt.
                self._report(f"Checkpoint at step {step} in {self.directory} is corrupt on another process; not used.")
                rejected.append(step)
                continue
            if rejected:
                self._quarantine(rejected)
                self._report(
                    f"Falling back to the intact checkpoint at step {step}; the rejected ones were moved to "
                    f"{self.quarantine_directory} (kept, not used)."
                )
            return state, meta, step
        if rejected:
            raise CheckpointError(
                f"No checkpoint in {self.directory} verifies (corrupt: steps {', '.join(map(str, rejected))}); "
                "nothing was moved or deleted. Restore the work directory from a backup, or move checkpoints/ "
                "aside to start afresh."
            )
        return None

    @property
    def quarantine_directory(self) -> epath.Path:
        return self.directory.parent / CORRUPT_CHECKPOINTS

    def _saved_tree(self, step: int) -> Any:
        """The saved state's tree metadata (structure, shapes, dtypes); an _UnreadableTree if it cannot be read."""
        try:
            return self._manager.item_metadata(step)["state"].tree
        except Exception as error:
            return _UnreadableTree(error)

    def _restore_verified(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
        step_directory = self.step_directory(step)
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
            )
            state, meta = restored["state"], dict(restored["meta"])
            expected = digests.read_digest(step_directory, jax.process_index())
        except Exception as error:  # Orbax raises many types (ValueError, KeyError, OSError, tensorstore).
            raise CorruptCheckpoint(
                f"Checkpoint at step {step} cannot be read ({_first_line(error)}) in {step_directory}; not used."
            ) from error
        if expected is None:
            self._report(
                f"Checkpoint at step {step} in {step_directory} has no digest (saved by an older version, or "
                "killed between its save and its digest): restored unverified."
            )
            return state, meta
        found = _checkpoint_digest(digests.local_shards(state), json.dumps(meta, sort_keys=True))
        if found != expected:
            name = step_directory / digests.digest_filename(jax.process_index())
            raise CorruptCheckpoint(
                f"Checkpoint at step {step} is corrupt: its data does not match {name} "
                f"(sha256 {found[:12]}... read, {expected[:12]}... saved); not used."
            )
        return state, meta

    def _agreed(self, intact: bool) -> bool:
        """Whether every process found its part of the checkpoint intact (collective under multi-host)."""
        if jax.process_count() == 1:
            return intact
        return bool(np.all(multihost_utils.process_allgather(np.int32(intact))))

    def _quarantine(self, steps: list[int]) -> None:
        """Moves rejected step directories aside (process 0), so that this run can save those steps again."""
        if jax.process_index() == 0:
            self.quarantine_directory.mkdir(parents=True, exist_ok=True)
            for step in steps:
                destination = self.quarantine_directory / str(step)
                if destination.exists():
                    destination = destination.parent / f"{step}.{time.strftime('%Y%m%dT%H%M%S')}"
                self.step_directory(step).rename(destination)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("hrrl_jax quarantined corrupt checkpoints")
        self._manager.reload()

    def restore_saved_variables(
        self, step: int, names: tuple[str, ...], sharding: Any, *, refusal: str
    ) -> dict[str, Any]:
        """The entries `names` (e.g. `params`, `batch_stats`) of the train state saved at `step`, as saved, placed
        with `sharding` and verified.

        The abstract target is the saved tree's own metadata (so the optimizer state need not be rebuilt); the
        digest is checked over the whole restored state. A corrupt checkpoint is a CheckpointError ending in
        `refusal`, what was therefore not done; nothing is moved.
        """
        saved_tree = self._saved_tree(step)
        if isinstance(saved_tree, _UnreadableTree):
            raise CheckpointError(
                f"Checkpoint at step {step} cannot be read ({_first_line(saved_tree.error)}) in "
                f"{self.step_directory(step)}: it is corrupt."
            )
        target = jax.tree_util.tree_map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), saved_tree
        )
        try:
            state, _ = self._restore_verified(step, target)
        except CorruptCheckpoint as corrupt:
            raise CheckpointError(str(corrupt).replace("; not used.", f": {refusal}.")) from corrupt
        missing = [name for name in names if name not in state]
        if missing:
            raise CheckpointError(f"The checkpoint at step {step} in {self.directory} holds no {missing}.")
        return {name: state[name] for name in names}

    def restore_model_variables(self, step: int, abstract_variables: dict[str, Any], sharding: Any) -> dict[str, Any]:
        """The `params` and `batch_stats` of the train state saved at `step`, placed with `sharding`, verified
        (`restore_saved_variables`) and checked against `abstract_variables` (the model's `eval_shape`), so another
        model is a CheckpointError."""
        variables = self.restore_saved_variables(
            step, tuple(abstract_variables), sharding, refusal="features were not extracted"
        )
        _check_tree_matches(variables, abstract_variables, step, self.directory)
        return variables


class _UnreadableTree:
    """Stands for a saved tree whose metadata could not be read (a corrupt checkpoint)."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _checkpoint_digest(shards: list, meta_json: str) -> str:
    """The digest of a checkpoint: its state's local shards, then its JSON metadata."""
    return digests.digest_of_shards([*shards, ("meta", [((), np.frombuffer(meta_json.encode(), np.uint8))])])


def _check_tree_matches(saved: Any, abstract_state: Any, step: int, directory: str) -> None:
    """Fails loudly when a saved tree differs in its arrays' paths or shapes from the expected one.

    Paths are compared as sets (Orbax's metadata holds dataclasses and named tuples as sorted dicts). An unreadable
    tree is not checked here: the restore that follows finds it corrupt.
    """
    if isinstance(saved, _UnreadableTree):
        return
    expected, found = _shapes_by_path(abstract_state), _shapes_by_path(saved)
    if set(expected) != set(found):
        differing = sorted(set(expected) ^ set(found))
        raise CheckpointError(
            f"The checkpoint at step {step} in {directory} has another state structure than this run expects "
            f"({len(found)} arrays saved, {len(expected)} expected; first differing: {differing[0]}): it was "
            "written with another configuration (robust method, optimizer, model) or an older hrrl_jax version. "
            "Nothing was changed: rerun "
            "with the configuration in config.json, or use another --workdir."
        )
    for path, shape in expected.items():
        if shape != found[path]:
            raise CheckpointError(
                f"The checkpoint at step {step} in {directory} holds {path} with shape {found[path]}, this run "
                f"expects {shape}: it was written with another configuration (model width, data set). Nothing "
                "was changed: rerun with the configuration in config.json, or use another --workdir."
            )


def _shapes_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
    """{"a/b/c": shape} for every array leaf, with every container's keys spelled alike."""
    return {digests.leaf_path(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
