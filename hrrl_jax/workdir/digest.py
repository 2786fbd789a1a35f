"""SHA-256 digests of a checkpoint's array data, so that a restore can prove it read back what was saved.

Orbax does not checksum array data: bytes flipped on disk can decode into other numbers without an error. A digest
is taken of the values this process holds when a save starts (each distinct shard of every leaf, with its path,
index, dtype and shape), written beside the checkpoint once the save has committed, and compared with the same
digest of the restored values. Each process digests the shards it can address, so under multi-host every
process writes and checks its own file.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import numpy as np

from hrrl_jax.workdir import storage

DIGEST_ALGORITHM = "sha256"


def digest_filename(process_index: int) -> str:
    """The digest file of one process inside a checkpoint's step directory."""
    return f"digest.process_{process_index}.json"


def _normalised_index(index: tuple[slice, ...]) -> tuple[tuple[Any, Any, Any], ...]:
    return tuple((part.start, part.stop, part.step) for part in index)


def leaf_path(path: tuple) -> str:
    """A leaf's path as "a/b/0/c", the same whether a level is a dataclass, named tuple, dict or list (a restore
    from Orbax's own metadata gives dicts where the train state has dataclasses and named tuples)."""
    return "/".join(str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key)))) for key in path)


def local_shards(tree: Any) -> list[tuple[str, list[tuple[tuple, np.ndarray]]]]:
    """Host copies of the distinct shards this process holds, per leaf, sorted by `leaf_path`:
    [(path, [(index, array), ...]), ...]. Replicated leaves hold one shard per device with the same index: it is
    copied once.
    """
    leaves = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        shards: dict[tuple, np.ndarray] = {}
        if isinstance(leaf, jax.Array):
            for shard in leaf.addressable_shards:
                index = _normalised_index(shard.index)
                if index not in shards:
                    shards[index] = np.asarray(shard.data)
        else:
            array = np.asarray(leaf)
            shards[_normalised_index(tuple(slice(None) for _ in array.shape))] = array
        leaves.append((leaf_path(path), sorted(shards.items(), key=lambda item: repr(item[0]))))
    return sorted(leaves, key=lambda leaf: leaf[0])


def digest_of_shards(leaves: list[tuple[str, list[tuple[tuple, np.ndarray]]]]) -> str:
    """The hex SHA-256 of `local_shards`' output: paths, indices, dtypes, shapes and bytes, in order."""
    digest = hashlib.new(DIGEST_ALGORITHM)
    for path, shards in leaves:
        for index, array in shards:
            digest.update(repr((path, index, array.dtype.str, array.shape)).encode())
            digest.update(np.ascontiguousarray(array).view(np.uint8).reshape(-1))
    return digest.hexdigest()


def tree_digest(tree: Any) -> str:
    """The digest of the array data this process holds of `tree`."""
    return digest_of_shards(local_shards(tree))


def write_digest(step_directory: str | os.PathLike, process_index: int, digest: str) -> None:
    """Writes the digest file of `process_index` into a committed step directory, whole (`storage.write_text`)."""
    path = storage.as_path(step_directory) / digest_filename(process_index)
    storage.write_text(path, json.dumps({"algorithm": DIGEST_ALGORITHM, "digest": digest}))


def read_digest(step_directory: str | os.PathLike, process_index: int) -> str | None:
    """The saved digest of `process_index`, or None when the checkpoint has none (saved before digests existed)."""
    path = storage.as_path(step_directory) / digest_filename(process_index)
    text = storage.read_text_or_none(path)
    if text is None:
        return None
    record = json.loads(text)
    if record.get("algorithm") != DIGEST_ALGORITHM or not isinstance(record.get("digest"), str):
        raise ValueError(f"{path} is not a digest file of this version")
    return record["digest"]
