"""The train state (everything a bit-exact resume needs) and its shape-first, sharded initialisation."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
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
    """Initialises the state directly in its (replicated) sharding: shapes first, then one jitted init."""

    def init() -> TrainState:
        rng = jax.random.PRNGKey(seed)
        variables = model.init(jax.random.fold_in(rng, 0), jnp.zeros((1, *image_shape), jnp.float32), train=False)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
            rng=rng,
        )

    abstract = jax.eval_shape(init)
    shardings = jax.tree_util.tree_map(lambda _: replicated, abstract)
    return jax.jit(init, out_shardings=shardings)()


def abstract_train_state(state: TrainState) -> TrainState:
    """Shapes, dtypes and shardings of `state`, the template Orbax restores into."""
    return jax.tree_util.tree_map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding), state
    )
