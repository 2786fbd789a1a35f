"""Save and restore the parameters with the optimizer state, where the reweighting's adversary lives (Orbax).

    python examples/checkpoint.py /tmp/hrrl_checkpoint

The adversary's running concept losses and step count are arrays of the optimizer state, so a checkpoint that
holds the optimizer state holds the adversary; without it a resumed run would restart the concept level from the
prior. The transform's static settings (concept map, sizes, prior, hyperparameters) are not arrays and are not
written: the restore target, built by ``jax.eval_shape(tx.init, params)`` with the same transform, brings them
back. Resuming from the restored state continues exactly as the uninterrupted run does.
"""

import os
import sys
import tempfile

import digits
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import own_loop

from hrrl_jax import robust


def save(directory: str, params, opt_state) -> None:
    """Writes ``{"params", "opt_state"}`` to ``directory`` (absolute, not yet existing) and waits for the write."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory, {"params": params, "opt_state": opt_state})


def restore(directory: str, model: digits.MLP, tx: optax.GradientTransformation, sample_images: np.ndarray) -> dict:
    """Reads a checkpoint of :func:`save` into a target of shapes and dtypes built without any computation."""
    abstract_params = jax.eval_shape(model.init, jax.random.key(0), sample_images)
    target = {"params": abstract_params, "opt_state": jax.eval_shape(tx.init, abstract_params)}
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(directory, target)


def run_steps(train_step, params, opt_state, batches, num_steps: int):
    for _, (images, labels) in zip(range(num_steps), batches):
        params, opt_state, metrics = train_step(params, opt_state, images, labels)
    return params, opt_state, metrics


def main(directory: str, steps_before: int = 100, steps_after: int = 100, seed: int = 0, log=print) -> dict:
    """Trains, saves, restores, and resumes both the restored and the uninterrupted state on the same batches."""
    data = digits.load()
    model = digits.MLP()
    tx = own_loop.make_optimizer(data.concept_sizes)
    train_step = jax.jit(own_loop.make_train_step(model, tx))
    params = model.init(jax.random.key(seed), data.train_images[:1])
    batches = digits.uniform_batches(data, 128, seed)
    params, opt_state, metrics = run_steps(train_step, params, tx.init(params), batches, steps_before)
    log(own_loop.log_line(steps_before, metrics))

    save(directory, params, opt_state)
    restored = restore(directory, model, tx, data.train_images[:1])
    log(f"restored the adversary: p = {np.round(robust.concept_distribution(restored['opt_state']), 4)}")

    remaining = [batch for _, batch in zip(range(steps_after), batches)]
    resumed = run_steps(train_step, restored["params"], restored["opt_state"], iter(remaining), steps_after)
    uninterrupted = run_steps(train_step, params, opt_state, iter(remaining), steps_after)
    log(own_loop.log_line(steps_before + steps_after, resumed[2]))
    return {"saved": (params, opt_state), "restored": restored, "resumed": resumed, "uninterrupted": uninterrupted}


if __name__ == "__main__":
    main(os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(tempfile.mkdtemp(), "checkpoint"))
