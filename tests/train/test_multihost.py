"""Multi-host for real on one machine: 2 processes x 4 CPU devices train, save and restore like 1 x 8 devices.

The two processes (tests/train/multihost_worker.py) join through `jax.distributed.initialize` on localhost,
exchange data with gloo CPU collectives, load only their own rows of each batch and write one Orbax
checkpoint collectively into a shared work directory. Their parameters, adversary state (the concept losses
of the reweighting state inside opt_state) and checkpoint must match a single process with 8 devices.

A preemption signal reaches one host of a real cluster first: SIGTERM to process 1 alone goes to JAX's
preemption service (the package installs no SIGTERM handler of its own there), which must stop both processes
after the same step, its sync point, with one checkpoint; resuming from it must end bit-identical to an
uninterrupted two-process run, which in turn must match one process with 8 devices (one test: the uninterrupted
cluster serves both comparisons).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import jax
import numpy as np
import pytest

from hrrl_jax.train.loop import train_and_evaluate
from hrrl_jax.train.run import build_run
from hrrl_jax.train.state import abstract_train_state
from tests.conftest import TEST_XLA_FLAGS
from tests.train.helpers import (
    CANCELLATION_ALLOWANCE,
    REPO_ROOT,
    assert_trees_equal,
    read_checkpoint_state,
    relative_deviation,
    rounding_bound,
)
from tests.train.multihost_worker import TOTAL_STEPS, flatten_by_path, multihost_config, restore_final_state

NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 4
CLUSTER_TIMEOUT_SECONDS = 300
# The preemption test signals once process 0 has logged this many steps (both processes are then inside the
# training loop, with the signal handlers installed), and allows the cluster these bounds.
STEPS_LOGGED_BEFORE_SIGNAL = 3
FIRST_STEPS_TIMEOUT_SECONDS = 240
STOP_TIMEOUT_SECONDS = 120
# The processes compile with the cheap flags of every test (tests/conftest.py): turning off LLVM's optimisations
# alone took each process's compilation of the model's initialisation from 26 s of CPU to 3.
# The 8-way sums run in another order across processes (gloo) than in one: leaves agree to the rounding bound
# of tests/train/helpers.py (`rounding_bound`, `CANCELLATION_ALLOWANCE`), derived, not measured on one host.


def gloo_collectives_available() -> bool:
    """Whether the installed jaxlib was built with the gloo CPU collectives that the processes talk through."""
    try:
        from jaxlib import _jax
    except ImportError:
        return False
    return hasattr(_jax, "make_gloo_tcp_collectives")


requires_gloo = pytest.mark.skipif(not gloo_collectives_available(), reason="this jaxlib has no gloo CPU collectives")


def free_local_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the coordinator binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclasses.dataclass
class Cluster:
    """The worker processes of one cluster launch and the logs they write (stdout and stderr together)."""

    processes: list[subprocess.Popen]
    log_paths: list[str]

    def fail_if_any_failed(self) -> None:
        """Fails with the logs as soon as one process exits non-zero (the others would wait for it for ever)."""
        codes = [process.poll() for process in self.processes]
        if any(code not in (None, 0) for code in codes):
            pytest.fail(f"A process failed (exit codes {codes}).\n{_tails(self.log_paths)}")

    def wait(self, timeout_seconds: float) -> None:
        """Waits until every process exits 0; fails with their logs on an error or after `timeout_seconds`."""
        deadline = time.monotonic() + timeout_seconds
        while any(process.poll() is None for process in self.processes):
            self.fail_if_any_failed()
            if time.monotonic() > deadline:
                pytest.fail(f"The processes did not finish within {timeout_seconds} s.\n{_tails(self.log_paths)}")
            time.sleep(0.5)
        codes = [process.returncode for process in self.processes]
        if any(codes):
            pytest.fail(f"The processes exited with codes {codes}.\n{_tails(self.log_paths)}")


@contextlib.contextmanager
def started_cluster(
    workdir: str | os.PathLike,
    output_dir: str | os.PathLike,
    log_dir: str | os.PathLike,
    *worker_arguments: str,
) -> Iterator[Cluster]:
    """Starts the worker (with `worker_arguments`) in NUM_PROCESSES processes, logging to log_dir/process_I.log.

    Every process is killed and reaped when the block exits, whatever happens inside it.
    """
    coordinator_address = f"127.0.0.1:{free_local_port()}"
    environment = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS} {TEST_XLA_FLAGS}",
        # On CPU the persistent cache keys differ between processes and only process 0 writes entries: a warm
        # cache lets process 0 skip compiling and wait at the first collective for longer than gloo's 30 s.
        "JAX_ENABLE_COMPILATION_CACHE": "false",
        "PYTHONPATH": os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])),
    }
    cluster = Cluster(
        processes=[], log_paths=[os.path.join(log_dir, f"process_{index}.log") for index in range(NUM_PROCESSES)]
    )
    try:
        for process_id, log_path in enumerate(cluster.log_paths):
            command = [
                sys.executable, "-m", "tests.train.multihost_worker",
                "--coordinator_address", coordinator_address,
                "--num_processes", str(NUM_PROCESSES),
                "--process_id", str(process_id),
                "--workdir", os.fspath(workdir),
                "--output_dir", os.fspath(output_dir),
                *worker_arguments,
            ]  # fmt: skip
            with open(log_path, "w") as log:
                cluster.processes.append(
                    subprocess.Popen(command, cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
                )
        yield cluster
    finally:
        for process in cluster.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def run_cluster(
    workdir: str | os.PathLike,
    output_dir: str | os.PathLike,
    log_dir: str | os.PathLike,
    *worker_arguments: str,
) -> None:
    """Runs the worker in NUM_PROCESSES processes to the end; fails with their logs on an error or a timeout."""
    with started_cluster(workdir, output_dir, log_dir, *worker_arguments) as cluster:
        cluster.wait(CLUSTER_TIMEOUT_SECONDS)


def _tails(log_paths: list[str], lines: int = 30) -> str:
    """The last lines of each process's log, for failure messages."""
    parts = []
    for path in log_paths:
        with open(path, errors="replace") as log:
            parts.append(f"--- {os.path.basename(path)} ---\n" + "".join(log.readlines()[-lines:]))
    return "\n".join(parts)


