"""Checks shared by the closed forms and the transform: positive hyperparameters, reading a value if concrete, and
``checkify`` checks that trace to the same program every time."""

import numbers
import threading
import zlib
from typing import Any

import jax
import numpy as np
from jax._src import checkify as checkify_internals
from jax.experimental import checkify

# Codes of the checks made here: [2**30, 2**31), far above jax's own counter, which starts at 1.
_CODE_BASE = 1 << 30
_code_swap = threading.Lock()


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


def debug_check(pred: Any, message: str, *fmt_args: Any) -> None:
    """``checkify.debug_check(pred, message, *fmt_args)`` whose error code is fixed by ``message``.

    jax before 0.11 numbers every check from a process-wide counter while tracing, and the number lands in the
    program as a constant even where ``checkify`` is off: the same step traced twice in one process became two
    programs, and the persistent compilation cache never hit. A code derived from the message keeps the program the
    same; newer jax (no counter) numbers checks itself and is called as is.
    """
    if not hasattr(checkify_internals, "next_code"):
        checkify.debug_check(pred, message, *fmt_args)
        return
    code = _CODE_BASE | (zlib.crc32(message.encode()) & (_CODE_BASE - 1))
    with _code_swap:  # Read and put back under the lock: a concurrent call must never keep another's stand-in.
        counter = checkify_internals.next_code
        checkify_internals.next_code = lambda: code
        try:
            checkify.debug_check(pred, message, *fmt_args)
        finally:
            checkify_internals.next_code = counter
