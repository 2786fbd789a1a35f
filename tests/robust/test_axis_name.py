"""axis_name: under shard_map over 8 devices, each holding an eighth of the batch, the weights and the
replicated state equal the single-device ones."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from hrrl_jax.robust import hierarchical_reweighting, loss_weights
from tests.robust.helpers import CONCEPT_OF_CLASS, CONCEPT_SIZES, random_batch


def _step(tx):
    def step(state, loss, labels, features):
        weights = loss_weights(state, labels, per_example_loss=loss, features=features)
        _, state = tx.update({}, state, per_example_loss=loss, labels=labels, features=features)
        return weights, state

    return step


@pytest.mark.parametrize("example_level", [{"gamma": 0.5}, {"radius": 0.2}, {"example_level": "none"}])
def test_shard_map_over_eight_devices_equals_one_device(example_level):
    options = {"divergence": "l2", "lam": 0.5, **example_level}
    single = hierarchical_reweighting(CONCEPT_OF_CLASS, CONCEPT_SIZES, **options)
    mapped = hierarchical_reweighting(CONCEPT_OF_CLASS, CONCEPT_SIZES, axis_name="data", **options)
    mesh = jax.make_mesh((8,), ("data",))
    batch_spec, replicated = PartitionSpec("data"), PartitionSpec()
    mapped_step = jax.jit(
        jax.shard_map(
            _step(mapped),
            mesh=mesh,
            in_specs=(replicated, batch_spec, batch_spec, batch_spec),
            out_specs=(batch_spec, replicated),
        )
    )
    single_state = single.init({})
    mapped_state = jax.device_put(mapped.init({}), NamedSharding(mesh, replicated))
    for seed in range(3):
        batch = random_batch(seed, size=32)
        single_weights, single_state = jax.jit(_step(single))(single_state, *batch)
        sharded = [jax.device_put(x, NamedSharding(mesh, batch_spec)) for x in batch]
        mapped_weights, mapped_state = mapped_step(mapped_state, *sharded)
        np.testing.assert_allclose(mapped_weights, single_weights, rtol=1e-6)
        np.testing.assert_allclose(mapped_state.concept_losses, single_state.concept_losses, rtol=1e-5)
    assert int(mapped_state.step) == 3 and mapped_state.concept_losses.sharding.is_fully_replicated
    assert np.ptp(np.asarray(single_weights)) > 0.1  # The weights are not trivially uniform.


def test_an_out_of_range_label_on_one_device_skips_the_update_on_every_device():
    tx = hierarchical_reweighting(CONCEPT_OF_CLASS, CONCEPT_SIZES, axis_name="data", example_level="none")
    mesh = jax.make_mesh((8,), ("data",))
    batch_spec = PartitionSpec("data")

    def update(state, loss, labels):
        return tx.update({}, state, per_example_loss=loss, labels=labels)[1]

    step = jax.jit(
        jax.shard_map(update, mesh=mesh, in_specs=(PartitionSpec(), batch_spec, batch_spec), out_specs=PartitionSpec())
    )
    loss, labels, _ = random_batch(0, size=32)
    state = step(
        tx.init({}), *[jax.device_put(x, NamedSharding(mesh, batch_spec)) for x in (loss, labels.at[30].set(7))]
    )
    assert (int(state.step), int(state.skipped_updates)) == (0, 1)
    np.testing.assert_array_equal(state.concept_losses, 0.0)
