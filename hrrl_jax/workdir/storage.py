"""Every file of a run goes through `etils.epath`: a local directory or an object store (`gs://`, `s3://`) alike.

Object stores differ from a disk in three ways the work directory relies on, handled here and in its users:

* no append: a metric stream is written in parts (`hrrl_jax.workdir.layout`), never appended to;
* no rename: an object appears whole once its upload completes, so a file is written directly, while on a disk it
  is written to a temporary file and renamed over the old one (a reader never sees half a file either way);
* no flock: the lock is an object with a heartbeat (`hrrl_jax.workdir.lock`).
"""

from __future__ import annotations

import os

from etils import epath

from hrrl_jax.errors import UserError

# The URL schemes of the object stores epath reaches through fsspec, with the fsspec package each one needs.
OBJECT_STORE_PACKAGES = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs"}


class StorageBackendError(UserError, ImportError):
    """A `--workdir` URL whose storage needs a package that is not installed."""


def as_path(location: str | os.PathLike) -> epath.Path:
    """`location` as an epath.Path: a URL as given, a local path made absolute."""
    text = os.fspath(location)
    return epath.Path(text if is_object_store(text) else os.path.abspath(text))


def is_object_store(location: str | os.PathLike) -> bool:
    """Whether `location` is an object store URL (`gs://...`): no append, no rename, no flock."""
    return "://" in os.fspath(location)


def check_backend(location: str | os.PathLike) -> None:
    """Raises StorageBackendError in one line when the object store of `location` has no fsspec driver here."""
    text = os.fspath(location)
    if not is_object_store(text):
        return
    scheme = text.split("://", 1)[0]
    if scheme not in OBJECT_STORE_PACKAGES:
        supported = ", ".join(f"{name}://" for name in OBJECT_STORE_PACKAGES)
        raise StorageBackendError(f"--workdir {text}: {scheme}:// is not supported; give a local path or {supported}.")
    import fsspec

    try:
        fsspec.get_filesystem_class("gcs" if scheme == "gs" else scheme)
    except ImportError:
        package = OBJECT_STORE_PACKAGES[scheme]
        raise StorageBackendError(
            f"--workdir {text} needs the {package} package to reach {scheme}:// (pip install {package})."
        ) from None


def write_text(path: epath.Path, text: str) -> None:
    """Writes `path` so that a reader sees the old content or the new, never half of it.

    On a disk: a temporary file, flushed to the device, renamed over `path`. On an object store: the object itself
    (an upload becomes visible only once complete; a rename there would be a copy and a delete).
    """
    write_bytes(path, text.encode())


def write_bytes(path: epath.Path, data: bytes) -> None:
    """Writes binary `path` whole, as `write_text` does text."""
    if is_object_store(path):
        path.write_bytes(data)
        return
    temporary = path.parent / (path.name + ".tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def read_text_or_none(path: epath.Path) -> str | None:
    """The text of `path`, or None when it does not exist."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
