"""Throughput and profiling: images/s and MFU over windows that exclude compilation, evaluation and saves."""

import glob
import os
import time

import jax
import pytest

from hrrl_jax.train import evaluation
from hrrl_jax.train.loop import train_and_evaluate
from hrrl_jax.train.throughput import ThroughputMeter, device_peak_flops
from hrrl_jax.workdir import WorkDir
from tests.train.helpers import tiny_config


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_window_counts_only_the_time_of_its_steps():
    clock = FakeClock()
    meter = ThroughputMeter(
        global_batch_size=64, device_count=8, flops_per_step=1e12, peak_flops_per_device=1e12, clock=clock
    )
    try:
        for _ in range(4):
            clock.now += 0.5  # A step.
            meter.step_done()
        with meter.excluded():  # An evaluation, with its compilation (not subtracted twice).
            clock.now += 30.0
            jax.monitoring.record_event_duration_secs("/jax/core/compile/backend_compile_duration", 7.0)
        clock.now += 3.0  # A step that recompiled for 2.5 s.
        jax.monitoring.record_event_duration_secs("/jax/core/compile/backend_compile_duration", 2.5)
        meter.step_done()
        figures = meter.window()
    finally:
        meter.close()
    assert figures["steps_per_second"] == pytest.approx(5 / 2.5)
    assert figures["images_per_second"] == pytest.approx(5 * 64 / 2.5)
    assert figures["images_per_second_per_device"] == pytest.approx(5 * 64 / 2.5 / 8)
    assert figures["mfu"] == pytest.approx(5 * 1e12 / 2.5 / (1e12 * 8))
    assert meter.window() == {}  # The next window has counted no step yet.


def test_mfu_is_absent_where_the_peak_is_unknown():
    meter = ThroughputMeter(global_batch_size=8, device_count=1, flops_per_step=1e9, peak_flops_per_device=None)
    meter.step_done()
    assert set(meter.window()) == {"steps_per_second", "images_per_second", "images_per_second_per_device"}
    meter.close()
    assert device_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert device_peak_flops("NVIDIA H100 80GB HBM3", "float32") is None
    assert device_peak_flops("cpu") is None


@pytest.mark.slow
def test_a_window_with_a_slow_eval_reports_the_step_rate_alone_and_the_profile_is_written(tmp_path, monkeypatch):
    real_evaluate = evaluation.evaluate
    eval_seconds = 3.0

    def slow_evaluate(*args, **kwargs):
        time.sleep(eval_seconds)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", slow_evaluate)
    config = tiny_config(total_steps=6, log_every_steps=3, eval_every_steps=3, profile__start_step=3)
    config.profile.num_steps = 2
    train_and_evaluate(config, str(tmp_path))
    first, second = WorkDir(tmp_path).read_metrics()
    # Steps 2-3 (step 1 compiles); then steps 4-6, with the eval after step 3 and the trace of steps 4-5 in between.
    assert [first["step"], second["step"]] == [3, 6]
    assert 3 / second["steps_per_second"] < eval_seconds
    assert second["images_per_second"] == pytest.approx(second["steps_per_second"] * config.batch_size)
    assert second["images_per_second_per_device"] == pytest.approx(second["images_per_second"] / jax.device_count())
    assert first["images_per_second"] == pytest.approx(first["steps_per_second"] * config.batch_size)
    assert "mfu" not in second  # CPU: no peak to compare with.
    traces = glob.glob(os.path.join(tmp_path, "profile", "plugins", "profile", "*", "*.xplane.pb"))
    assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