def _logged_steps(workdir: str | os.PathLike) -> list[int]:
    """The steps of the lines in workdir/metrics.jsonl (each written once, by process 0 only)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as file:
        return [json.loads(line)["step"] for line in file]


def wait_for_logged_steps(cluster: Cluster, workdir: str | os.PathLike, count: int, timeout_seconds: float) -> None:
    """Waits until workdir/metrics.jsonl holds `count` complete lines; fails if a process exits or on timeout."""
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.monotonic() + timeout_seconds
    while True:
        if os.path.exists(path):
            with open(path) as file:
                if file.read().count("\n") >= count:
                    return
        if any(process.poll() is not None for process in cluster.processes):
            codes = [process.poll() for process in cluster.processes]
            pytest.fail(
                f"A process exited (codes {codes}) before {count} steps were logged.\n{_tails(cluster.log_paths)}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"{count} steps were not logged within {timeout_seconds} s.\n{_tails(cluster.log_paths)}")
        time.sleep(0.05)


def _read_process_outputs(output_dir: str | os.PathLike) -> list[dict]:
    """What `train_and_evaluate` returned in each process (OUT/process_I.json), by process index."""
    outputs = []
    for process_index in range(NUM_PROCESSES):
        with open(os.path.join(output_dir, f"process_{process_index}.json")) as file:
            outputs.append(json.load(file))
    return outputs


def _read_log(log_dir: str | os.PathLike, process_index: int) -> str:
    with open(os.path.join(log_dir, f"process_{process_index}.log"), errors="replace") as file:
        return file.read()


def _logged_losses(workdir: str | os.PathLike) -> list[float]:
    """The training loss of every line of workdir/metrics.jsonl, in order."""
    with open(os.path.join(workdir, "metrics.jsonl")) as file:
        return [json.loads(line)["loss"] for line in file]


def _launch_directories(tmp_path, name: str) -> tuple[str, str]:
    """A fresh output directory and log directory for one cluster launch."""
    output_dir, log_dir = tmp_path / name / "outputs", tmp_path / name / "logs"
    output_dir.mkdir(parents=True)
    log_dir.mkdir()
    return str(output_dir), str(log_dir)


def assert_trees_close(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], what: str) -> None:
    """Same paths, and each leaf equal up to reduction-order rounding (`rounding_bound`); the failing path shown."""
    assert sorted(candidate) == sorted(reference), what
    bound = 2 * rounding_bound(multihost_config()) * CANCELLATION_ALLOWANCE
    for path, expected in reference.items():
        if expected.dtype.kind == "f":
            assert relative_deviation(expected, candidate[path]) < bound, f"{what}: {path}"
        else:
            np.testing.assert_array_equal(candidate[path], expected, err_msg=f"{what}: {path}")


@pytest.mark.slow
@requires_gloo
def test_sigterm_to_one_process_stops_both_at_the_same_step_and_two_processes_match_one(tmp_path):
    workdir, reference_workdir = tmp_path / "preempted", tmp_path / "uninterrupted"
    interrupted_outputs, interrupted_logs = _launch_directories(tmp_path, "interrupted")
    with started_cluster(workdir, interrupted_outputs, interrupted_logs) as cluster:
        wait_for_logged_steps(cluster, workdir, STEPS_LOGGED_BEFORE_SIGNAL, FIRST_STEPS_TIMEOUT_SECONDS)
        cluster.processes[1].send_signal(signal.SIGTERM)  # Process 0 gets no signal: it must learn of it.
        cluster.wait(STOP_TIMEOUT_SECONDS)

    interrupted = _read_process_outputs(interrupted_outputs)
    if not all(output.get("interrupted") for output in interrupted):
        pytest.fail(
            f"The run was not interrupted (the processes returned {interrupted}): it reached total_steps="
            f"{TOTAL_STEPS} before the stop was agreed; raise TOTAL_STEPS in the worker."
        )
    stop_step = interrupted[0]["step"]
    statuses = [(output["step"], output["status"]) for output in interrupted]
    assert statuses == [(stop_step, "interrupted")] * NUM_PROCESSES
    assert STEPS_LOGGED_BEFORE_SIGNAL < stop_step < TOTAL_STEPS
    assert sorted(os.listdir(workdir / "checkpoints")) == [str(stop_step)]
    assert _logged_steps(workdir) == list(range(1, stop_step + 1))
    for process_index in range(NUM_PROCESSES):  # JAX's handler took the signal: both learn it at the sync point.
        assert (
            f"A preemption notice (SIGTERM) reached the cluster: saved a checkpoint at step {stop_step}; exiting."
            in _read_log(interrupted_logs, process_index)
        )

    # The same command again resumes from the checkpoint and finishes the run.
    resumed_outputs, resumed_logs = _launch_directories(tmp_path, "resumed")
    run_cluster(workdir, resumed_outputs, resumed_logs)
    for process_index in range(NUM_PROCESSES):
        assert f"Resuming from the checkpoint at step {stop_step}" in _read_log(resumed_logs, process_index)
    resumed = _read_process_outputs(resumed_outputs)
    assert [output["step"] for output in resumed] == [TOTAL_STEPS] * NUM_PROCESSES
    assert sorted(os.listdir(workdir / "checkpoints"), key=int) == [str(stop_step), str(TOTAL_STEPS)]

    reference_outputs, reference_logs = _launch_directories(tmp_path, "reference")
    run_cluster(reference_workdir, reference_outputs, reference_logs, "--restore_final")
    assert_trees_equal(
        read_checkpoint_state(str(reference_workdir), TOTAL_STEPS), read_checkpoint_state(str(workdir), TOTAL_STEPS)
    )
    assert resumed == _read_process_outputs(reference_outputs)  # The final evaluation, to the last bit.
    assert _logged_steps(workdir) == _logged_steps(reference_workdir) == list(range(1, TOTAL_STEPS + 1))
    assert _logged_losses(workdir) == _logged_losses(reference_workdir)

    assert_two_processes_match_one_process(reference_workdir, reference_outputs, tmp_path / "one_process")


def assert_two_processes_match_one_process(cluster_workdir, cluster_outputs: str, reference_workdir) -> None:
    """The uninterrupted cluster's run (each process's view of the cluster and restored state, their joint
    checkpoint, the evaluation) against the same run in this process on its 8 devices."""
    assert jax.device_count() == NUM_PROCESSES * DEVICES_PER_PROCESS
    config = multihost_config()
    reference_results = train_and_evaluate(config, str(reference_workdir))
    reference_template = abstract_train_state(build_run(config).trainer.state)
    reference_state = flatten_by_path(restore_final_state(str(reference_workdir), reference_template))
    for process_index, results in enumerate(_read_process_outputs(cluster_outputs)):
        with open(os.path.join(cluster_outputs, f"process_{process_index}_view.json")) as file:
            view = json.load(file)
        assert view == {
            "process_index": process_index,
            "process_count": NUM_PROCESSES,
            "device_count": NUM_PROCESSES * DEVICES_PER_PROCESS,
            "local_device_count": DEVICES_PER_PROCESS,
            "state_device_count": NUM_PROCESSES * DEVICES_PER_PROCESS,
            "local_batch_size": config.batch_size // NUM_PROCESSES,
        }
        assert results["test_accuracy"] == pytest.approx(reference_results["test_accuracy"], abs=1e-6)
        with np.load(os.path.join(cluster_outputs, f"process_{process_index}.npz")) as restored:
            cluster_state = dict(restored)
        assert_trees_close(reference_state, cluster_state, f"state restored by process {process_index}")
        concept_losses = [path for path in cluster_state if "concept_losses" in path]
        assert concept_losses and all(np.any(cluster_state[path] != 0) for path in concept_losses)
    # The checkpoint the two processes wrote together, read back without either of them.
    reference_checkpoint = read_checkpoint_state(str(reference_workdir), TOTAL_STEPS)
    cluster_checkpoint = read_checkpoint_state(str(cluster_workdir), TOTAL_STEPS)
    assert_trees_close(flatten_by_path(reference_checkpoint), flatten_by_path(cluster_checkpoint), "checkpoint")
    assert sorted(os.listdir(os.path.join(cluster_workdir, "checkpoints"))) == [str(TOTAL_STEPS)]
    assert _logged_steps(cluster_workdir) == _logged_steps(reference_workdir)
    with open(os.path.join(cluster_workdir, "results.json")) as file:
        assert json.load(file)["test_accuracy"] == pytest.approx(reference_results["test_accuracy"], abs=1e-6)
