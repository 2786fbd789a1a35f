"""The package's layers import only the layers below them (checked in a fresh interpreter for each)."""

import json
import subprocess
import sys

import pytest

from tests.train.helpers import REPO_ROOT

PACKAGES = ("robust", "models", "data", "workdir", "train", "evaluate", "experiments")
# Module -> the project packages it must not load, directly or through what it imports.
FORBIDDEN = {
    "hrrl_jax.robust": {"models", "data", "workdir", "train", "evaluate", "experiments", "schema"},
    "hrrl_jax.models": {"robust", "data", "workdir", "train", "evaluate", "experiments"},
    "hrrl_jax.data": {"robust", "models", "workdir", "train", "evaluate", "experiments"},
    "hrrl_jax.mesh": set(PACKAGES),
    "hrrl_jax.workdir": {"robust", "models", "data", "train", "evaluate", "experiments"},
    "hrrl_jax.train.loop": {"evaluate", "experiments"},
    "hrrl_jax.evaluate": {"train", "experiments"},
    "hrrl_jax.evaluate.features": {"train", "experiments"},
    "hrrl_jax.features": {"train", "experiments"},
}
JAX_FREE = (
    "hrrl_jax.schema",
    "hrrl_jax.config_checks",
    "hrrl_jax.errors",
    "configs.base",
    "configs.default",
    "configs.compare_fashion_mnist",
)


def loaded_modules(module: str) -> list[str]:
    """Every module in sys.modules after importing `module` in a fresh interpreter."""
    script = f"import importlib, json, sys; importlib.import_module({module!r}); print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_a_layer_loads_nothing_from_the_layers_above_it(module):
    loaded = {name.split(".")[1] for name in loaded_modules(module) if name.startswith("hrrl_jax.")}
    assert not loaded & FORBIDDEN[module], f"{module} loads hrrl_jax.{sorted(loaded & FORBIDDEN[module])}"


@pytest.mark.parametrize("module", JAX_FREE)
def test_configs_and_the_schema_load_no_jax(module):
    heavy = {"jax", "flax", "optax", "orbax", "tensorflow_datasets", "numpy"}
    assert not {name.split(".")[0] for name in loaded_modules(module)} & heavy
