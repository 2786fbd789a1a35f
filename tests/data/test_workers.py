"""Grain worker processes: the batches of any worker count are those of none, and no worker outlives its use.

Worker processes are found with `multiprocessing.active_children()` in this process, and through /proc for the
children of a child process (the signal tests, which run a reader in a subprocess: `tests/data/signal_child.py`).
"""

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest

from hrrl_jax.data import InputPipeline, SplitData
from hrrl_jax.data.image_readers import ImageReader
from hrrl_jax.data.loaders import FASHION_MNIST_INFO
from hrrl_jax.errors import DataError
from tests.train.helpers import REPO_ROOT

NUM_EXAMPLES, BATCH = 70, 16  # 4 steps per epoch, the last 6 examples of each permutation dropped.


def _fashion_like_split() -> SplitData:
    """Random 28x28 images with Fashion-MNIST's description (so its pad-crop-flip applies), held in memory."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (NUM_EXAMPLES, 28, 28, 1), dtype=np.uint8)
    return SplitData.from_arrays(FASHION_MNIST_INFO, images, np.arange(NUM_EXAMPLES) % 10)


def _assert_same_batches(first: list[dict], second: list[dict]) -> None:
    assert len(first) == len(second)
    for one, other in zip(first, second):
        assert one.keys() == other.keys()
        for key in one:
            np.testing.assert_array_equal(np.asarray(one[key]), np.asarray(other[key]), err_msg=key)


def test_two_workers_build_the_batches_of_none_and_stop_when_closed_or_done():
    split = _fashion_like_split()
    in_process = InputPipeline(split, global_batch_size=BATCH, seed=5, train=True)
    workers = InputPipeline(split, global_batch_size=BATCH, seed=5, train=True, num_workers=2)
    expected = [in_process.host_batch(step) for step in range(2, 10)]  # Steps of epochs 0, 1 and 2.
    _assert_same_batches(list(in_process.iterate(2, 10)), expected)
    iterator = workers.iterate(2)  # Without end: stopped by close().
    batches = [next(iterator) for _ in range(8)]
    assert len(multiprocessing.active_children()) == 2
    iterator.close()
    assert not multiprocessing.active_children()
    _assert_same_batches(batches, expected)

    evaluation = dict(global_batch_size=BATCH, seed=5, train=False)
    expected_eval = list(InputPipeline(split, **evaluation).eval_batches())
    assert len(expected_eval) == 5 and expected_eval[-1]["mask"].sum() == NUM_EXAMPLES - 4 * BATCH
    _assert_same_batches(list(InputPipeline(split, **evaluation, num_workers=2).eval_batches()), expected_eval)
    assert not multiprocessing.active_children()  # An exhausted pass has stopped its workers.


BAD_EXAMPLE = 41


class _OneUnreadableExample(ImageReader):
    """Zeros, except that example BAD_EXAMPLE cannot be read (pickled by reference into the workers)."""

    def stored(self, indices):
        if BAD_EXAMPLE in indices:
            raise DataError(f"example {BAD_EXAMPLE} is unreadable")
        return np.zeros((len(indices), 28, 28, 1), np.uint8)


def test_an_error_in_a_worker_names_the_example_and_the_step_and_stops_the_workers():
    split = SplitData(FASHION_MNIST_INFO, np.arange(NUM_EXAMPLES) % 10, _OneUnreadableExample())
    order = np.random.default_rng([4, 0, 0]).permutation(NUM_EXAMPLES)  # Epoch 0 of seed 4 (hrrl_jax.data.batches).
    bad_step = int(np.flatnonzero(order == BAD_EXAMPLE)[0]) // BATCH
    assert 0 < bad_step < 4  # Earlier steps succeed; BAD_EXAMPLE is not among the dropped remainder.
    iterator = InputPipeline(split, global_batch_size=BATCH, seed=4, train=True, num_workers=2).iterate(0)
    for _ in range(bad_step):
        next(iterator)
    with pytest.raises(DataError) as error:
        next(iterator)
    message = str(error.value)
    assert f"example {BAD_EXAMPLE} is unreadable" in message
    assert f"while building the training batch of step {bad_step}" in message
    assert not multiprocessing.active_children()


def _running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (an exited child its new parent has not reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _start_child(mode: str) -> subprocess.Popen:
    """tests/data/signal_child.py in `mode`, in its own process group."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.data.signal_child", mode],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def started_children() -> Iterator[dict[str, subprocess.Popen]]:
    """Both signal tests' children, started together at the first one's start: each spends its seconds importing
    and starting its workers, which two cores do side by side. Every group still running at the end is killed."""
    children = {}
    try:
        for mode in ("stop_request", "default_handlers"):
            children[mode] = _start_child(mode)
        yield children
    finally:
        for child in children.values():
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()


@contextlib.contextmanager
def _child(children: dict[str, subprocess.Popen], mode: str) -> Iterator[tuple[subprocess.Popen, list[int]]]:
    """The started child of `mode` and the pids of its two workers once they run; its group is killed on the way
    out if it still runs (a failed test leaves nothing behind)."""
    child = children[mode]
    try:
        line = child.stdout.readline()
        while line and not line.startswith("workers "):
            line = child.stdout.readline()
        pids = [int(pid) for pid in line.split()[1:]]
        assert len(pids) == 2 and all(_running(pid) for pid in pids), f"no workers reported: {line!r}"
        yield child, pids
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def _wait_until_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [pid for pid in pids if _running(pid)]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads process states from /proc")
def test_sigterm_to_the_process_group_leaves_the_stop_to_the_reader_and_no_worker_behind(started_children):
    with _child(started_children, "stop_request") as (child, pids):
        os.killpg(child.pid, signal.SIGTERM)  # As a scheduler or Ctrl-C does: every process of the group gets it.
        output = child.stdout.read()
        assert child.wait(timeout=60) == 0, output
    assert "stopped after SIGTERM; read 3 more batches" in output  # The workers ignored the signal and served on.
    assert not _wait_until_gone(pids, seconds=5)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads process states from /proc")
def test_workers_exit_when_sigterm_kills_their_parent(started_children):
    with _child(started_children, "default_handlers") as (child, pids):
        child.send_signal(signal.SIGTERM)  # No handler: the reader dies at once, without closing its iterator.
        assert child.wait(timeout=60) == -signal.SIGTERM
    assert not _wait_until_gone(pids, seconds=10)
