"""The loop of own_loop.py with each batch split over every device, two ways: jit with NamedSharding, and shard_map.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/sharded.py   # 8 CPU devices

The reweighting's statistics are those of the global batch (concept counts, class groups, pairwise distances of
the deep features), so both ways give the single-device weights and adversary state, to float tolerance:

* ``jit`` with ``NamedSharding``: the step of own_loop.py, unchanged. The batch is sharded over a 1-D mesh, the
  parameters and the optimizer state (the adversary included) are replicated, and XLA inserts the collectives.
* ``shard_map``: the step is written per device, with the transform built with ``axis_name``: each device passes
  its own examples' losses, labels and features to ``loss_weights`` and ``tx.update``, which reduce the concept
  estimate and the example level's statistics over the axis (the state stays replicated), and the gradients are
  summed with ``psum``.
"""

import sys

import digits
import jax
import jax.numpy as jnp
import numpy as np
import optax
import own_loop
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hrrl_jax import robust

AXIS = "data"


def make_shard_map_step(model: digits.MLP, tx: optax.GradientTransformationExtraArgs, mesh: Mesh):
    """The step per device under ``jax.shard_map``; the batch enters split over ``AXIS``, the state replicated."""
    num_devices = mesh.shape[AXIS]

    def local_step(params, opt_state, images, labels):
        local_size = images.shape[0]

        def weighted_loss(params):
            logits, features = model.apply(params, images)
            per_example_loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            batch = jax.lax.stop_gradient(
                {"per_example_loss": per_example_loss, "labels": labels, "features": features}
            )
            weights = robust.loss_weights(opt_state, **batch)  # This device's examples, global statistics.
            # This device's share of the global weighted mean; psum of the gradients completes it.
            return jnp.sum(weights * per_example_loss) / (local_size * num_devices), (batch, weights)

        grads, (batch, weights) = jax.grad(weighted_loss, has_aux=True)(params)
        grads = jax.lax.psum(grads, AXIS)
        updates, opt_state = tx.update(grads, opt_state, params, **batch)
        metrics = {
            "loss": jax.lax.pmean(jnp.mean(batch["per_example_loss"]), AXIS),
            "concept_distribution": robust.concept_distribution(opt_state),
            "ess": robust.weight_stats(jax.lax.all_gather(weights, AXIS, tiled=True))["ess"],
        }
        return optax.apply_updates(params, updates), opt_state, metrics

    # check_vma=False: the two branches of optax.apply_if_finite's lax.cond (the updated state, the kept one) differ
    # in which values the check counts as varying over the devices, which it refuses; every output here is
    # replicated in fact, computed on every device from the same gathered batch.
    return jax.shard_map(
        local_step,
        mesh=mesh,
        in_specs=(P(), P(), P(AXIS), P(AXIS)),
        out_specs=(P(), P(), P()),
        check_vma=False,
    )


def train(
    parallelism: str = "jit",
    num_steps: int = 300,
    batch_size: int = 128,
    seed: int = 0,
    log_every: int = 50,
    log=print,
) -> own_loop.TrainResult:
    """own_loop.train over every device; ``parallelism`` is ``"jit"`` (NamedSharding) or ``"shard_map"``."""
    mesh = Mesh(np.asarray(jax.devices()), (AXIS,))
    if batch_size % mesh.size:
        raise ValueError(f"batch_size={batch_size} must be a multiple of the {mesh.size} devices; choose another.")
    batch_sharding, replicated = NamedSharding(mesh, P(AXIS)), NamedSharding(mesh, P())

    data = digits.load()
    model = digits.MLP()
    tx = own_loop.make_optimizer(data.concept_sizes, axis_name=AXIS if parallelism == "shard_map" else None)
    params = jax.device_put(model.init(jax.random.key(seed), data.train_images[:1]), replicated)
    opt_state = jax.device_put(tx.init(params), replicated)
    if parallelism == "jit":
        train_step = jax.jit(own_loop.make_train_step(model, tx), out_shardings=(replicated, replicated, replicated))
    elif parallelism == "shard_map":
        train_step = jax.jit(make_shard_map_step(model, tx, mesh))
    else:
        raise ValueError(f'parallelism={parallelism!r} is not one of "jit", "shard_map".')
    log(f"{parallelism} over {mesh.size} devices: {jax.devices()[0].platform}")

    history = []
    for step, (images, labels) in zip(range(num_steps), digits.uniform_batches(data, batch_size, seed)):
        images, labels = jax.device_put((images, labels), batch_sharding)
        params, opt_state, metrics = train_step(params, opt_state, images, labels)
        history.append(metrics)
        if log_every and (step + 1) % log_every == 0:
            log(own_loop.log_line(step + 1, metrics))
    return own_loop.finish(model, params, opt_state, history, data, log)


if __name__ == "__main__":
    for parallelism in sys.argv[1:] or ["jit", "shard_map"]:
        train(parallelism)
