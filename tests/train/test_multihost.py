"""Multi-host for real on one machine: 2 processes x 4 CPU devices train, save and restore like 1 x 8 devices.

The two processes (tests/train/multihost_worker.py) join through `jax.distributed.initialize` on localhost,
exchange data with gloo CPU collectives, load only their own rows of each batch and write one Orbax
checkpoint collectively into a shared work directory. Their parameters, adversary state (the concept losses
of the reweighting state inside opt_state) and checkpoint must match a single process with 8 devices.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from hrrl_jax.train.loop import train_and_evaluate
from hrrl_jax.train.run import build_run
from hrrl_jax.train.state import abstract_train_state
from tests.train.helpers import REPO_ROOT, read_checkpoint_state
from tests.train.multihost_worker import (
    INTERRUPT_AT_STEP,
    TOTAL_STEPS,
    flatten_by_path,
    multihost_config,
    restore_final_state,
)

NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 4
CLUSTER_TIMEOUT_SECONDS = 300
# The 8-way gradient sums run in another order (gloo across processes), so they round differently. That
# rounding scales with the summands, not with each entry: small entries of a leaf (momentum traces above all)
# get an absolute tolerance relative to the leaf's largest entry. Measured: at most 9e-5 of it.
RTOL, ATOL_OF_LEAF_MAX = 1e-4, 2e-4


def gloo_collectives_available() -> bool:
    """Whether the installed jaxlib was built with the gloo CPU collectives that the processes talk through."""
    try:
        from jaxlib import _jax
    except ImportError:
        return False
    return hasattr(_jax, "make_gloo_tcp_collectives")


def free_local_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the coordinator binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_cluster(workdir: str, output_dir: str, log_dir: str) -> None:
    """Runs the worker in NUM_PROCESSES processes; fails with their logs on an error or after the timeout.

    Every process is killed and reaped before this returns, whatever happens.
    """
    coordinator_address = f"127.0.0.1:{free_local_port()}"
    environment = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}",
        # On CPU the persistent cache keys differ between processes and only process 0 writes entries: a warm
        # cache lets process 0 skip compiling and wait at the first collective for longer than gloo's 30 s.
        "JAX_ENABLE_COMPILATION_CACHE": "false",
        "PYTHONPATH": os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])),
    }
    processes: list[subprocess.Popen] = []
    log_paths = [os.path.join(log_dir, f"process_{index}.log") for index in range(NUM_PROCESSES)]
    try:
        for process_id, log_path in enumerate(log_paths):
            command = [
                sys.executable, "-m", "tests.train.multihost_worker",
                "--coordinator_address", coordinator_address,
                "--num_processes", str(NUM_PROCESSES),
                "--process_id", str(process_id),
                "--workdir", workdir,
                "--output_dir", output_dir,
            ]  # fmt: skip
            with open(log_path, "w") as log:
                processes.append(
                    subprocess.Popen(command, cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
                )
        deadline = time.monotonic() + CLUSTER_TIMEOUT_SECONDS
        while any(process.poll() is None for process in processes):
            codes = [process.poll() for process in processes]
            if any(code not in (None, 0) for code in codes):  # The others would wait for it until timing out.
                pytest.fail(f"A process failed (exit codes {codes}).\n{_tails(log_paths)}")
            if time.monotonic() > deadline:
                pytest.fail(f"The processes did not finish within {CLUSTER_TIMEOUT_SECONDS} s.\n{_tails(log_paths)}")
            time.sleep(0.5)
        codes = [process.returncode for process in processes]
        if any(codes):
            pytest.fail(f"The processes exited with codes {codes}.\n{_tails(log_paths)}")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


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


def assert_trees_close(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], what: str) -> None:
    """Same paths and leaves equal up to reduction-order rounding (see RTOL); the failing path in the message."""
    assert sorted(candidate) == sorted(reference), what
    for path, expected in reference.items():
        leaf_max = float(np.max(np.abs(expected), initial=0.0))
        np.testing.assert_allclose(
            candidate[path], expected, rtol=RTOL, atol=ATOL_OF_LEAF_MAX * leaf_max, err_msg=f"{what}: {path}"
        )


@pytest.mark.skipif(not gloo_collectives_available(), reason="this jaxlib has no gloo CPU collectives")
def test_two_processes_match_one_process_with_eight_devices(tmp_path):
    assert jax.device_count() == NUM_PROCESSES * DEVICES_PER_PROCESS
    config = multihost_config()
    reference_workdir = str(tmp_path / "one_process")
    reference_results = train_and_evaluate(config, reference_workdir)
    reference_template = abstract_train_state(build_run(config).trainer.state)
    reference_state = flatten_by_path(restore_final_state(reference_workdir, reference_template))

    cluster_workdir, output_dir = tmp_path / "two_processes", tmp_path / "outputs"
    output_dir.mkdir()
    run_cluster(str(cluster_workdir), str(output_dir), str(tmp_path))

    for process_index in range(NUM_PROCESSES):
        with open(output_dir / f"process_{process_index}.json") as file:
            view = json.load(file)
        assert view == {
            "process_index": process_index,
            "process_count": NUM_PROCESSES,
            "device_count": NUM_PROCESSES * DEVICES_PER_PROCESS,
            "local_device_count": DEVICES_PER_PROCESS,
            "state_device_count": NUM_PROCESSES * DEVICES_PER_PROCESS,
            "local_batch_size": config.batch_size // NUM_PROCESSES,
            "interrupted": {"step": INTERRUPT_AT_STEP, "interrupted": True},
            "final_step": TOTAL_STEPS,
            "test_accuracy": pytest.approx(reference_results["test_accuracy"], abs=1e-6),
        }
        with np.load(output_dir / f"process_{process_index}.npz") as restored:
            cluster_state = dict(restored)
        assert_trees_close(reference_state, cluster_state, f"state restored by process {process_index}")
        concept_losses = [path for path in cluster_state if "concept_losses" in path]
        assert concept_losses and all(np.any(cluster_state[path] != 0) for path in concept_losses)

    # The checkpoint the two processes wrote together, read back without either of them.
    reference_checkpoint = read_checkpoint_state(reference_workdir, TOTAL_STEPS)
    cluster_checkpoint = read_checkpoint_state(str(cluster_workdir), TOTAL_STEPS)
    assert_trees_close(flatten_by_path(reference_checkpoint), flatten_by_path(cluster_checkpoint), "checkpoint")
    assert sorted(os.listdir(cluster_workdir / "checkpoints")) == [str(INTERRUPT_AT_STEP), str(TOTAL_STEPS)]
    assert _logged_steps(cluster_workdir) == _logged_steps(reference_workdir) == [INTERRUPT_AT_STEP, TOTAL_STEPS]
    with open(cluster_workdir / "results.json") as file:
        assert json.load(file)["test_accuracy"] == pytest.approx(reference_results["test_accuracy"], abs=1e-6)
