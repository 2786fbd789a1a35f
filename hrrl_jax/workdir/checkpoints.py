"""Orbax checkpoints of the whole train state: async, atomic, keep the last N, never silently replaced."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from hrrl_jax.errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint in the work directory cannot be restored into the current run."""


class Checkpointer:
    """Saves and restores `{"state": train state, "meta": JSON}` under `directory` with Orbax.

    Saves are asynchronous (training continues while the files are written) and atomic (a step directory
    appears only once complete), so a crash mid-save leaves the previous checkpoint intact. The newest
    `keep` checkpoints are kept.
    """

    def __init__(self, directory: str, *, keep: int = 3, asynchronous: bool = True):
        self.directory = os.path.abspath(directory)
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

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Starts an asynchronous save of `state` and JSON-serialisable `meta` at `step`."""
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restores the checkpoint at `step` into the structure, shapes and shardings of `abstract_state`.

        Raises CheckpointError (and deletes nothing) when the files are corrupt or were written by a run with
        another model, optimizer or robust method.
        """
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
            )
        except Exception as error:  # Orbax raises many types (ValueError, KeyError, OSError, tensorstore).
            raise self._unreadable(step, error) from error
        _check_tree_matches(restored["state"], abstract_state, step, self.directory)
        return restored["state"], dict(restored["meta"])

    def restore_model_variables(self, step: int, abstract_variables: dict[str, Any], sharding: Any) -> dict[str, Any]:
        """The `params` and `batch_stats` of the train state saved at `step`, placed with `sharding`.

        The abstract target is the saved tree's own metadata (so the optimizer state need not be rebuilt),
        and what is restored is checked against `abstract_variables` (the model's `eval_shape`), so another
        model is a CheckpointError, not a silent mismatch.
        """
        try:
            saved_tree = self._manager.item_metadata(step)["state"].tree
            target = jax.tree_util.tree_map(
                lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), saved_tree
            )
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
            )["state"]
            variables = {name: restored[name] for name in abstract_variables}
        except Exception as error:
            raise self._unreadable(step, error) from error
        _check_tree_matches(variables, abstract_variables, step, self.directory)
        return variables

    def _unreadable(self, step: int, error: Exception) -> CheckpointError:
        return CheckpointError(
            f"Cannot restore the checkpoint at step {step} in {self.directory}: "
            f"{type(error).__name__}: {error}. It is corrupt or was written with another configuration "
            "(model, optimizer, robust method, data set). Nothing was deleted: move that directory aside "
            "to start afresh, or run with the configuration that wrote it (see config.json)."
        )

    def wait(self) -> None:
        """Blocks until every pending asynchronous save has been committed to disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _check_tree_matches(restored: Any, abstract_state: Any, step: int, directory: str) -> None:
    """Fails loudly when a restored tree differs in structure or shapes from the expected one."""
    expected = jax.tree_util.tree_structure(abstract_state)
    found = jax.tree_util.tree_structure(restored)
    if expected != found:
        raise CheckpointError(
            f"The checkpoint at step {step} in {directory} has another state structure than this run "
            f"expects (e.g. another robust method or optimizer). Expected {expected}, found {found}."
        )
    for path, want, got in zip(
        jax.tree_util.tree_leaves_with_path(abstract_state),
        jax.tree_util.tree_leaves(abstract_state),
        jax.tree_util.tree_leaves(restored),
    ):
        if tuple(want.shape) != tuple(got.shape):
            raise CheckpointError(
                f"The checkpoint at step {step} in {directory} holds {jax.tree_util.keystr(path[0])} with "
                f"shape {tuple(got.shape)}, this run expects {tuple(want.shape)} (another model or data set?)."
            )
