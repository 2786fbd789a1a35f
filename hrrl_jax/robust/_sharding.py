"""Gathers a batch-sharded array onto every device when the mesh uses explicit sharding.

The reweighting compares every example of the global batch with every other one (class groups,
pairwise feature distances) and looks up per-class tables. Under ``jax.sharding.AxisType.Explicit``
axes such mixed shardings are a trace-time error, so the batch-sized inputs are made replicated first;
under ``Auto`` axes (or no mesh) XLA places the collectives itself and the input is returned unchanged.
"""

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
