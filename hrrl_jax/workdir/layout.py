"""The layout of a run's work directory, and the record of the configurations that trained it.

    WORKDIR/config.json            the configuration in force now (the latest launch that trained)
    WORKDIR/config_history.jsonl   every configuration that took effect, with its first step and the changes
    WORKDIR/metrics.jsonl          one JSON object per log step (eval_metrics.jsonl for evaluations); on an object
                                   store in parts, metrics.part-STEP.jsonl (hrrl_jax.workdir.metric_log)
    WORKDIR/tensorboard/           the same as TensorBoard event files
    WORKDIR/checkpoints/STEP/      Orbax checkpoints of the whole train state
    WORKDIR/results.json           the final evaluation, with "status": "finished" (or "interrupted" and the step)
    WORKDIR/run.lock               the lock of the launch that writes here now (hrrl_jax.workdir.lock)
    WORKDIR/profile/               a jax.profiler trace, when config.profile asks for one
    WORKDIR/corrupt_checkpoints/   checkpoints that failed their digest, moved aside (hrrl_jax.workdir.checkpoints)

WORKDIR is a local path or an object store URL (`gs://bucket/run`): every file goes through `etils.epath`
(`hrrl_jax.workdir.storage`). The configuration is recorded only after a fresh start or a successful restore, so a
launch that cannot resume (another model, a corrupt checkpoint) leaves the record of the checkpoints already there as
it was.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import ml_collections
from etils import epath

from hrrl_jax.config_checks import config_from_json
from hrrl_jax.errors import UserError
from hrrl_jax.workdir import metric_log, storage

CONFIG = "config.json"
CONFIG_HISTORY = "config_history.jsonl"
RESULTS = "results.json"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
PROFILE = "profile"
FINISHED = "finished"
INTERRUPTED = "interrupted"


class WorkDirError(UserError, OSError):
    """The work directory cannot be created or written (a file, a read-only or unwritable location)."""


def flatten_config(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {"a.b.c": value}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[Any]]:
    """{"a.b": [old value, new value]} for every key whose value differs (missing keys as None)."""
    old_flat, new_flat = flatten_config(old), flatten_config(new)
    return {
        key: [old_flat.get(key), new_flat.get(key)]
        for key in sorted(set(old_flat) | set(new_flat))
        if old_flat.get(key) != new_flat.get(key)
    }


def _as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort(sort_keys=True))


class WorkDir:
    """Paths of one run's outputs and the record of its configurations (`record_config`)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.root = storage.as_path(path)
        self.path = os.fspath(self.root)  # An absolute local path, or the URL as given.

    @property
    def is_object_store(self) -> bool:
        return storage.is_object_store(self.path)

    def prepare(self) -> None:
        """Creates the directory and proves it writable, or raises WorkDirError in one line (before any data)."""
        storage.check_backend(self.path)
        if self.root.exists() and not self.root.is_dir():
            raise WorkDirError(f"--workdir {self.path} is a file, not a directory; give a directory path.")
        probe = self.root / f".write_probe.{uuid.uuid4().hex}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_text("ok")
            probe.unlink()
        except OSError as error:
            raise WorkDirError(
                f"--workdir {self.path} cannot be written ({error.strerror or error}): give a writable directory."
            ) from None

    def file(self, name: str) -> epath.Path:
        return self.root / name

    @property
    def checkpoints(self) -> epath.Path:
        return self.file(CHECKPOINTS)

    @property
    def tensorboard(self) -> epath.Path:
        return self.file(TENSORBOARD)

    @property
    def profile(self) -> epath.Path:
        return self.file(PROFILE)

    def checkpoint_steps(self) -> list[int]:
        """The steps of the committed checkpoints, oldest first (Orbax writes a step's folder atomically)."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(int(path.name) for path in self.checkpoints.iterdir() if path.name.isdigit())

    def latest_checkpoint_step(self) -> int | None:
        steps = self.checkpoint_steps()
        return steps[-1] if steps else None

    def read_config_dict(self) -> dict[str, Any]:
        """The configuration in force, as the plain dict config.json holds; a clear error if there is none."""
        text = storage.read_text_or_none(self.file(CONFIG))
        if text is None:
            raise FileNotFoundError(f"{self.file(CONFIG)} not found: {self.path} is not a training work directory.")
        return json.loads(text)

    def config_history(self) -> list[dict[str, Any]]:
        """Every recorded configuration: {"step": first step it trained, "config": dict, "changed": {...}}."""
        text = storage.read_text_or_none(self.file(CONFIG_HISTORY)) or ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def record_config(self, config: ml_collections.ConfigDict, *, step: int) -> dict[str, list[Any]]:
        """Makes `config` the one in force from `step` on; returns the keys that changed (empty if none).

        A fresh start writes config.json and the first history entry. A resume with the same configuration
        writes nothing; with another one, the history gains an entry with the step and the changed keys, and
        config.json is replaced. A config.json that predates the history becomes its first entry (step 0).
        """
        new = _as_json(config)
        history = self.config_history()
        if not history and self.file(CONFIG).exists():
            history = [{"step": 0, "config": self.read_config_dict(), "changed": {}}]
            self._write_history(history)
        # Read through config_from_json, so a file of an older version (0 or "" for unset) compares equal.
        previous = _as_json(config_from_json(history[-1]["config"])) if history else None
        changed = config_changes(previous, new) if previous is not None else {}
        if previous is not None and not changed:
            return {}
        self._write_history([*history, {"step": int(step), "config": new, "changed": changed}])
        storage.write_text(self.file(CONFIG), config.to_json_best_effort(indent=2, sort_keys=True))
        return changed

    def _write_history(self, history: list[dict[str, Any]]) -> None:
        self._write_lines(CONFIG_HISTORY, [json.dumps(entry, sort_keys=True) for entry in history])

    def read_metrics(self, prefix: str = "train") -> list[dict[str, Any]]:
        """The records of metrics.jsonl (or `<prefix>_metrics.jsonl`, or their parts), in order; empty if none."""
        return metric_log.read_records(self.root, prefix)

    def truncate_metrics(self, after_step: int) -> None:
        """Drops the metric records of steps after `after_step` (a resume retrains them), in every stream."""
        metric_log.truncate_records(self.root, after_step)

    def read_status(self) -> dict[str, Any] | None:
        """results.json as written, whatever its status; None if there is none."""
        text = storage.read_text_or_none(self.file(RESULTS))
        return None if text is None else json.loads(text)

    def read_results(self) -> dict[str, Any] | None:
        """The results of a finished run; None if it has not finished (results.json of files written before the
        status existed count as finished)."""
        results = self.read_status()
        if results is None or results.get("status", FINISHED) != FINISHED:
            return None
        return results

    def write_results(self, results: dict[str, Any]) -> None:
        """Writes results.json whole (`storage.write_text`), so a reader never sees half a file."""
        self._write_lines(RESULTS, [json.dumps(results, indent=2)])

    def set_aside_results_before(self, step: int) -> None:
        """Renames results.json of a finished run at a step below `step` to results_step<N>.json, since the run
        now trains beyond it (the results of that step are kept, not overwritten)."""
        results = self.read_results()
        if results is not None and int(results.get("step", step)) < step:
            kept = self.file(f"results_step{results['step']}.json")
            storage.write_text(kept, self.file(RESULTS).read_text())
            self.file(RESULTS).unlink()

    def _write_lines(self, name: str, lines: list[str]) -> None:
        storage.write_text(self.file(name), "".join(line + "\n" for line in lines))
