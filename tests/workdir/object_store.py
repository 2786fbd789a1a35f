"""An offline object store for the tests: `gs://` URLs through epath's real fsspec code path, kept in a local folder.

`fake_bucket(root)` registers, for the `gs`/`gcs` protocols, an fsspec filesystem that stores each object as a file
under `root` and, like a bucket, refuses to append to an object. epath reaches it exactly as it reaches gcsfs in
production. Orbax writes array data with TensorStore's own GCS driver and asks the bucket's layout from the GCS
client, neither of which can run offline: those two network calls are pointed at the same folder, everything else
Orbax does (its step folders, commit markers, metadata) goes through epath and so through this filesystem.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from typing import Iterator

from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

SCHEMES = ("gs://", "gcs://")


class AppendRefused(NotImplementedError):
    """Raised where code tries to append to an object, which a bucket cannot do."""


class FakeBucketFileSystem(DirFileSystem):
    """A `gs://` filesystem whose objects are the files under `root`; appending is refused, as in a bucket."""

    protocol = ("gs", "gcs")
    root: str = ""
    cachable = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(path=type(self).root, fs=LocalFileSystem(auto_mkdir=True))  # No folders in a bucket.

    @property
    def path(self) -> str:
        """The folder of the current test (epath caches one filesystem instance for the whole session)."""
        return type(self).root

    @path.setter
    def path(self, value: str) -> None:
        pass

    @classmethod
    def _strip_protocol(cls, path):
        path = os.fspath(path)
        for scheme in SCHEMES:
            if path.startswith(scheme):
                return path[len(scheme) :]
        return path

    def _join(self, path):
        if isinstance(path, (list, tuple)):
            return super()._join([self._strip_protocol(part) for part in path])
        return super()._join(self._strip_protocol(path))

    def open(self, path, mode="rb", *args, **kwargs):
        if "a" in mode or "+" in mode:
            raise AppendRefused(f"an object store cannot append: open({path!r}, {mode!r})")
        return super().open(path, mode, *args, **kwargs)


@contextlib.contextmanager
def fake_bucket(root: str, monkeypatch) -> Iterator[str]:
    """Serves `gs://` from `root` for the duration; yields `root`."""
    from orbax.checkpoint._src.path import gcs_utils

    FakeBucketFileSystem.root = root
    registry = importlib.import_module("fsspec.registry")._registry
    for name in ("gs", "gcs"):  # Undone by monkeypatch: outside the test, gs:// is as unavailable as before.
        monkeypatch.setitem(registry, name, FakeBucketFileSystem)
    monkeypatch.setattr(
        gcs_utils, "get_kvstore_for_gcs", lambda path: {"driver": "file", "path": os.path.join(root, path[5:])}
    )
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
    yield root
