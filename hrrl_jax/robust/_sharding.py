"""The global batch wherever the reweighting runs: under ``jit`` with sharded arrays, or per device under
``shard_map``/``pmap`` with an ``axis_name``.

The reweighting compares every example of the global batch with every other one (class groups,
pairwise feature distances) and looks up per-class tables. Under ``jax.sharding.AxisType.Explicit``
axes such mixed shardings are a trace-time error, so the batch-sized inputs are made replicated first;
under ``Auto`` axes (or no mesh) XLA places the collectives itself and the input is returned unchanged.
Inside ``shard_map``/``pmap`` each device holds its own slice of the batch: :func:`gather_batch` concatenates the
slices in device order and :func:`local_part` takes a device's slice back.
"""

from typing import Any

import jax
from jax.sharding import AxisType, PartitionSpec


def replicated(x: jax.Array) -> jax.Array:
    """Returns ``x`` resharded to be fully replicated if its sharding names explicit mesh axes."""
    sharding = jax.typeof(x).sharding
    has_explicit_axes = any(axis_type == AxisType.Explicit for axis_type in sharding.mesh.axis_types)
    is_sharded = any(entry is not None for entry in sharding.spec)
    if not (has_explicit_axes and is_sharded):
        return x
    return jax.sharding.reshard(x, sharding.update(spec=PartitionSpec()))


def gather_batch(x: jax.Array, axis_name: Any) -> jax.Array:
    """The global batch ``[m, ...]`` from each device's slice ``[m / n, ...]`` along ``axis_name`` (device order)."""
    return jax.lax.all_gather(x, axis_name, axis=0, tiled=True)


def local_part(x: jax.Array, axis_name: Any, local_size: int) -> jax.Array:
    """This device's ``local_size`` rows of a global-batch array built by :func:`gather_batch`."""
    start = jax.lax.axis_index(axis_name) * local_size
    return jax.lax.dynamic_slice_in_dim(x, start, local_size, axis=0)
