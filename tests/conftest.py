"""Test set-up: 8 fake CPU devices for the sharding tests and a shared compilation cache, set before jax loads."""

import os
import tempfile

# The tests' tiny models spend far more time compiling than running, so they compile without LLVM's optimisations
# (tests/train/test_accumulation.py: 296 s of CPU with them, 139 s without); the XLA program (HLO) is the same, only
# the CPU code generated for it differs. The subprocess tests pass these flags on. XLA's older fusion emitters
# (jaxlib 0.10's --xla_cpu_use_fusion_emitters=false) compiled the tiny train steps 2.4 to 3.1 x faster but are not
# usable: their executables, read back from the compilation cache into a process that has read others, deadlocked
# the 8 devices' all-reduces (half the devices waited at one collective, half at another, until XLA aborted).
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
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
