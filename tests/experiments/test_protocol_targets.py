"""The targets' pools, from which probes are fitted and few-shot support sets drawn, are the same for every run."""

import numpy as np
import pytest

from hrrl_jax import schema
from hrrl_jax.experiments.protocol_targets import load_target


def target_config(*, seed=0, method="erm", draw_seed=0):
    config = schema.default_config()
    config.seed = seed
    config.robust.method = method
    config.dataset.exclude_classes = (3, 6, 9)
    config.dataset.validation_fraction = 0.1
    config.compare = schema.default_compare_config()
    config.compare.probe_train_examples = 300
    config.compare.draw_seed = draw_seed
    return config


def pool_of(config, name):
    pool = load_target(config, name, "confirmation").pool
    return pool.get_images(np.arange(len(pool))), pool.labels


@pytest.mark.parametrize("name", ["digits", "held_out"])
def test_the_pool_depends_on_the_draw_seed_and_not_on_the_run(name):
    images, labels = pool_of(target_config(), name)
    assert len(labels) == 300
    other_run_images, other_run_labels = pool_of(target_config(seed=7, method="hrrl"), name)
    np.testing.assert_array_equal(other_run_images, images)
    np.testing.assert_array_equal(other_run_labels, labels)
    other_draw_images, _ = pool_of(target_config(draw_seed=1), name)
    assert not np.array_equal(other_draw_images, images)
