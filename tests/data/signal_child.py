"""A reader of batches built by two Grain worker processes, for the signal tests of tests/data/test_workers.py.

    python -m tests.data.signal_child stop_request|default_handlers

Prints `workers PID PID` once both workers run, then reads batches without end. `stop_request` reads under
the trainer's StopRequest: after a SIGTERM it reads 3 more batches (as a multi-host run does until its agreed
step), closes the iterator and exits 0. `default_handlers` keeps Python's default handling, so SIGTERM kills it.
"""

import multiprocessing
import sys

from hrrl_jax.data import InputPipeline, load_split
from hrrl_jax.train.preemption import StopRequest

BATCHES_AFTER_THE_SIGNAL = 3


def _read_until_both_workers_run(iterator) -> None:
    """Reads batches until both workers have started (the second starts with its first batch), then prints them."""
    while len(multiprocessing.active_children()) < 2:
        next(iterator)
    print("workers", *sorted(child.pid for child in multiprocessing.active_children()), flush=True)


def main(mode: str) -> None:
    pipeline = InputPipeline(load_split("digits", "train"), global_batch_size=32, seed=0, train=True, num_workers=2)
    iterator = pipeline.iterate(0)
    if mode == "default_handlers":
        _read_until_both_workers_run(iterator)
        for _ in iterator:
            pass
    with StopRequest() as stop:  # Before the workers are reported: the test signals as soon as they are.
        _read_until_both_workers_run(iterator)
        step = 0
        while not stop.should_stop(step):
            next(iterator)
            step += 1
        for _ in range(BATCHES_AFTER_THE_SIGNAL):
            next(iterator)
    iterator.close()
    print(f"stopped after {stop.signal_name}; read {BATCHES_AFTER_THE_SIGNAL} more batches", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
