"""Fixtures shared by the experiment tests."""

import pytest

from hrrl_jax.data import registry


@pytest.fixture
def split_reads(monkeypatch):
    """(data set, split) of every base split read, through any loader."""
    reads = []
    for name, loader in list(registry._BASE_LOADERS.items()):

        def spy(split, data_dir, loader=loader, name=name):
            reads.append((name, split))
            return loader(split, data_dir)

        monkeypatch.setitem(registry._BASE_LOADERS, name, spy)
    return reads
