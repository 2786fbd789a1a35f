"""The shared positive-hyperparameter check: strict numbers for settings, concrete arrays for the closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrrl_jax.robust._checks import check_positive


def test_strict_form_accepts_positive_numbers_and_rejects_the_rest():
    for value in (0.5, 3, np.float32(2.0), float("inf")):
        check_positive("lam", value)
    for value in (0.0, -1, True, "1.0", jnp.float32(1.0), float("nan")):
        with pytest.raises(ValueError, match=r"lam must be a number > 0 \(inf allowed\), got "):
            check_positive("lam", value)


def test_array_form_checks_concrete_values_and_skips_traced_ones():
    check_positive("temperature", jnp.float32(0.1), allow_arrays=True)
    with pytest.raises(ValueError, match=r"temperature must be > 0 \(inf allowed\), got "):
        check_positive("temperature", jnp.float32(0.0), allow_arrays=True)
    checked = jax.jit(lambda t: check_positive("temperature", t, allow_arrays=True) or t)(-1.0)
    assert float(checked) == -1.0
