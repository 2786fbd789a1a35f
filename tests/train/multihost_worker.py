"""One process of the two-process training tests (test_multihost.py): join the cluster, then train.

    python -m tests.train.multihost_worker --coordinator_address 127.0.0.1:PORT --num_processes 2 \
        --process_id I --workdir SHARED_DIR --output_dir OUT [--restore_final]

Every process runs the same commands on its own fake CPU devices (XLA_FLAGS set by the caller): one call of
the real `train_and_evaluate` on `multihost_config()` (resuming from the workdir's latest checkpoint if there is
one), which the test may stop with a signal; `OUT/process_I.json` holds what the call returned. With
`--restore_final`, the final checkpoint is then restored into a fresh run's sharded state, as a resumed job builds
it: `OUT/process_I.npz` holds every leaf of that state (keyed by its path) and `OUT/process_I_view.json` what the
process saw of the cluster, for the test to compare with a single process.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from hrrl_jax.train.loop import train_and_evaluate
from hrrl_jax.train.run import build_run
from hrrl_jax.train.state import TrainState, abstract_train_state
from hrrl_jax.workdir.checkpoints import Checkpointer
from tests.train.helpers import tiny_config

# The preemption test signals after 3 logged steps; the stop comes at JAX's preemption sync point, the step after
# the furthest one a process has reached when the notice spreads (step 5 here, at 0.5 to 1 s per step on 2 CPU
# cores). 10 leaves 4 steps of room and keeps the interrupted, resumed and reference runs short.
TOTAL_STEPS = 10


def multihost_config() -> ml_collections.ConfigDict:
    """The tiny HRRL run that the interrupted, resumed and uninterrupted clusters and the single-process reference
    all train (the same total_steps, hence the same LR schedule), with a metrics line every step: the test waits
    for a few lines of metrics.jsonl before it sends the signal."""
    # Learning rate 0.01 and the two-pass BatchNorm variance: tiny BatchNorm nets amplify the rounding
    # differences of another reduction order, E[x²] - E[x]² most (see test_eight_devices_match_one_device).
    return tiny_config(
        robust__method="hrrl",
        optimizer__learning_rate=0.01,
        model__batch_norm_variance="two_pass",
        total_steps=TOTAL_STEPS,
        log_every_steps=1,
    )


def restore_final_state(workdir: str, template: TrainState) -> TrainState:
    """The newest checkpoint in `workdir` (TOTAL_STEPS), digest-verified by every process, restored into the
    shapes and shardings of `template`."""
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), asynchronous=False)
    try:
        state, _, step = checkpointer.restore_latest(template)
    finally:
        checkpointer.close()
    assert step == TOTAL_STEPS, step
    return state


def flatten_by_path(state: Any) -> dict[str, np.ndarray]:
    """Host copies of the leaves of a replicated state, keyed by their pytree paths."""
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(state)}


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinator_address", required=True, help="host:port of process 0's coordinator.")
    parser.add_argument("--num_processes", type=int, required=True)
    parser.add_argument("--process_id", type=int, required=True)
    parser.add_argument("--workdir", required=True, help="Work directory shared by all processes.")
    parser.add_argument("--output_dir", required=True, help="Where the process_I.* outputs go.")
    parser.add_argument(
        "--restore_final",
        action="store_true",
        help="After training, restore the final checkpoint and write process_I.npz and process_I_view.json.",
    )
    return parser.parse_args()


def main() -> None:
    arguments = parse_arguments()
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=arguments.coordinator_address,
        num_processes=arguments.num_processes,
        process_id=arguments.process_id,
        initialization_timeout=120,
    )
    results = train_and_evaluate(multihost_config(), arguments.workdir)
    prefix = os.path.join(arguments.output_dir, f"process_{jax.process_index()}")
    with open(prefix + ".json", "w") as file:
        json.dump(results, file)
    if arguments.restore_final:
        restore_and_describe(arguments.workdir, prefix)
    jax.distributed.shutdown()


def restore_and_describe(workdir: str, prefix: str) -> None:
    """Restores the final checkpoint into a fresh run's sharded state; writes its leaves and the cluster view."""
    run = build_run(multihost_config())  # A fresh run on all devices of all processes, as a resumed job builds it.
    state = restore_final_state(workdir, abstract_train_state(run.trainer.state))
    cluster_view = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "state_device_count": len(jax.tree_util.tree_leaves(state.params)[0].sharding.device_set),
        "local_batch_size": run.train_pipeline.local_batch_size,
    }
    np.savez(prefix + ".npz", **flatten_by_path(state))
    with open(prefix + "_view.json", "w") as file:
        json.dump(cluster_view, file)


if __name__ == "__main__":
    main()
