"""A run's work directory: its layout, the record of its configurations, its lock and its Orbax checkpoints."""

from hrrl_jax.workdir.checkpoints import Checkpointer, CheckpointError, CheckpointSaveError
from hrrl_jax.workdir.layout import WorkDir, WorkDirError
from hrrl_jax.workdir.lock import ObjectStoreLock, WorkDirInUseError, WorkDirLock, workdir_lock

__all__ = [
    "CheckpointError",
    "CheckpointSaveError",
    "Checkpointer",
    "ObjectStoreLock",
    "WorkDir",
    "WorkDirError",
    "WorkDirInUseError",
    "WorkDirLock",
    "workdir_lock",
]
