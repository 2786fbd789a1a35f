"""A stop request (SIGTERM/SIGINT) that every process of a run acts on at the same step.

A preemption signal reaches the hosts of a multi-host run at different moments. If each host stopped on its
own flag, one could enter the checkpoint save while another entered the next step's all-reduce, and both
would wait for ever. So every process must decide to stop after the same step:

* SIGTERM, with more than one process: JAX's preemption service (on by default with `jax.distributed`) installs
  its own SIGTERM handler, tells the other processes in the background and picks the step after the largest one
  any process has reached; `multihost_utils.reached_preemption_sync_point(step)`, asked after every step, is true
  at that step on every process. Its handler is never replaced here. Where the service is off
  (`jax_enable_preemption_service=False`), SIGTERM is handled as SIGINT is.
* SIGINT (and SIGTERM where JAX does not handle it), with more than one process: this module's handler sets a
  flag, which the processes all-gather every AGREEMENT_INTERVAL_STEPS steps and stop on if any process has it.
* One process: the handler catches both signals and the loop stops after the step in progress.

The handler is installed for the whole launch, from before the data is read until the last file is written. Until
`started()` (start-up: reading data, compiling, restoring) a signal interrupts at once with `RunInterrupted`, since
this launch has saved nothing yet; from then on it only sets the flag, so a save in flight (the final one included)
always completes, and the loop, the final evaluation and the exit act on the flag.
"""

from __future__ import annotations

import signal
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

# Multi-process runs agree on the flag every this many steps: the all-gather blocks the host until the step
# in flight ends, so agreeing after every step would cost a host round trip per step. A host stops at most
# this many steps after its signal, well inside a preemption's grace period.
AGREEMENT_INTERVAL_STEPS = 10


class RunInterrupted(BaseException):
    """A stop signal during start-up, before this launch saved anything: unwinds to launch.py (not an Exception, so
    that no `except Exception` on the way swallows it)."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(
            f"{signal_name} received during start-up: stopped before training; nothing was written by this launch. "
            "Rerun the same command to start or resume."
        )
        self.signal_name = signal_name


def jax_handles_sigterm() -> bool:
    """Whether JAX's preemption service owns SIGTERM: a multi-process run with the service on."""
    return jax.process_count() > 1 and bool(jax.config.jax_enable_preemption_service)


class StopRequest:
    """Turns SIGTERM/SIGINT into a request that `should_stop(step)` reports on every process alike.

    With `interrupt_until_started`, a signal before `started()` raises RunInterrupted instead (a SIGTERM that JAX
    handles is acted on at the preemption sync point instead, once training runs).
    """

    def __init__(
        self, agreement_interval: int = AGREEMENT_INTERVAL_STEPS, *, interrupt_until_started: bool = False
    ) -> None:
        self.signal_name: str | None = None
        self._agreement_interval = agreement_interval
        self._previous: dict[int, Any] = {}
        self._interrupt = interrupt_until_started
        self._preempted = False

    def started(self) -> None:
        """Ends start-up: from now on a signal only sets the flag (raises RunInterrupted if one already came)."""
        self._interrupt = False
        if self.signal_name is not None:
            raise RunInterrupted(self.signal_name)

    def __enter__(self) -> StopRequest:
        signals = (signal.SIGINT,) if jax_handles_sigterm() else (signal.SIGTERM, signal.SIGINT)
        for signum in signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name
        if self._interrupt:
            self._interrupt = False
            raise RunInterrupted(self.signal_name)

    @property
    def requested_here(self) -> bool:
        """Whether this process received a signal (no agreement: for a single process's own choices)."""
        return self.signal_name is not None

    def __exit__(self, *exc_info: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def should_stop(self, step: int) -> bool:
        """Whether any process has been asked to stop, decided identically on all of them after `step`.

        Every process must call this after every step (it is collective at the agreed steps).
        """
        if jax.process_count() == 1:
            return self.signal_name is not None
        if jax_handles_sigterm() and multihost_utils.reached_preemption_sync_point(step):
            self._preempted = True
            return True
        if step % self._agreement_interval:
            return False
        requested = multihost_utils.process_allgather(np.int32(self.signal_name is not None))
        return bool(np.any(requested))

    @property
    def reason(self) -> str:
        """What asked this process to stop, for the console."""
        if self._preempted:
            return "A preemption notice (SIGTERM) reached the cluster"
        return f"{self.signal_name} received" if self.signal_name else "another process received a stop signal"
