"""A batch's per-example concepts: the class -> concept map applied to the labels, or groups given per example.

An id outside its range is never clamped. Where the ids are concrete (outside ``jit``, or constants) it raises
``ValueError`` naming the value and the fix. Under ``jit`` it is a ``checkify`` check, enabled by wrapping the step
in ``checkify.checkify(step, errors=checkify.user_checks)``; unchecked, the example maps to concept
:data:`OUT_OF_RANGE`, which the weights give 0 and the estimate leaves out, and the transform skips the update.
"""

from typing import Any

import jax
import jax.numpy as jnp

from hrrl_jax.robust._checks import concrete_value, debug_check
from hrrl_jax.robust._sharding import replicated

OUT_OF_RANGE = -1


def per_example_concepts(
    concept_of_class: Any, num_concepts: int, labels: Any, groups: Any, *, axis_name: Any = None
) -> tuple[jax.Array, jax.Array]:
    """Each example's concept: ``concept_of_class[labels]``, or ``groups`` when ``concept_of_class`` is ``None``.

    Returns:
      int32 ``[m]`` concept ids, :data:`OUT_OF_RANGE` where the example's id is out of range; and a bool scalar,
      whether every id of the batch (of every device along ``axis_name``, if given) is in range.
    """
    if concept_of_class is None:
        ids, name, size = groups, "groups", num_concepts
        fix = (
            f"concept_sizes has {num_concepts} entries, one per group: give every example a group id in "
            f"[0, {num_concepts}) and every group its size."
        )
    else:
        ids, name, size = labels, "labels", len(concept_of_class)
        fix = (
            f"concept_of_class maps {size} classes: give it one entry per class (the largest label + 1), "
            "or drop the examples whose label is out of range."
        )
    in_range = ids_in_range(ids, size, name=name, fix=fix)
    ids = replicated(jnp.asarray(ids))
    safe_ids = jnp.where(in_range, ids, 0)
    concept = safe_ids if concept_of_class is None else jnp.asarray(concept_of_class)[safe_ids]
    concept = jnp.where(in_range, concept, OUT_OF_RANGE).astype(jnp.int32)
    out_of_range = jnp.sum(~in_range)
    if axis_name is not None:
        out_of_range = jax.lax.psum(out_of_range, axis_name)
    return concept, out_of_range == 0


def ids_in_range(ids: Any, size: int, *, name: str, fix: str) -> jax.Array:
    """Bool ``[m]``: which of the integer ``ids`` lie in ``[0, size)``; raises or checks (see the module) if not all.

    The message is one line: ``{name} contains {value} outside [0, {size}): {fix}``.
    """
    concrete = concrete_value(ids)
    ids = replicated(jnp.asarray(ids))
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(f"{name} must be integer ids, got dtype {ids.dtype}; pass them as an int32 array.")
    if concrete is not None:
        outside = (concrete < 0) | (concrete >= size)
        if outside.any():
            raise ValueError(f"{name} contains {concrete[outside].flat[0]} outside [0, {size}): {fix}")
    in_range = (ids >= 0) & (ids < size)
    if concrete is None:
        first_outside = ids.ravel()[jnp.argmin(in_range.ravel())]
        debug_check(jnp.all(in_range), f"{name} contains {{}} outside [0, {size}): {fix}", first_outside)
    return in_range
