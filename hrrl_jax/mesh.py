"""The data-parallel device mesh: the batch is split over every device of every host, the state replicated."""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


class DataParallelMesh(NamedTuple):
    """The mesh, the sharding of a batch (split over the mesh) and that of the state (replicated)."""

    mesh: Mesh
    batch: NamedSharding
    replicated: NamedSharding


def data_parallel_mesh(devices: list[jax.Device] | None = None) -> DataParallelMesh:
    """A 1-D mesh over `devices` (default: all, across hosts) with the batch and replicated shardings.

    The mesh is built directly from `jax.sharding.Mesh` so its axis is of the automatic (GSPMD) kind on
    every jax version: `jax.make_mesh` switched its default to explicit axes.
    """
    mesh = Mesh(np.asarray(devices if devices is not None else jax.devices()), (DATA_AXIS,))
    return DataParallelMesh(mesh, NamedSharding(mesh, PartitionSpec(DATA_AXIS)), NamedSharding(mesh, PartitionSpec()))
