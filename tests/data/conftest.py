"""Shared fixtures of the data tests: one Fashion-MNIST array_record preparation per test run."""

import fcntl
import os

import pytest

from hrrl_jax.data import fashion_mnist


@pytest.fixture(scope="session")
def fashion_mnist_data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A TFDS data_dir with fashion_mnist_local prepared from Debian's files (about 20-40 s), once per test run."""
    if not os.path.isdir(fashion_mnist.DEFAULT_MANUAL_DIR):
        pytest.skip(
            f"{fashion_mnist.DEFAULT_MANUAL_DIR} is absent: "
            "apt-get install dataset-fashion-mnist to run the Fashion-MNIST tests"
        )
    # One preparation for every pytest-xdist worker: the first takes the lock and prepares in the run's shared
    # temporary directory (the parent of each worker's own), the others wait for it and find it prepared.
    shared = tmp_path_factory.getbasetemp().parent if os.environ.get("PYTEST_XDIST_WORKER") else None
    data_dir = str(shared / "fashion_mnist_tfds") if shared else str(tmp_path_factory.mktemp("tfds"))
    with open(f"{data_dir}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fashion_mnist.prepared_builder(data_dir)
    return data_dir
