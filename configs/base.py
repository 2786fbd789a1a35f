"""Every config key with its default (hrrl_jax.schema); the experiment configs import this and change a few fields."""

import ml_collections

from hrrl_jax import schema


def get_config() -> ml_collections.ConfigDict:
    return schema.default_config()
