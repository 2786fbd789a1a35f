"""Shared fixtures of the data tests: one Fashion-MNIST array_record preparation per test session."""

import os

import pytest

from hrrl_jax.data import fashion_mnist


@pytest.fixture(scope="session")
def fashion_mnist_data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A TFDS data_dir with fashion_mnist_local prepared from Debian's files (about 20-40 s)."""
    if not os.path.isdir(fashion_mnist.DEFAULT_MANUAL_DIR):
        pytest.skip(
            f"{fashion_mnist.DEFAULT_MANUAL_DIR} is absent: "
            "apt-get install dataset-fashion-mnist to run the Fashion-MNIST tests"
        )
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    fashion_mnist.prepared_builder(data_dir)
    return data_dir
