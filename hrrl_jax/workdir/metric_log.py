"""The metric streams of a work directory: `metrics.jsonl` (and `<prefix>_metrics.jsonl`), one JSON record a line.

On a disk a stream is one file, appended to. An object store cannot append, and rewriting a whole stream at every
log step would upload it again and again, so there a stream is written in parts: `metrics.part-<first step>.jsonl`,
each holding up to RECORDS_PER_PART records and rewritten whole as it fills (one upload of at most that many lines
per log step). Readers take the file, then the parts in order of their first step, so both layouts read alike.
"""

from __future__ import annotations

import json
import re
from typing import Any

from etils import epath

from hrrl_jax.workdir import storage

METRICS = "metrics.jsonl"
RECORDS_PER_PART = 200
_STREAM_FILE = re.compile(r"^(?P<stem>(?:\w+_)?metrics)(?:\.part-(?P<first_step>\d+))?\.jsonl$")


def metrics_filename(prefix: str) -> str:
    """`metrics.jsonl` for training, `<prefix>_metrics.jsonl` for any other stream (e.g. eval)."""
    return METRICS if prefix == "train" else f"{prefix}_{METRICS}"


def _stem(prefix: str) -> str:
    return metrics_filename(prefix).removesuffix(".jsonl")


def part_filename(prefix: str, first_step: int) -> str:
    """The name of the part of stream `prefix` that starts at `first_step` (zero-padded: names sort as steps)."""
    return f"{_stem(prefix)}.part-{first_step:012d}.jsonl"


class MetricLog:
    """Writes the records of one stream of the work directory `root`, in the layout its storage allows."""

    def __init__(self, root: epath.Path, prefix: str = "train") -> None:
        self._root = root
        self._prefix = prefix
        self._in_parts = storage.is_object_store(root)
        self._part_lines: list[str] = []
        self._part_first_step: int | None = None

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record) + "\n"
        if not self._in_parts:
            with open(self._root / metrics_filename(self._prefix), "a") as file:
                file.write(line)
            return
        if self._part_first_step is None or len(self._part_lines) >= RECORDS_PER_PART:
            self._part_first_step, self._part_lines = int(record["step"]), []
        self._part_lines.append(line)
        storage.write_text(self._root / part_filename(self._prefix, self._part_first_step), "".join(self._part_lines))


def _stream_files(root: epath.Path) -> dict[str, list[tuple[int, epath.Path]]]:
    """{stem: [(order, path), ...]} of every metric stream in `root`: the single file first (order -1), then parts."""
    streams: dict[str, list[tuple[int, epath.Path]]] = {}
    if not root.exists():
        return streams
    for path in root.iterdir():
        match = _STREAM_FILE.match(path.name)
        if match:
            first_step = match["first_step"]
            streams.setdefault(match["stem"], []).append((-1 if first_step is None else int(first_step), path))
    return {stem: sorted(files) for stem, files in streams.items()}


def _records(path: epath.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_records(root: epath.Path, prefix: str = "train") -> list[dict[str, Any]]:
    """The records of stream `prefix`, in order; empty if none were written."""
    files = _stream_files(root).get(_stem(prefix), [])
    return [record for _, path in files for record in _records(path)]


def truncate_records(root: epath.Path, after_step: int) -> None:
    """Drops the records of steps after `after_step` in every stream (files and parts rewritten or removed)."""
    for files in _stream_files(root).values():
        for _, path in files:
            records = _records(path)
            kept = [record for record in records if record.get("step", 0) <= after_step]
            if not kept and ".part-" in path.name:  # An empty part is removed; a file stays, empty.
                path.unlink()
            elif len(kept) != len(records):
                storage.write_text(path, "".join(json.dumps(record) + "\n" for record in kept))
