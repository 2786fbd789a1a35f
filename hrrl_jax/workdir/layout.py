"""The layout of a run's work directory, and the record of the configurations that trained it.

    WORKDIR/config.json            the configuration in force now (the latest launch that trained)
    WORKDIR/config_history.jsonl   every configuration that took effect, with its first step and the changes
    WORKDIR/metrics.jsonl          one JSON object per log step (eval_metrics.jsonl for evaluations)
    WORKDIR/tensorboard/           the same as TensorBoard event files
    WORKDIR/checkpoints/STEP/      Orbax checkpoints of the whole train state
    WORKDIR/results.json           the final evaluation, with "status": "finished" (or "interrupted" and the step)
    WORKDIR/run.lock               the lock of the launch that writes here now (hrrl_jax.workdir.lock)
    WORKDIR/corrupt_checkpoints/   checkpoints that failed their digest, moved aside (hrrl_jax.workdir.checkpoints)

The configuration is recorded only after a fresh start or a successful restore, so a launch that cannot resume
(another model, a corrupt checkpoint) leaves the record of the checkpoints already there as it was.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import ml_collections

from hrrl_jax.config_checks import config_from_json
from hrrl_jax.errors import UserError

CONFIG = "config.json"
CONFIG_HISTORY = "config_history.jsonl"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
FINISHED = "finished"
INTERRUPTED = "interrupted"


class WorkDirError(UserError, OSError):
    """The work directory cannot be created or written (a file, a read-only or unwritable location)."""


def metrics_filename(prefix: str) -> str:
    """`metrics.jsonl` for training, `<prefix>_metrics.jsonl` for any other stream (e.g. eval)."""
    return METRICS if prefix == "train" else f"{prefix}_{METRICS}"


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
        self.path = os.path.abspath(os.fspath(path))

    def prepare(self) -> None:
        """Creates the directory and proves it writable, or raises WorkDirError in one line (before any data)."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise WorkDirError(f"--workdir {self.path} is a file, not a directory; give a directory path.")
        probe = self.file(f".write_probe.{uuid.uuid4().hex}")
        try:
            os.makedirs(self.path, exist_ok=True)
            with open(probe, "w") as file:
                file.write("ok")
            os.remove(probe)
        except OSError as error:
            raise WorkDirError(
                f"--workdir {self.path} cannot be written ({error.strerror or error}): give a writable directory."
            ) from None

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def checkpoints(self) -> str:
        return self.file(CHECKPOINTS)

    @property
    def tensorboard(self) -> str:
        return self.file(TENSORBOARD)

    def checkpoint_steps(self) -> list[int]:
        """The steps of the committed checkpoints, oldest first (Orbax writes a step's folder atomically)."""
        if not os.path.isdir(self.checkpoints):
            return []
        return sorted(int(name) for name in os.listdir(self.checkpoints) if name.isdigit())

    def latest_checkpoint_step(self) -> int | None:
        steps = self.checkpoint_steps()
        return steps[-1] if steps else None

    def read_config_dict(self) -> dict[str, Any]:
        """The configuration in force, as the plain dict config.json holds; a clear error if there is none."""
        path = self.file(CONFIG)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: {self.path} is not a training work directory.")
        with open(path) as file:
            return json.load(file)

    def config_history(self) -> list[dict[str, Any]]:
        """Every recorded configuration: {"step": first step it trained, "config": dict, "changed": {...}}."""
        path = self.file(CONFIG_HISTORY)
        if not os.path.exists(path):
            return []
        with open(path) as file:
            return [json.loads(line) for line in file if line.strip()]

    def record_config(self, config: ml_collections.ConfigDict, *, step: int) -> dict[str, list[Any]]:
        """Makes `config` the one in force from `step` on; returns the keys that changed (empty if none).

        A fresh start writes config.json and the first history entry. A resume with the same configuration
        writes nothing; with another one, the history gains an entry with the step and the changed keys, and
        config.json is replaced. A config.json that predates the history becomes its first entry (step 0).
        """
        new = _as_json(config)
        history = self.config_history()
        if not history and os.path.exists(self.file(CONFIG)):
            history = [{"step": 0, "config": self.read_config_dict(), "changed": {}}]
            self._write_history(history)
        # Read through config_from_json, so a file of an older version (0 or "" for unset) compares equal.
        previous = _as_json(config_from_json(history[-1]["config"])) if history else None
        changed = config_changes(previous, new) if previous is not None else {}
        if previous is not None and not changed:
            return {}
        self._write_history([*history, {"step": int(step), "config": new, "changed": changed}])
        temporary = self.file(CONFIG + ".tmp")
        with open(temporary, "w") as file:
            file.write(config.to_json_best_effort(indent=2, sort_keys=True))
        os.replace(temporary, self.file(CONFIG))
        return changed

    def _write_history(self, history: list[dict[str, Any]]) -> None:
        temporary = self.file(CONFIG_HISTORY + ".tmp")
        with open(temporary, "w") as file:
            file.writelines(json.dumps(entry, sort_keys=True) + "\n" for entry in history)
        os.replace(temporary, self.file(CONFIG_HISTORY))

    def read_metrics(self, prefix: str = "train") -> list[dict[str, Any]]:
        """The records of metrics.jsonl (or `<prefix>_metrics.jsonl`), in order; empty if none were written."""
        path = self.file(metrics_filename(prefix))
        if not os.path.exists(path):
            return []
        with open(path) as file:
            return [json.loads(line) for line in file if line.strip()]

    def truncate_metrics(self, after_step: int) -> None:
        """Drops the metric records of steps after `after_step` (a resume retrains them), in every stream."""
        for name in os.listdir(self.path):
            if name.endswith(METRICS):
                with open(self.file(name)) as file:
                    records = [json.loads(line) for line in file if line.strip()]
                kept = [record for record in records if record.get("step", 0) <= after_step]
                if len(kept) != len(records):
                    self._write_lines(name, [json.dumps(record) for record in kept])

    def read_status(self) -> dict[str, Any] | None:
        """results.json as written, whatever its status; None if there is none."""
        path = self.file(RESULTS)
        if not os.path.exists(path):
            return None
        with open(path) as file:
            return json.load(file)

    def read_results(self) -> dict[str, Any] | None:
        """The results of a finished run; None if it has not finished (results.json of files written before the
        status existed count as finished)."""
        results = self.read_status()
        if results is None or results.get("status", FINISHED) != FINISHED:
            return None
        return results

    def write_results(self, results: dict[str, Any]) -> None:
        """Writes results.json atomically (temp file + rename), so a reader never sees half a file."""
        self._write_lines(RESULTS, [json.dumps(results, indent=2)])

    def set_aside_results_before(self, step: int) -> None:
        """Renames results.json of a finished run at a step below `step` to results_step<N>.json, since the run
        now trains beyond it (the results of that step are kept, not overwritten)."""
        results = self.read_results()
        if results is not None and int(results.get("step", step)) < step:
            os.replace(self.file(RESULTS), self.file(f"results_step{results['step']}.json"))

    def _write_lines(self, name: str, lines: list[str]) -> None:
        temporary = self.file(name + ".tmp")
        with open(temporary, "w") as file:
            file.writelines(line + "\n" for line in lines)
        os.replace(temporary, self.file(name))
