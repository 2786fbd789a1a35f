"""`config.init_from`: a fresh run whose model starts from another run's checkpoint (robust fine-tuning).

Only the model's variables (`params` and `batch_stats`) are taken; the optimizer state, the adversary in it, the
step and the RNG key stay those of a fresh run. The checkpoint is digest-verified as every restore is, and each
array is checked against the model's shape. A model with the auxiliary BatchNorm (`bn_aux`) may start from a
checkpoint without one: each `bn_aux` array starts as a copy of its sibling `bn`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from etils import epath

from hrrl_jax.errors import ConfigError
from hrrl_jax.train.input_level import AUXILIARY_BATCH_NORM
from hrrl_jax.train.state import TrainState
from hrrl_jax.workdir import Checkpointer, WorkDir, storage
from hrrl_jax.workdir.digest import leaf_path

MODEL_VARIABLES = ("params", "batch_stats")
MAIN_BATCH_NORM = "bn"


def checkpoint_of(init_from: str) -> tuple[epath.Path, int]:
    """(checkpoints directory, step) named by `config.init_from`: a work directory (its newest checkpoint) or a
    checkpoint folder `WORKDIR/checkpoints/STEP`; a one-line ConfigError when it is neither."""
    location = storage.as_path(init_from)
    directory = WorkDir(init_from)
    if directory.checkpoints.is_dir():
        step = directory.latest_checkpoint_step()
        if step is None:
            raise ConfigError(
                f"config.init_from={init_from!r}: the work directory has no checkpoint in {directory.checkpoints}; "
                "train that run first, or give a checkpoint folder WORKDIR/checkpoints/STEP."
            )
        return directory.checkpoints, step
    if location.name.isdigit() and location.is_dir():
        return location.parent, int(location.name)
    raise ConfigError(
        f"config.init_from={init_from!r}: is neither a work directory with checkpoints nor a checkpoint folder "
        "WORKDIR/checkpoints/STEP; give one of them."
    )


def initialise_from(
    state: TrainState, init_from: str, *, report: Callable[[str], None] = lambda line: print(line, flush=True)
) -> tuple[TrainState, str]:
    """`state` with its `params` and `batch_stats` replaced by those of the checkpoint `init_from` names, and that
    checkpoint's folder (`.../checkpoints/STEP`).

    Raises:
        CheckpointError: the checkpoint is corrupt (`... : config.init_from was not used.`).
        ConfigError: the checkpoint holds another model (the first differing array, with both shapes).
    """
    directory, step = checkpoint_of(init_from)
    replicated = jax.tree_util.tree_leaves(state.params)[0].sharding
    checkpointer = Checkpointer(directory, asynchronous=False)
    try:
        saved = checkpointer.restore_saved_variables(
            step, MODEL_VARIABLES, replicated, refusal="config.init_from was not used"
        )
    finally:
        checkpointer.close()
    where = f"config.init_from={init_from!r}: the checkpoint at step {step} in {directory}"
    saved_by_path = {
        leaf_path(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(saved, is_leaf=_is_array)
    }
    copied: list[str] = []

    def take(path: tuple, expected: jax.Array) -> jax.Array:
        name = leaf_path(path)
        found = saved_by_path.get(name)
        if found is None and AUXILIARY_BATCH_NORM in name.split("/"):
            sibling = "/".join(MAIN_BATCH_NORM if part == AUXILIARY_BATCH_NORM else part for part in name.split("/"))
            found = saved_by_path.get(sibling)
            copied.append(name)
        if found is None:
            raise ConfigError(
                f"{where} holds no {name} (shape none), this model expects {tuple(expected.shape)}: it was trained "
                "with another model; give a checkpoint of the same config.model and config.dataset."
            )
        if tuple(found.shape) != tuple(expected.shape):
            raise ConfigError(
                f"{where} holds {name} with shape {tuple(found.shape)}, this model expects {tuple(expected.shape)}: "
                "it was trained with another model or data set; give a checkpoint of the same config.model and "
                "config.dataset."
            )
        return jax.device_put(jnp.asarray(found, expected.dtype), expected.sharding)

    expected = {"params": state.params, "batch_stats": state.batch_stats}
    variables = jax.tree_util.tree_map_with_path(take, expected)
    used = {leaf_path(path) for path, _ in jax.tree_util.tree_leaves_with_path(expected)}
    unused = sorted(set(saved_by_path) - used)
    if unused:
        raise ConfigError(
            f"{where} holds {unused[0]} with shape {tuple(saved_by_path[unused[0]].shape)}, which this model lacks "
            "(shape none): it was trained with another model; give a checkpoint of the same config.model and "
            "config.robust.input_batch_norm."
        )
    if copied:
        report(
            f"The checkpoint at step {step} in {directory} has no auxiliary BatchNorm ({AUXILIARY_BATCH_NORM}): its "
            f"{len(copied)} arrays start as copies of the main BatchNorm's."
        )
    report(
        f"Initialised the model from the checkpoint at step {step} in {directory} (config.init_from); the optimizer "
        "and the adversary start afresh."
    )
    return state.replace(params=variables["params"], batch_stats=variables["batch_stats"]), str(directory / str(step))


def _is_array(node: Any) -> bool:
    return hasattr(node, "shape")
