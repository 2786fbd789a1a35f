"""Batches built ahead by Grain, in a thread of this process or in worker processes that never outlive it.

`prefetched(make, start, stop, ...)` yields make(start), ..., make(stop - 1) in order: a Grain
`MapDataset.range` mapped by `make`. With W worker processes (`IterDataset.mp_prefetch`), worker w builds keys
start + w, start + w + W, ... and this process takes them in turn, so the output does not depend on W; with
none, one thread of this process builds them ahead.

Worker processes ignore SIGINT and SIGTERM: Ctrl-C reaches the whole process group, and so may a scheduler's
SIGTERM, and the stop is the trainer's to make at an agreed step (hrrl_jax/train/preemption.py), after which
it closes the iterator. (A worker that is still starting, importing for its first seconds, has the default
handlers: a signal to the process group then ends it, and the trainer's next batch fails with Grain's "worker
process was terminated unexpectedly"; the run's last checkpoint is intact.)
Workers exit when the process that started them is gone, so a killed trainer leaves none behind, and are
stopped and joined when the iterator is closed, exhausted, fails or is garbage collected.
"""

from __future__ import annotations

import atexit
import functools
import gc
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

import grain
import grain.multiprocessing
from absl import flags

_ORPHAN_POLL_SECONDS = 0.5


def prefetched(
    make: Callable[[int], Any], start: int, stop: int | None = None, *, num_workers: int, prefetch: int
) -> Generator[Any, None, None]:
    """make(k) for k in [start, stop) (stop None: without end), built `prefetch` ahead per worker.

    Args:
      make: a picklable function of the key (with workers it runs in the workers, which unpickle it).
      start, stop: the keys.
      num_workers: worker processes; 0 builds in this process, in one background thread if `prefetch` > 0.
      prefetch: items each worker (or the thread) keeps ready.

    Errors raised by `make` are re-raised here, after the workers are stopped.
    """
    if num_workers < 0 or prefetch < 0:
        raise ValueError(f"num_workers and prefetch must be >= 0; got {num_workers} and {prefetch}.")
    _mark_absl_flags_parsed()
    dataset = grain.MapDataset.range(start, sys.maxsize if stop is None else stop).map(make)
    if num_workers == 0:
        threads = 1 if prefetch else 0
        iter_dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch))
    else:
        iter_dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)).mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=max(1, prefetch)),
            worker_init_fn=functools.partial(_prepare_worker, os.getpid()),
        )
    iterator = iter(iter_dataset)
    try:
        yield from iterator
    finally:
        iterator.close()
        del iterator
        if num_workers:  # Only workers' batches live in shared memory: no full garbage collection without them.
            _release_shared_memory()


def _mark_absl_flags_parsed() -> None:
    """Grain reads absl flags (its worker-profiling switch) and fails if they are unparsed, as they are outside an
    absl program; there their defaults are taken as parsed."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _release_shared_memory() -> None:
    """Frees now the shared memory of batches no longer used (after an iterator closes, and at exit), which the
    resource tracker would otherwise report as leaked when the process exits.

    Grain frees a batch's shared memory when its array is collected, in a background thread of one worker:
    collecting reference cycles (a closed iterator's buffers) and then waiting for a no-op task of that thread,
    queued after the frees, leaves none pending. The thread exists once workers have handed over a batch. (It
    is a private attribute; should it go, only the tracker's warning comes back.)
    """
    release_thread = getattr(grain.multiprocessing.SharedMemoryArray, "_del_thread_pool", None)
    if release_thread is not None:
        gc.collect()
        release_thread.apply(int)


# Before multiprocessing's own exit handler (registered when grain imported it) stops that thread.
atexit.register(_release_shared_memory)


def _prepare_worker(parent_pid: int, worker_index: int, worker_count: int) -> None:
    """Run first in each worker: ignore stop signals and exit once the parent process is gone."""
    del worker_index, worker_count
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True, name="parent-watch").start()


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(_ORPHAN_POLL_SECONDS)
    os._exit(1)
