"""Concepts given per example (groups, e.g. (label, attribute) pairs) instead of through a class -> concept map."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrrl_jax.robust import (
    concept_best_response,
    concept_distribution,
    example_weights,
    hierarchical_reweighting,
    loss_weights,
)
from tests.robust.helpers import CONCEPT_OF_CLASS, CONCEPT_SIZES, random_batch

GROUP_SIZES = np.array([50, 5, 5, 40])  # Groups (label, attribute) of two labels and two attributes.


def _grouped_batch(seed: int, size: int = 16):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size)
    attributes = rng.integers(0, 2, size)
    return (
        jnp.asarray(rng.uniform(0.0, 3.0, size), jnp.float32),
        jnp.asarray(labels),
        jnp.asarray(2 * labels + attributes),
        jnp.asarray(rng.normal(size=(size, 5)), jnp.float32),
    )


def test_groups_give_the_weights_of_their_own_concepts():
    tx = hierarchical_reweighting(None, GROUP_SIZES, divergence="kl", lam=0.3, gamma=0.5)
    state = tx.init({})
    for seed in range(3):
        loss, labels, groups, features = _grouped_batch(seed)
        _, state = jax.jit(
            lambda s, loss=loss, labels=labels, groups=groups, features=features: tx.update(
                {}, s, per_example_loss=loss, labels=labels, groups=groups, features=features
            )
        )(state)
    assert int(state.step) == 3 and np.all(np.asarray(state.concept_losses) > 0)
    loss, labels, groups, features = _grouped_batch(9)
    distribution = concept_best_response(state.concept_losses, np.full(4, 0.25), divergence="kl", lam=0.3)
    # The example level moves mass within a label, across the label's groups.
    within_label = np.asarray(example_weights(loss, features, labels, gamma=0.5, temperature=1.0))
    expected = np.asarray(distribution)[groups] * 100 / GROUP_SIZES[groups] * within_label
    weights = loss_weights(state, labels, per_example_loss=loss, features=features, groups=groups)
    np.testing.assert_allclose(weights, expected, rtol=1e-5)


def test_group_dro_over_groups_is_exponentiated_gradient_on_cumulative_group_losses():
    eta = 0.1
    tx = hierarchical_reweighting(
        None, GROUP_SIZES, divergence="kl", lam=1 / eta, accumulate="sum", example_level="none"
    )
    state, total = tx.init({}), np.zeros(4)
    for seed in range(4):
        loss, _, groups, _ = _grouped_batch(seed)
        _, state = tx.update({}, state, per_example_loss=loss, groups=groups)
        importance = 100 / GROUP_SIZES[np.asarray(groups)]
        total += np.bincount(np.asarray(groups), importance * np.asarray(loss), minlength=4) / 16
    unnormalised = 0.25 * np.exp(eta * total)
    np.testing.assert_allclose(concept_distribution(state), unnormalised / unnormalised.sum(), rtol=1e-5)
    np.testing.assert_allclose(
        loss_weights(state, groups=jnp.arange(4)), unnormalised / unnormalised.sum() * 100 / GROUP_SIZES, rtol=1e-5
    )


def test_group_arguments_are_checked():
    by_groups = hierarchical_reweighting(None, GROUP_SIZES, example_level="none")
    by_map = hierarchical_reweighting(CONCEPT_OF_CLASS, CONCEPT_SIZES, example_level="none")
    loss, labels, groups, _ = _grouped_batch(0)
    with pytest.raises(TypeError, match="needs the argument `groups`"):
        by_groups.update({}, by_groups.init({}), per_example_loss=loss, labels=labels)
    with pytest.raises(TypeError, match="got `groups`, but this transform maps classes to concepts"):
        loss_weights(by_map.init({}), labels, groups=groups)
    with pytest.raises(ValueError, match=r"groups contains 4 outside \[0, 4\): concept_sizes has 4 entries"):
        loss_weights(by_groups.init({}), groups=groups.at[2].set(4))
    with pytest.raises(TypeError, match="groups must be integer ids"):
        loss_weights(by_groups.init({}), groups=groups.astype(jnp.float32))
    _, state = by_map.update({}, by_map.init({}), per_example_loss=random_batch(0)[0], labels=random_batch(0)[1])
    assert int(state.step) == 1
