"""A jax.profiler trace of a few train steps (`config.profile`), for TensorBoard's profile plugin.

With `profile.start_step = S` the trace covers the steps S+1 .. S+num_steps of a launch that trains them (process 0
only; a resume past S+1 takes none). It lands in `WORKDIR/profile/plugins/profile/<time>/`, where
`tensorboard --logdir WORKDIR` shows it under the Profile tab. On an object store the trace is written to a local
temporary folder first and copied into the work directory when it ends (the profiler writes with local file calls).
Each step runs inside `jax.profiler.StepTraceAnnotation("train", step_num=step)`, so the trace viewer and the
overview page separate the steps.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Callable, ContextManager, Iterator

import jax
import ml_collections
from etils import epath

from hrrl_jax.workdir import storage


class StepProfiler:
    """Starts and stops the trace around the configured steps; `step(n)` wraps train step n."""

    def __init__(
        self,
        profile: ml_collections.ConfigDict,
        directory: epath.Path,
        *,
        enabled: bool,
        excluded: Callable[[], ContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        """`excluded` wraps starting and stopping the trace (e.g. `ThroughputMeter.excluded`: not step time)."""
        start_step = profile.start_step
        self._first = None if start_step is None or not enabled else int(start_step) + 1
        self._last = None if self._first is None else int(start_step) + int(profile.num_steps)
        self._directory = directory
        self._local: str | None = None
        self._last_traced: int | None = None
        self._excluded = excluded

    @contextlib.contextmanager
    def step(self, step: int) -> Iterator[None]:
        if step == self._first:
            with self._excluded():
                self._start()
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
            yield
        if self._local is not None:
            self._last_traced = step
        if step == self._last and self._local is not None:
            with self._excluded():
                self.stop()

    def _start(self) -> None:
        if storage.is_object_store(self._directory):
            self._local = tempfile.mkdtemp(prefix="hrrl_jax_profile_")
        else:
            self._directory.mkdir(parents=True, exist_ok=True)
            self._local = os.fspath(self._directory)
        jax.profiler.start_trace(self._local)

    def stop(self) -> None:
        """Ends a trace in progress (the last profiled step, or a run that stops first) and saves it."""
        if self._local is None:
            return
        local, self._local = self._local, None
        jax.profiler.stop_trace()
        print(f"Wrote the profile of steps {self._first}-{self._last_traced} to {self._directory}.", flush=True)
        if storage.is_object_store(self._directory):
            for folder, _, names in os.walk(local):
                for name in names:
                    relative = os.path.relpath(os.path.join(folder, name), local)
                    with open(os.path.join(folder, name), "rb") as file:
                        storage.write_bytes(self._directory / relative, file.read())
            shutil.rmtree(local, ignore_errors=True)
