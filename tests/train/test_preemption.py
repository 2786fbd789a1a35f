"""The stop decision: JAX's preemption sync point for SIGTERM with several processes, the Python handler otherwise."""

import os
import signal

import jax
import pytest
from jax.experimental import multihost_utils

from hrrl_jax.train import preemption
from hrrl_jax.train.preemption import StopRequest


@pytest.fixture
def two_processes(monkeypatch):
    monkeypatch.setattr(preemption.jax, "process_count", lambda: 2)
    gathered = []
    monkeypatch.setattr(multihost_utils, "process_allgather", lambda flag: gathered.append(int(flag)) or [int(flag), 0])
    return gathered


def test_with_several_processes_jax_keeps_sigterm_and_its_sync_point_decides(two_processes, monkeypatch):
    sync_steps = []
    monkeypatch.setattr(
        multihost_utils, "reached_preemption_sync_point", lambda step: sync_steps.append(step) or step == 7
    )
    jax_handler = signal.getsignal(signal.SIGTERM)
    with StopRequest(agreement_interval=10) as stop:
        assert signal.getsignal(signal.SIGTERM) is jax_handler  # Never replaced.
        assert signal.getsignal(signal.SIGINT) == stop._handle
        decisions = [stop.should_stop(step) for step in range(1, 8)]
    assert decisions == [False] * 6 + [True] and sync_steps == list(range(1, 8))
    assert stop.reason == "A preemption notice (SIGTERM) reached the cluster"
    assert two_processes == []  # No all-gather before the 10th step.


def test_with_several_processes_sigint_is_agreed_every_interval(two_processes, monkeypatch):
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", lambda step: False)
    with StopRequest(agreement_interval=5) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        decisions = [stop.should_stop(step) for step in range(1, 6)]
    assert decisions == [False] * 4 + [True] and two_processes == [1]
    assert stop.reason == "SIGINT received"


def test_with_the_preemption_service_off_or_one_process_the_python_handler_takes_sigterm(two_processes, monkeypatch):
    jax.config.update("jax_enable_preemption_service", False)
    try:
        with StopRequest() as stop:
            assert signal.getsignal(signal.SIGTERM) == stop._handle
    finally:
        jax.config.update("jax_enable_preemption_service", True)
    monkeypatch.setattr(preemption.jax, "process_count", lambda: 1)
    with StopRequest() as stop:
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.should_stop(1) and stop.reason == "SIGTERM received"
