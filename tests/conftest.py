"""Test set-up: 8 fake CPU devices for the sharding tests and a shared compilation cache, set before jax loads."""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests build the same tiny models many times (in-process and in launch.py subprocesses): compile them once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "hrrl_jax_test_xla_cache"))
