"""Loud, never silent: out-of-range labels, non-finite losses and states restored into other settings."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.experimental import checkify

from hrrl_jax.robust import (
    adopt_settings,
    concept_distribution,
    concept_loss_estimate,
    find_reweighting_state,
    hierarchical_reweighting,
    loss_weights,
)
from tests.robust.helpers import CONCEPT_OF_CLASS, CONCEPT_SIZES, random_batch


def _advanced_state(tx, num_steps: int = 2):
    state = tx.init({})
    for seed in range(num_steps):
        loss, labels, features = random_batch(seed)
        _, state = tx.update({}, state, per_example_loss=loss, labels=labels, features=features)
    return state


@pytest.mark.parametrize("bad_label", [6, -1, 10])
def test_concrete_out_of_range_labels_raise_naming_the_value_and_the_fix(bad_label):
    tx = hierarchical_reweighting(CONCEPT_OF_CLASS, CONCEPT_SIZES)
    loss, labels, features = random_batch(0)
    labels = labels.at[3].set(bad_label)
    message = rf"labels contains {bad_label} outside \[0, 6\): concept_of_class maps 6 classes: give it one entry"
    with pytest.raises(ValueError, match=message):
        loss_weights(tx.init({}), labels, per_example_loss=loss, features=features)
    with pytest.raises(ValueError, match=message):
        tx.update({}, tx.init({}), per_example_loss=loss, labels=labels, features=features)
    with pytest.raises(ValueError, match=message):
        concept_loss_estimate(loss, labels, CONCEPT_OF_CLASS, CONCEPT_SIZES)
    with pytest.raises(ValueError, match=message):  # Labels closed over as constants are concrete under jit too.
        jax.jit(
            lambda state: tx.update({}, state, per_example_loss=loss, labels=np.asarray(labels), features=features)
        )(tx.init({}))


def test_a_concept_map_shorter_than_the_labels_is_refused_not_clamped():
    tx = hierarchical_reweighting(CONCEPT_OF_CLASS[:5], CONCEPT_SIZES)  # Class 5 has no concept.
    labels = jnp.array([0, 1, 5])
    with pytest.raises(ValueError, match=r"labels contains 5 outside \[0, 5\): concept_of_class maps 5 classes"):
        loss_weights(tx.init({}), labels, per_example_loss=jnp.ones(3), features=jnp.ones((3, 2)))


def test_the_checks_trace_to_the_same_program_every_time_and_keep_their_own_messages():
    """jax before 0.11 numbers checkify checks from a process-wide counter that lands in the program even where
    checkify is off: each trace of the same step was another program, a persistent compilation cache miss."""
    tx = hierarchical_reweighting(CONCEPT_OF_CLASS, CONCEPT_SIZES, divergence="kl", lam=0.5)
    state = _advanced_state(tx)
    loss, labels, features = random_batch(5)

    def make_step(callers_check: bool):  # A new function each time: jit traces it anew.
        def step(state, labels):
            if callers_check:  # Numbered by jax's counter: another constant on each trace.
                checkify.debug_check(labels[0] >= 0, "the caller's own check")
            weights = loss_weights(state, labels, per_example_loss=loss, features=features)
            return weights, tx.update({}, state, per_example_loss=loss, labels=labels, features=features)[1]

        return step

    programs = [jax.jit(make_step(False)).lower(state, labels).as_text(debug_info=False) for _ in range(3)]
    assert programs[0] == programs[1] == programs[2]
    checked = checkify.checkify(jax.jit(make_step(True)), errors=checkify.user_checks)
    error, _ = checked(state, labels.at[7].set(10))
    with pytest.raises(checkify.JaxRuntimeError, match=r"labels contains 10 outside \[0, 6\)"):
        error.throw()
    error, _ = checked(state, labels.at[0].set(-1))  # Both checks fail: the caller's, first, is reported.
    with pytest.raises(checkify.JaxRuntimeError, match="the caller's own check"):
        error.throw()


def test_under_jit_an_out_of_range_label_is_a_checkify_error_and_otherwise_skips_the_update():
    tx = hierarchical_reweighting(CONCEPT_OF_CLASS, CONCEPT_SIZES, divergence="kl", lam=0.5)
    state = _advanced_state(tx)
    loss, labels, features = random_batch(5)
    bad_labels = labels.at[7].set(10)

    @jax.jit
    def step(state, labels):
        weights = loss_weights(state, labels, per_example_loss=loss, features=features)
        _, state = tx.update({}, state, per_example_loss=loss, labels=labels, features=features)
        return weights, state

    error, _ = checkify.checkify(step, errors=checkify.user_checks)(state, bad_labels)
    with pytest.raises(checkify.JaxRuntimeError, match=r"labels contains 10 outside \[0, 6\): concept_of_class maps"):
        error.throw()
    error, _ = checkify.checkify(step, errors=checkify.user_checks)(state, labels)
    assert error.get() is None

    weights, skipped = step(state, bad_labels)
    good_weights, _ = step(state, labels)
    assert float(weights[7]) == 0.0
    others = np.arange(16) != 7
    assert np.all(np.isfinite(np.asarray(weights))) and np.all(np.asarray(weights)[others] > 0)
    # The example level of the others saw example 7 in another class group, so compare the concept level only.
    concept_only = hierarchical_reweighting(
        CONCEPT_OF_CLASS, CONCEPT_SIZES, divergence="kl", lam=0.5, example_level="none"
    )
    concept_state = concept_only.init({})._replace(concept_losses=state.concept_losses, step=state.step)
    np.testing.assert_allclose(
        jax.jit(lambda s, y: loss_weights(s, y))(concept_state, bad_labels)[others],
        loss_weights(concept_state, labels)[others],
        rtol=1e-6,
    )
    assert np.any(np.asarray(good_weights) != np.asarray(weights))
    np.testing.assert_array_equal(skipped.concept_losses, state.concept_losses)
    assert (int(skipped.step), int(skipped.skipped_updates)) == (2, 1)
    estimate = jax.jit(concept_loss_estimate)(loss, bad_labels, CONCEPT_OF_CLASS, CONCEPT_SIZES)
    assert np.all(np.isnan(np.asarray(estimate)))


def test_a_nan_loss_skips_the_adversary_update_counts_it_and_keeps_the_other_weights_finite():
    tx = hierarchical_reweighting(CONCEPT_OF_CLASS, CONCEPT_SIZES, divergence="l2", lam=0.5, gamma=0.3)
    state = _advanced_state(tx)
    loss, labels, features = random_batch(6)
    nan_loss = loss.at[4].set(jnp.nan)
    step = jax.jit(lambda s, losses: tx.update({}, s, per_example_loss=losses, labels=labels, features=features)[1])

    skipped = step(state, nan_loss)
    np.testing.assert_array_equal(skipped.concept_losses, state.concept_losses)
    assert (int(skipped.step), int(skipped.skipped_updates)) == (2, 1)
    applied = step(skipped, loss)  # The next finite batch is applied as if the NaN batch had never come.
    np.testing.assert_array_equal(applied.concept_losses, step(state, loss).concept_losses)
    assert (int(applied.step), int(applied.skipped_updates)) == (3, 1)

    weights = jax.jit(lambda s: loss_weights(s, labels, per_example_loss=nan_loss, features=features))(state)
    others = np.arange(16) != 4
    without = loss_weights(state, labels[others], per_example_loss=loss[others], features=features[others])
    np.testing.assert_allclose(np.asarray(weights)[others], without, rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(weights)))


def test_a_sum_that_overflows_is_skipped_too():
    loss, labels, _ = random_batch(0)
    tx = hierarchical_reweighting(
        CONCEPT_OF_CLASS, CONCEPT_SIZES, accumulate="sum", divergence="kl", lam=1.0, example_level="none"
    )
    state = tx.init({})._replace(concept_losses=jnp.full((4,), 3e38, jnp.float32))
    _, state = tx.update({}, state, per_example_loss=loss * 1e37, labels=labels)
    assert int(state.skipped_updates) == 1 and np.all(np.isfinite(np.asarray(state.concept_losses)))


def test_apply_if_finite_skips_the_parameters_and_the_adversary_together():
    reweighting = hierarchical_reweighting(CONCEPT_OF_CLASS, CONCEPT_SIZES, example_level="none")
    tx = optax.apply_if_finite(optax.chain(reweighting, optax.sgd(0.1)), max_consecutive_errors=3)
    params = {"w": jnp.ones(2)}
    opt_state = tx.init(params)
    loss, labels, _ = random_batch(0)
    updates, opt_state = tx.update(
        {"w": jnp.array([jnp.nan, 1.0])}, opt_state, params, per_example_loss=loss, labels=labels
    )
    np.testing.assert_array_equal(optax.apply_updates(params, updates)["w"], params["w"])
    state = find_reweighting_state(opt_state)
    assert int(state.step) == 0 and int(opt_state.notfinite_count) == 1
    _, opt_state = tx.update({"w": jnp.ones(2)}, opt_state, params, per_example_loss=loss, labels=labels)
    assert int(find_reweighting_state(opt_state).step) == 1


def test_transforms_built_with_the_same_arguments_have_equal_structures_and_share_compiled_steps():
    def build(**options):
        return hierarchical_reweighting(CONCEPT_OF_CLASS.copy(), CONCEPT_SIZES.copy(), divergence="kl", **options)

    first, second = build(lam=0.5).init({}), build(lam=0.5).init({})
    assert jax.tree.structure(first) == jax.tree.structure(second)
    difference = jax.tree.map(lambda a, b: a - b, first, second)
    assert float(jnp.sum(difference.concept_losses)) == 0.0
    assert jax.tree.structure(build(lam=0.6).init({})) != jax.tree.structure(first)
    assert jax.tree.structure(build(lam=0.5, axis_name="data").init({})) != jax.tree.structure(first)
    schedule = optax.linear_schedule(1.0, 0.1, 100)
    assert jax.tree.structure(build(lam=schedule).init({})) == jax.tree.structure(build(lam=schedule).init({}))

    traces = []

    @jax.jit
    def distribution(state):
        traces.append(1)
        return concept_distribution(state)

    distribution(first), distribution(second)
    assert len(traces) == 1


def test_a_state_restored_into_other_settings_is_refused_naming_both(tmp_path):
    params = {"w": jnp.zeros(3)}
    saved_tx = optax.chain(
        hierarchical_reweighting(CONCEPT_OF_CLASS, CONCEPT_SIZES, divergence="kl", lam=5.0), optax.adam(1e-2)
    )
    other_tx = optax.chain(
        hierarchical_reweighting(CONCEPT_OF_CLASS, CONCEPT_SIZES, divergence="l2", lam=1.0), optax.adam(1e-2)
    )
    opt_state = saved_tx.init(params)
    loss, labels, features = random_batch(0)
    extra_args = {"per_example_loss": loss, "labels": labels, "features": features}
    _, opt_state = saved_tx.update(params, opt_state, params, **extra_args)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "opt_state", opt_state)
    checkpointer.wait_until_finished()

    same = checkpointer.restore(tmp_path / "opt_state", jax.eval_shape(saved_tx.init, params))
    np.testing.assert_array_equal(concept_distribution(same), concept_distribution(opt_state))
    restored = checkpointer.restore(tmp_path / "opt_state", jax.eval_shape(other_tx.init, params))
    message = (
        r"saved by a transform with other settings: divergence saved kl, this transform l2; "
        r"lam saved 5, this transform 1\. Restore it into a transform built with the saved settings"
    )
    for read in (
        find_reweighting_state,
        concept_distribution,
        lambda s: loss_weights(s, labels, per_example_loss=loss, features=features),
        lambda s: other_tx.update(params, s, params, **extra_args),
    ):
        with pytest.raises(ValueError, match=message):
            read(restored)

    step = jax.jit(lambda s: other_tx.update(params, s, params, **extra_args)[1])
    error, stepped = checkify.checkify(step, errors=checkify.user_checks)(restored)
    with pytest.raises(checkify.JaxRuntimeError, match="saved by a transform with other settings"):
        error.throw()
    assert int(stepped[0].skipped_updates) == 1 and int(stepped[0].step) == 1

    adopted = adopt_settings(restored)
    np.testing.assert_array_equal(
        find_reweighting_state(adopted).concept_losses, find_reweighting_state(opt_state).concept_losses
    )
    assert int(step(adopted)[0].step) == 2
