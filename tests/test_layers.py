"""The package's layers import only the layers below them (checked in a process that has loaded no project module
before), and the configs and the schema load no JAX (checked in a fresh interpreter)."""

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


# The third-party libraries the layers use, imported once by the parent that forks one child per checked module:
# none of them imports hrrl_jax, so what a child loads of hrrl_jax is what a fresh interpreter would load, and each
# check takes a fraction of a second instead of a new interpreter's imports (seconds each).
THIRD_PARTY = ("absl", "flax", "grain", "jax", "ml_collections", "numpy", "optax", "orbax.checkpoint", "PIL",
               "tensorflow_datasets")  # fmt: skip
_FORKED_IMPORTS = """
import importlib, json, os, sys
for name in {third_party!r}:
    importlib.import_module(name)
loaded = {{}}
for module in {modules!r}:
    read_end, write_end = os.pipe()
    if os.fork() == 0:
        os.close(read_end)
        importlib.import_module(module)
        with os.fdopen(write_end, "w") as pipe:  # A file's write loops: one os.write may stop at 64 KiB.
            pipe.write(json.dumps(sorted(sys.modules)))
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        loaded[module] = json.loads(pipe.read())
    _, status = os.wait()
    assert status == 0, (module, status)
print(json.dumps(loaded))
"""


@pytest.fixture(scope="module")
def project_packages_loaded_by() -> dict[str, set[str]]:
    """Module -> the project packages (robust, models, ...) that importing it loads, each import in a process
    that has loaded no project module before."""
    script = _FORKED_IMPORTS.format(third_party=THIRD_PARTY, modules=sorted(FORBIDDEN))
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    return {
        module: {name.split(".")[1] for name in names if name.startswith("hrrl_jax.")}
        for module, names in loaded.items()
    }


def loaded_modules(module: str) -> list[str]:
    """Every module in sys.modules after importing `module` in a fresh interpreter."""
    script = f"import importlib, json, sys; importlib.import_module({module!r}); print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_a_layer_loads_nothing_from_the_layers_above_it(module, project_packages_loaded_by):
    loaded = project_packages_loaded_by[module]
    assert loaded, f"importing {module} loaded no project package: the check saw nothing"
    assert not loaded & FORBIDDEN[module], f"{module} loads hrrl_jax.{sorted(loaded & FORBIDDEN[module])}"


@pytest.mark.parametrize("module", JAX_FREE)
def test_configs_and_the_schema_load_no_jax(module):
    heavy = {"jax", "flax", "optax", "orbax", "tensorflow_datasets", "numpy"}
    assert not {name.split(".")[0] for name in loaded_modules(module)} & heavy
