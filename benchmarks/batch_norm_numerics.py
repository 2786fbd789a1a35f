"""BatchNorm variance numerics: each mode's error against float64 and its 8-vs-1-device drift in training.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/batch_norm_numerics.py --json OUT.json

1. The relative error of the batch variance against float64, for activations whose mean is 0, 10, 100 and
   1000 times their spread (16 x 8 x 8 x 64 values per batch).
2. XLA's bytes accessed by one BatchNorm layer, forward and backward, on a bf16 activation of 64 x 32 x 32 x 64,
   compiled for this machine's backend.
3. The tiny HRRL run of the 8 = 1 device test (digits, ResNet-18 of width 4, batch 32, learning rate 0.01),
   trained on 1 and on 8 devices: after 3 and 30 steps, the relative loss difference, the largest difference
   of the concept distribution and the largest relative (norm) difference of a state leaf.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import base  # noqa: E402
from hrrl_jax.data import load_data  # noqa: E402
from hrrl_jax.models.batch_norm import BatchNorm, batch_moments  # noqa: E402
from hrrl_jax.schema import BATCH_NORM_VARIANCES  # noqa: E402
from hrrl_jax.train.run import build_run  # noqa: E402

MEAN_OVER_SPREAD = (0, 10, 100, 1000)
CHECKPOINT_STEPS = (3, 30)


def variance_errors(variance: str) -> dict[str, float]:
    """Largest relative error of the batch variance over 64 channels, per mean / spread ratio."""
    noise = np.random.default_rng(0).normal(size=(16, 8, 8, 64))
    errors = {}
    for ratio in MEAN_OVER_SPREAD:
        x = (noise + ratio).astype(np.float32)
        _, var = jax.jit(batch_moments, static_argnums=1)(jnp.asarray(x), variance)
        exact = x.astype(np.float64).var(axis=(0, 1, 2))
        errors[str(ratio)] = float(np.max(np.abs(np.asarray(var, np.float64) - exact) / exact))
    return errors


def layer_bytes_accessed(variance: str) -> float:
    """XLA's estimate of the bytes one BatchNorm layer's forward and backward touch (bf16 activation)."""
    layer = BatchNorm(use_running_average=False, variance=variance, dtype=jnp.bfloat16)
    x = jnp.ones((64, 32, 32, 64), jnp.bfloat16)
    variables = layer.init(jax.random.key(0), x)

    def loss(params, x):
        y, _ = layer.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, mutable=["batch_stats"])
        return jnp.sum(jnp.square(y.astype(jnp.float32)))

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(variables["params"], x).compile()
    return float(compiled.cost_analysis()["bytes accessed"])


def tiny_config(variance: str):
    """HRRL at the base config's robust settings on digits; fixed here, so the recorded figures stay reproducible."""
    config = base.get_config()
    config.total_steps = 400
    config.dataset.name, config.model.width, config.batch_size = "digits", 4, 32
    config.robust.method, config.optimizer.learning_rate = "hrrl", 0.01
    config.model.batch_norm_variance = variance
    return config


def largest_leaf_deviation(reference, other) -> float:
    deviations = [
        np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64))
        / max(np.linalg.norm(np.asarray(a, np.float64)), 1e-30)
        for a, b in zip(jax.tree_util.tree_leaves(reference), jax.tree_util.tree_leaves(other), strict=True)
        if np.asarray(a).dtype.kind == "f"
    ]
    return float(max(deviations))


def device_drift(variance: str) -> dict[str, dict[str, float]]:
    """1 vs 8 devices after each of CHECKPOINT_STEPS steps."""
    config = tiny_config(variance)
    splits = load_data(config)
    one = build_run(config, devices=jax.devices()[:1], splits=splits)
    eight = build_run(config, devices=jax.devices(), splits=splits)
    state_one, state_eight = one.trainer.state, eight.trainer.state
    drift = {}
    for step in range(max(CHECKPOINT_STEPS)):
        state_one, metrics_one = one.trainer.jitted_train_step(state_one, one.train_pipeline.global_batch(step))
        state_eight, metrics_eight = eight.trainer.jitted_train_step(
            state_eight, eight.train_pipeline.global_batch(step)
        )
        if step + 1 in CHECKPOINT_STEPS:
            host_one, host_eight, m_one, m_eight = jax.device_get((state_one, state_eight, metrics_one, metrics_eight))
            drift[str(step + 1)] = {
                "loss_relative": float(abs(m_eight["loss"] - m_one["loss"]) / abs(m_one["loss"])),
                "concept_distribution_max_abs": float(
                    np.max(np.abs(m_eight["concept_distribution"] - m_one["concept_distribution"]))
                ),
                "largest_leaf_relative": largest_leaf_deviation(host_one, host_eight),
            }
    return drift


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="Where to write the results (printed in any case).")
    args = parser.parse_args(argv)
    if jax.device_count() < 8:
        raise SystemExit("needs 8 devices: run with XLA_FLAGS=--xla_force_host_platform_device_count=8")
    results = {
        "setup": {
            "date": datetime.date.today().isoformat(),
            "jax": jax.__version__,
            "python": platform.python_version(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "cpu": platform.processor() or platform.machine(),
        },
        "variance_relative_error": {variance: variance_errors(variance) for variance in BATCH_NORM_VARIANCES},
        "layer_bytes_accessed": {variance: layer_bytes_accessed(variance) for variance in BATCH_NORM_VARIANCES},
        "eight_vs_one_device": {variance: device_drift(variance) for variance in BATCH_NORM_VARIANCES},
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as file:
            file.write(text + "\n")


if __name__ == "__main__":
    main()
