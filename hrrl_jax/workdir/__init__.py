"""A run's work directory: its layout, the record of its configurations and its Orbax checkpoints."""

from hrrl_jax.workdir.checkpoints import Checkpointer, CheckpointError
from hrrl_jax.workdir.layout import WorkDir

__all__ = ["CheckpointError", "Checkpointer", "WorkDir"]
