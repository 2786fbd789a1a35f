"""The positive-hyperparameter check shared by the closed forms and the transform's settings."""

import numbers
from typing import Any

import jax


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
