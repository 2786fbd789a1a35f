"""The train state (everything a bit-exact resume needs) and its shape-first, sharded initialisation."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


@flax.struct.dataclass
class TrainState:
    """Parameters, BatchNorm statistics, optimizer state (with the robust adversary), step and RNG key.

    `rng` is the run's raw uint32 key, saved with the state so that a step that draws random numbers can take
    `jax.random.fold_in(rng, step)` and resume bit-exactly. No step draws any today (augmentation is drawn on the
    host from (seed, step)); the field stays because every checkpoint written so far holds it.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


def init_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    image_shape: tuple[int, int, int],
    seed: int,
    replicated: jax.sharding.NamedSharding,
) -> TrainState:
    """Initialises the state directly in its (replicated) sharding: the model's variables, then the optimizer's state.

    The key is an argument of the compiled initialisation, not a constant in it, and the optimizer's state is
    initialised apart: one compilation of a model's (costly) initialisation serves every seed and every optimizer
    chain, so the persistent compilation cache serves the runs of a sweep after the first.
    """
    rng = np.asarray(jax.random.PRNGKey(seed))  # On the host: the same in every process of a cluster.

    def init_variables(key: jax.Array) -> dict[str, Any]:
        return model.init(jax.random.fold_in(key, 0), jnp.zeros((1, *image_shape), jnp.float32), train=False)

    def replicated_call(function, *args):
        shardings = jax.tree_util.tree_map(lambda _: replicated, jax.eval_shape(function, *args))
        return jax.jit(function, out_shardings=shardings)(*args)

    variables = replicated_call(init_variables, rng)
    step, key = replicated_call(lambda key: (jnp.zeros((), jnp.int32), key), rng)
    return TrainState(
        step=step,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        opt_state=replicated_call(tx.init, variables["params"]),
        rng=key,
    )


def abstract_train_state(state: TrainState) -> TrainState:
    """Shapes, dtypes and shardings of `state`, the template Orbax restores into."""
    return jax.tree_util.tree_map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding), state
    )
