"""Checks shared by the closed forms and the transform: positive hyperparameters, and reading a value if concrete."""

import numbers
from typing import Any

import jax
import numpy as np


def check_positive(name: str, value: Any, *, allow_arrays: bool = False) -> None:
    """Raises ``ValueError`` naming ``name`` and the value seen unless ``value > 0`` (``inf`` allowed).

    By default ``value`` must be a Python or numpy real number (not a bool), as for the transform's static
    settings. With ``allow_arrays=True`` (hyperparameters that may be traced, e.g. under ``jit`` or ``vmap``)
    anything ``float()`` accepts is checked and a traced or multi-element array is passed unchecked.
    """
    if allow_arrays:
        try:
            concrete = float(value)
        except (TypeError, jax.errors.ConcretizationTypeError):
            return
        if not concrete > 0:
            raise ValueError(f"{name} must be > 0 (inf allowed), got {value!r}.")
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{name} must be a number > 0 (inf allowed), got {value!r}.")


def concrete_value(value: Any) -> np.ndarray | None:
    """``value`` as a numpy array where it is known now (not traced or abstract), else ``None``.

    An array spread over devices of several processes is read from this process's copy when it is replicated,
    and counts as unknown otherwise (no process can read all of it).
    """
    if isinstance(value, jax.core.Tracer | jax.ShapeDtypeStruct):
        return None
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        return np.asarray(value.addressable_data(0)) if value.is_fully_replicated else None
    return np.asarray(value)
