"""Metric outputs a user can watch: `metrics.jsonl`, TensorBoard event files and a console progress bar."""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np
import tqdm
from tensorboardX import SummaryWriter

from hrrl_jax.workdir.layout import WorkDir, metrics_filename


def to_python(value: Any) -> Any:
    """Host values as JSON-friendly Python: scalars as float/int, vectors as lists."""
    array = np.asarray(value)
    if array.ndim == 0:
        return array.item()
    return array.tolist()


class MetricWriter:
    """Appends one JSON object per log step to `metrics.jsonl` (`<prefix>_metrics.jsonl` for other prefixes
    than "train", e.g. eval) and mirrors the scalars to TensorBoard under `<prefix>/`.

    Vector metrics (the concept distribution p) go to the JSON line as lists and to TensorBoard as one
    scalar per entry, named with `vector_names` where given (e.g. concept names).
    """

    def __init__(self, workdir: WorkDir, *, vector_names: Mapping[str, list[str]] | None = None):
        self._workdir = workdir
        self._tensorboard = SummaryWriter(workdir.tensorboard)
        self._tensorboard.flush()  # The event file's header, now: nothing is left to fail at exit on a full disk.
        self._vector_names = dict(vector_names or {})

    def write(self, step: int, metrics: Mapping[str, Any], *, prefix: str = "train") -> dict[str, Any]:
        record = {"step": int(step), **{name: to_python(value) for name, value in metrics.items()}}
        with open(self._workdir.file(metrics_filename(prefix)), "a") as file:
            file.write(json.dumps(record) + "\n")
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
