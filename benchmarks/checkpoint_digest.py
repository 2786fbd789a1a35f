"""Times the checkpoint digest (hrrl_jax.workdir.digest) on a real train state: what verification adds to a save and
to a restore.

    python benchmarks/checkpoint_digest.py --json benchmarks/results/cpu_checkpoint_digest_resnet50.json

Builds the trainer's own state for the model (ImageNet's 1000 classes, SGD with momentum, the default HRRL
transform), then times, median over `--repeats`: the host copy of the state's shards, the SHA-256 over them, a
synchronous Orbax save, and a restore with and without the digest check (`Checkpointer.restore_latest`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import base  # noqa: E402
from hrrl_jax.data import describe_dataset  # noqa: E402
from hrrl_jax.train.run import build_trainer  # noqa: E402
from hrrl_jax.train.state import abstract_train_state  # noqa: E402
from hrrl_jax.workdir import Checkpointer  # noqa: E402
from hrrl_jax.workdir import digest as digests  # noqa: E402


def median_seconds(function: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--method", default="hrrl")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()

    config = base.get_config()
    config.model.name, config.model.width = args.model, 64
    config.dataset.name, config.dataset.image_size = "imagenet2012", 224
    config.robust.method = args.method
    info = describe_dataset("imagenet2012")
    sizes = np.bincount(np.asarray(info.hierarchy.concept_of_class), minlength=info.hierarchy.num_concepts)
    state = build_trainer(config, info, sizes, total_steps=1000).state
    state_bytes = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(state))

    host_copy = median_seconds(lambda: digests.local_shards(state), args.repeats)
    shards = digests.local_shards(state)
    sha256 = median_seconds(lambda: digests.digest_of_shards(shards), args.repeats)

    with tempfile.TemporaryDirectory() as directory:
        checkpointer = Checkpointer(os.path.join(directory, "checkpoints"), asynchronous=False, keep=1)
        save = median_seconds(lambda: (checkpointer.save(1, state, {"step": 1}), checkpointer.wait()), 1)
        template = abstract_train_state(state)
        verified = median_seconds(lambda: checkpointer.restore_latest(template), args.repeats)
        manager_restore_args = ocp.args.Composite(state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore())
        unverified = median_seconds(
            lambda: jax.block_until_ready(checkpointer._manager.restore(1, args=manager_restore_args)["state"]),
            args.repeats,
        )
        checkpointer.close()

    result = {
        "date": datetime.date.today().isoformat(),
        "device": jax.devices()[0].device_kind,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "jax": jax.__version__,
        "model": args.model,
        "method": args.method,
        "state_mib": state_bytes / 2**20,
        "host_copy_s": host_copy,
        "sha256_s": sha256,
        "sha256_mib_per_s": state_bytes / 2**20 / sha256,
        "save_s": save,
        "restore_unverified_s": unverified,
        "restore_verified_s": verified,
        "verification_overhead_s": verified - unverified,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(result, file, indent=2)


if __name__ == "__main__":
    main()
