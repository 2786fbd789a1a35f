"""The data-parallel device mesh: the batch is split over every device of every host, the state replicated."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_parallel_mesh(
    devices: list[jax.Device] | None = None,
) -> tuple[Mesh, NamedSharding, NamedSharding]:
    """A 1-D mesh over `devices` (default: all, across hosts) with the batch and replicated shardings.

    The mesh is built directly from `jax.sharding.Mesh` so its axis is of the automatic (GSPMD) kind on
    every jax version: `jax.make_mesh` switched its default to explicit axes.
    """
    mesh = Mesh(np.asarray(devices if devices is not None else jax.devices()), (DATA_AXIS,))
    return mesh, NamedSharding(mesh, PartitionSpec(DATA_AXIS)), NamedSharding(mesh, PartitionSpec())
