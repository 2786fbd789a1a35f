"""Test set-up: 8 fake CPU devices for the sharding tests and a shared compilation cache, set before jax loads."""

import os
import tempfile
from importlib import metadata

from packaging.version import Version

# The tests' tiny models spend far more time compiling than running, so they compile cheaply; the XLA program (HLO)
# is the same, only the CPU code generated for it differs. LLVM's optimisations are off
# (tests/train/test_accumulation.py: 296 s of CPU with them, 139 s without), and fusions are emitted by XLA's older
# LLVM emitters instead of the MLIR fusion emitters (the tiny HRRL train step on 8 devices compiles in 2.6 s of CPU
# instead of 8.1, ERM's in 1.8 instead of 5.5; the whole suite took 16 min 22 s instead of 20 min 10 s). The
# subprocess tests pass these flags on. jaxlib 0.11 and later keep only the fusion emitters and reject the flag.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
if Version(metadata.version("jaxlib")) < Version("0.11"):
    TEST_XLA_FLAGS += " --xla_cpu_use_fusion_emitters=false"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests build the same tiny models many times (in-process and in launch.py subprocesses): compile each once, however
# short its compilation (jax caches only compilations of at least 1 s by default).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "hrrl_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def pytest_collection_modifyitems(items):
    """The `slow` tests (clusters, end-to-end experiments, minutes each) first, in their collected order: pytest-xdist
    hands out tests in this order, so the short ones fill the workers' gaps at the end instead of one worker running
    the last long test alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
