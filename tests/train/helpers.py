"""Tiny configs and checkpoint readers shared by the trainer tests."""

from __future__ import annotations

import os
import sys

import numpy as np
import orbax.checkpoint as ocp

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from configs import base  # noqa: E402

# ResNet-10 (one block a stage): the tests' runs trace, compile and run about 40 % less than ResNet-18's.
TINY_OVERRIDES = {
    "dataset.name": "digits",
    "model.name": "resnet10",
    "model.width": 4,
    "batch_size": 32,
    "total_steps": 12,
    "log_every_steps": 3,
    "checkpoint_every_steps": 100,
    "optimizer.learning_rate": 0.05,
}


def tiny_config(**overrides):
    """The base config (ERM) shrunk to digits, a width-4 ResNet-10 and a few steps; `a__b=v` sets `a.b`."""
    config = base.get_config()
    for key, value in {**TINY_OVERRIDES, **{k.replace("__", "."): v for k, v in overrides.items()}}.items():
        node = config
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def tiny_flags(**overrides) -> list[str]:
    """The same tiny config as `--config.key=value` flags for launch.py."""
    merged = {**TINY_OVERRIDES, **{k.replace("__", "."): v for k, v in overrides.items()}}
    return [f"--config.{key}={value}" for key, value in merged.items()]


def read_checkpoint_state(workdir: str, step: int) -> dict:
    """The raw saved train state at `step` as nested dicts of numpy arrays (no template needed).

    Read as numpy, not as jax arrays in the saved shardings, so a checkpoint written by several processes
    (whose devices this process does not have) can be read too.
    """
    import jax

    path = os.path.abspath(os.path.join(workdir, "checkpoints", str(step), "state"))
    checkpointer = ocp.PyTreeCheckpointer()
    as_numpy = jax.tree_util.tree_map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), checkpointer.metadata(path).item_metadata.tree
    )
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))


def assert_trees_equal(first, second) -> None:
    """Bit-identical leaves, with the failing path in the message."""
    import jax

    flat_first = jax.tree_util.tree_leaves_with_path(first)
    flat_second = jax.tree_util.tree_leaves(second)
    assert len(flat_first) == len(flat_second)
    for (path, a), b in zip(flat_first, flat_second):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))


# Two runs whose reductions sum in another order (8 devices vs 1, two processes vs one, another CPU instruction set
# or thread count) differ by float32 rounding. A sum of n float32 terms in any order lies within γ = n·u of the exact
# (u = 2^-24; Higham's order-independent bound for terms of one sign), with n the longest reduction of a step: the
# BatchNorm statistics of the stem over batch x height x width values. Relative to a state leaf, gradient sums whose
# terms cancel multiply that by their condition number Σ|g|/|Σg|, allowed up to CANCELLATION_ALLOWANCE. A per-device
# statistic or gradient in place of the global one, or the one-pass variance's cancellation, is 1e-3 to 1 instead.
UNIT_ROUNDOFF = float(np.finfo(np.float32).eps) / 2
CANCELLATION_ALLOWANCE = 100
NATIVE_IMAGE_SIDE = {"digits": 8, "fashion_mnist": 28}


def rounding_bound(config) -> float:
    """γ = n·u for the longest reduction of a train step of `config` (the stem's BatchNorm statistics)."""
    side = config.dataset.image_size or NATIVE_IMAGE_SIDE[config.dataset.name]
    return config.batch_size * side * side * UNIT_ROUNDOFF


def relative_deviation(reference, other) -> float:
    """||other - reference|| / ||reference|| over the floating-point leaves of a (sub)tree."""
    import jax

    pairs = [
        (np.asarray(a, np.float64), np.asarray(b, np.float64))
        for a, b in zip(jax.tree_util.tree_leaves(reference), jax.tree_util.tree_leaves(other), strict=True)
        if np.asarray(a).dtype.kind == "f"
    ]
    difference = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in pairs))
    return float(difference / max(np.sqrt(sum(np.sum(a**2) for a, _ in pairs)), 1e-30))


def train_on_one_and_all_devices(config, splits, steps: int = 2) -> list[tuple]:
    """[(state, metrics) on one device, (state, metrics) on all devices] after `steps` train steps of `config` on
    `splits`, each from a fresh trainer: what the 1 = 8 devices tests compare."""
    import jax

    from hrrl_jax.train.run import build_run

    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        run = build_run(config, devices=devices, splits=splits)
        state = run.trainer.state
        for step in range(steps):
            state, metrics = run.trainer.jitted_train_step(state, run.train_pipeline.global_batch(step))
        results.append((state, metrics))
    return results
