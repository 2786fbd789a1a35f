"""Metric outputs a user can watch: `metrics.jsonl`, TensorBoard event files and a console progress bar."""

from __future__ import annotations

import io
import os
import time
from typing import Any, Mapping

import numpy as np
import tqdm
from etils import epath
from tensorboardX import SummaryWriter, record_writer

from hrrl_jax.workdir import storage
from hrrl_jax.workdir.layout import WorkDir
from hrrl_jax.workdir.metric_log import MetricLog


def to_python(value: Any) -> Any:
    """Host values as JSON-friendly Python: scalars as float/int, vectors as lists."""
    array = np.asarray(value)
    if array.ndim == 0:
        return array.item()
    return array.tolist()


class MetricWriter:
    """Writes one JSON object per log step to `metrics.jsonl` (`<prefix>_metrics.jsonl` for other prefixes
    than "train", e.g. eval; in parts on an object store, `hrrl_jax.workdir.metric_log`) and mirrors the scalars to
    TensorBoard under `<prefix>/`.

    Vector metrics (the concept distribution p) go to the JSON line as lists and to TensorBoard as one
    scalar per entry, named with `vector_names` where given (e.g. concept names).
    """

    def __init__(self, workdir: WorkDir, *, vector_names: Mapping[str, list[str]] | None = None):
        self._workdir = workdir
        self._logs: dict[str, MetricLog] = {}
        if workdir.is_object_store:
            record_writer.register_writer_factory(workdir.path.split("://", 1)[0], _ObjectEventFileFactory())
        self._tensorboard = SummaryWriter(os.fspath(workdir.tensorboard))
        self._tensorboard.flush()  # The event file's header, now: nothing is left to fail at exit on a full disk.
        self._vector_names = dict(vector_names or {})

    def write(self, step: int, metrics: Mapping[str, Any], *, prefix: str = "train") -> dict[str, Any]:
        record = {"step": int(step), **{name: to_python(value) for name, value in metrics.items()}}
        if prefix not in self._logs:
            self._logs[prefix] = MetricLog(self._workdir.root, prefix)
        self._logs[prefix].append(record)
        for name, value in record.items():
            if name == "step":
                continue
            if isinstance(value, list):
                labels = self._vector_names.get(name, [str(index) for index in range(len(value))])
                for label, entry in zip(labels, value):
                    self._tensorboard.add_scalar(f"{prefix}/{name}/{label}", entry, step)
            else:
                self._tensorboard.add_scalar(f"{prefix}/{name}", value, step)
        self._tensorboard.flush()
        return record

    def close(self) -> None:
        self._tensorboard.close()


class _ObjectEventFile:
    """A TensorBoard event file on an object store (which cannot append): the events are kept in memory and the
    whole file is uploaded at most every `upload_interval_seconds` on a flush, and on close."""

    def __init__(self, path: str, upload_interval_seconds: float = 30.0) -> None:
        self._path = epath.Path(path)
        self._buffer = io.BytesIO()
        self._interval = upload_interval_seconds
        self._uploaded_at: float | None = None
        self._uploaded_size = 0

    def write(self, data: bytes) -> None:
        self._buffer.write(data)

    def flush(self) -> None:
        if self._uploaded_at is None or time.monotonic() - self._uploaded_at >= self._interval:
            self._upload()

    def _upload(self) -> None:
        if self._uploaded_at is not None and self._buffer.tell() == self._uploaded_size:
            return
        storage.write_bytes(self._path, self._buffer.getvalue())
        self._uploaded_at, self._uploaded_size = time.monotonic(), self._buffer.tell()

    def close(self) -> None:
        self._upload()


class _ObjectEventFileFactory:
    """tensorboardX's hook for event files at a URL: objects written through epath (`_ObjectEventFile`)."""

    def open(self, path: str) -> _ObjectEventFile:
        return _ObjectEventFile(path)

    def directory_check(self, path: str) -> None:
        """An object store needs no folder before its objects."""


class ProgressBar:
    """A console progress bar over training steps that shows the latest loss and accuracy."""

    def __init__(self, *, start_step: int, total_steps: int, enabled: bool = True):
        self._bar = tqdm.tqdm(
            total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, disable=not enabled
        )

    def update(self, steps: int, record: Mapping[str, Any] | None = None) -> None:
        self._bar.update(steps)
        if record is not None:
            self._bar.set_postfix(loss=f"{record['loss']:.4f}", accuracy=f"{record['accuracy']:.3f}", refresh=False)

    def close(self) -> None:
        self._bar.close()
