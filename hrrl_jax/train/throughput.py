"""Training throughput over log windows: images/s (global and per device) and model FLOPs utilisation (MFU).

A window's time is the wall time between two log steps less the time spent outside the train steps: compiling
(the first step of a launch is not counted at all; a later recompilation's time is subtracted, as jax reports it
through `jax.monitoring`), evaluating, saving checkpoints and writing the logs. So a window with an eval pass
reports the rate of its steps alone. Each excluded section starts once the device has finished the steps queued
before it (`jax.block_until_ready`), so the steps' own time stays in the window.

MFU = model FLOPs per step / window time per step / (peak FLOP/s per device x devices), with the model FLOPs of a
step taken as 3 forward passes per image (forward and backward; an input-level adversary's extra passes are not
model FLOPs) and the dense bf16 peak of the device from its data sheet; absent where either is unknown.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

import jax

# Dense bf16 peak FLOP/s per chip, from the vendors' data sheets (SXM parts), for MFU.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12, "TPU v5e": 197e12}

# The durations jax reports for tracing, lowering and compiling a function (jax._src.dispatch's event names).
_COMPILE_EVENT_PREFIX = "/jax/core/compile/"


def device_peak_flops(device_kind: str, precision: str = "bfloat16") -> float | None:
    """The dense peak FLOP/s of one device of `device_kind` at `precision`; None when not in the table (CPUs) or
    not bf16 (MFU is quoted against the bf16 peak)."""
    if precision != "bfloat16":
        return None
    for name, flops in PEAK_BF16_FLOPS.items():
        if name.lower() in device_kind.lower():
            return flops
    return None


class ThroughputMeter:
    """Times the train steps of each log window, excluding what is not a step (see the module's doc).

    Call `step_done()` after each counted step, wrap what is not a step in `excluded()`, and `window()` at a log
    step: it returns the window's figures and starts the next one. `clock` is injectable for tests.
    """

    def __init__(
        self,
        *,
        global_batch_size: int,
        device_count: int,
        flops_per_step: float | None = None,
        peak_flops_per_device: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._batch = global_batch_size
        self._devices = device_count
        self._peak_flops = None if flops_per_step is None or peak_flops_per_device is None else peak_flops_per_device
        self._flops_per_step = flops_per_step
        self._clock = clock
        self._paused = 0
        self._steps = 0
        self._excluded_seconds = 0.0
        self._compile_seconds = 0.0
        self._window_start = clock()
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **kwargs: Any) -> None:
        if event.startswith(_COMPILE_EVENT_PREFIX) and not self._paused:
            self._compile_seconds += duration

    @contextlib.contextmanager
    def excluded(self) -> Iterator[None]:
        """A section whose time (and compilation) does not count in the window."""
        start = self._clock()
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1
            self._excluded_seconds += self._clock() - start

    def step_done(self) -> None:
        self._steps += 1

    def window(self) -> dict[str, float]:
        """`steps_per_second`, `images_per_second`, `images_per_second_per_device` and, where known, `mfu` of the
        steps counted since the last call; empty when none was counted (a window holding only the first step)."""
        seconds = self._clock() - self._window_start - self._excluded_seconds - self._compile_seconds
        steps = self._steps
        self._window_start, self._steps, self._excluded_seconds, self._compile_seconds = self._clock(), 0, 0.0, 0.0
        if steps == 0:
            return {}
        seconds = max(seconds, 1e-9)
        images_per_second = steps * self._batch / seconds
        figures = {
            "steps_per_second": steps / seconds,
            "images_per_second": images_per_second,
            "images_per_second_per_device": images_per_second / self._devices,
        }
        if self._peak_flops is not None:
            figures["mfu"] = steps * self._flops_per_step / seconds / (self._peak_flops * self._devices)
        return figures

    def close(self) -> None:
        jax.monitoring.unregister_event_duration_listener(self._on_event)


def meter_for_run(run: Any, state: Any) -> ThroughputMeter:
    """The meter of a `hrrl_jax.train.run.Run` on all devices: with MFU when the devices' peak is in the table (the
    model's FLOPs are then counted once, by XLA's cost analysis of the forward pass on the CPU)."""
    from hrrl_jax.data import image_side
    from hrrl_jax.models import count_flops

    config = run.config
    device_count = jax.device_count()
    peak = device_peak_flops(jax.devices()[0].device_kind, config.precision)
    flops_per_step = None
    if peak is not None:
        side = image_side(config, run.info)
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        forward = count_flops(run.trainer.model, variables, (1, side, side, run.info.image_shape[2]))
        flops_per_step = 3 * config.batch_size * forward
    return ThroughputMeter(
        global_batch_size=config.batch_size,
        device_count=device_count,
        flops_per_step=flops_per_step,
        peak_flops_per_device=peak,
    )
