"""The settings' fingerprint: a readable record of a transform's settings as a uint8 array in its state.

Orbax saves a state's array leaves only, and the static settings are not among them; the fingerprint is, so a
checkpoint remembers the settings it was written with. It is ``digest;name=value;...`` in ASCII, zero-padded to
:data:`FINGERPRINT_BYTES`: the digest (of the whole text) tells whether two settings differ, the ``name=value``
pairs say how. Arrays of up to 8 entries are written out, longer ones as a digest of their contents; a schedule
as a digest of its values at the steps where it is checked. ``axis_name`` is left out: where the batch is reduced
is not part of the objective, so a single-device checkpoint resumes under ``shard_map`` and back.
"""

import hashlib
from typing import Any

import numpy as np

FINGERPRINT_BYTES = 512
FINGERPRINTED_FIELDS = (
    "concept_of_class",
    "concept_sizes",
    "prior",
    "divergence",
    "lam",
    "floor",
    "cost",
    "temperature",
    "example_level",
    "gamma",
    "example_temperature",
    "radius",
    "step_offset",
    "constant_step",
    "accumulate",
)
_DIGEST_CHARACTERS = 16
_LONGEST_WRITTEN_ARRAY = 8


def settings_fingerprint(settings: Any, schedule_values: dict[str, np.ndarray | None]) -> np.ndarray:
    """The uint8 ``[FINGERPRINT_BYTES]`` fingerprint of ``settings`` (a ``ReweightingSettings``).

    ``schedule_values`` holds, for ``lam``, ``gamma`` and ``example_temperature``, a schedule's values at the
    steps where it was checked (``None`` for a number).
    """
    pairs = []
    for name in FINGERPRINTED_FIELDS:
        value = getattr(settings, name)
        if callable(value):
            pairs.append(f"{name}=schedule:{_digest(np.asarray(schedule_values[name]).tobytes())}")
        else:
            pairs.append(f"{name}={_format(value)}")
    text = ";".join(pairs)
    encoded = f"{_digest(text.encode())};{text}".encode()[:FINGERPRINT_BYTES]
    fingerprint = np.zeros((FINGERPRINT_BYTES,), np.uint8)
    fingerprint[: len(encoded)] = np.frombuffer(encoded, np.uint8)
    return fingerprint


def mismatch_message(saved: np.ndarray, current: np.ndarray) -> str:
    """One line naming the settings that differ between a saved fingerprint and the transform's own."""
    saved_pairs, current_pairs = _decode(saved), _decode(current)
    differences = [
        f"{name} saved {saved_pairs.get(name, '?')}, this transform {current_pairs.get(name, '?')}"
        for name in FINGERPRINTED_FIELDS
        if saved_pairs.get(name) != current_pairs.get(name)
    ]
    if not differences:  # Same written pairs, different digests: the text was cut at FINGERPRINT_BYTES.
        differences = [f"settings digest saved {saved_pairs.get('digest')}, this transform {current_pairs['digest']}"]
    return (
        "the hierarchical_reweighting state was saved by a transform with other settings: "
        + "; ".join(differences)
        + ". Restore it into a transform built with the saved settings, or call "
        "robust.adopt_settings(opt_state) to keep its adversary under this transform's settings."
    )


def _decode(fingerprint: np.ndarray) -> dict[str, str]:
    """``{"digest": ..., name: value, ...}`` from a fingerprint; unreadable bytes give what can be read."""
    text = np.asarray(fingerprint, np.uint8).tobytes().rstrip(b"\0").decode("ascii", errors="replace")
    digest, _, rest = text.partition(";")
    pairs = dict(pair.split("=", 1) for pair in rest.split(";") if "=" in pair)
    return {"digest": digest, **pairs}


def _format(value: Any) -> str:
    if value is None or isinstance(value, str):
        return str(value)
    if isinstance(value, np.ndarray):
        if value.size <= _LONGEST_WRITTEN_ARRAY:
            return "[" + ",".join(format(float(entry), ".7g") for entry in value.ravel()) + "]"
        contents = np.ascontiguousarray(value).tobytes() + str(value.shape).encode()
        return f"sha256:{_digest(contents)}({value.size})"
    return format(float(value), ".7g")


def _digest(contents: bytes) -> str:
    return hashlib.sha256(contents).hexdigest()[:_DIGEST_CHARACTERS]
