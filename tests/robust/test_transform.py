"""The optax transform: the adversary's dynamics, the special cases, finding the state in nested optimizer
states, errors, Orbax round trips, jit without host transfers, sharding, and a small training run."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from hrrl_jax.robust import (
    HierarchicalReweightingState,
    concept_best_response,
    concept_distribution,
    concept_loss_estimate,
    example_weights,
    find_reweighting_state,
    hierarchical_reweighting,
    loss_weights,
)
from tests.robust.helpers import CONCEPT_OF_CLASS, CONCEPT_SIZES, random_batch


def _run_updates(tx, num_steps: int, example_level: bool = True):
    state = tx.init({"w": jnp.zeros(2)})
    estimates = []
    for seed in range(num_steps):
        loss, labels, features = random_batch(seed)
        _, state = tx.update(
            {"w": jnp.ones(2)},
            state,
            per_example_loss=loss,
            labels=labels,
            features=features if example_level else None,
        )
        estimates.append(concept_loss_estimate(loss, labels, CONCEPT_OF_CLASS, CONCEPT_SIZES))
    return state, np.stack(estimates)


def test_dual_averaging_constant_step_and_sum():
    state, estimates = _run_updates(
        hierarchical_reweighting(CONCEPT_OF_CLASS, CONCEPT_SIZES, example_level="none"), 5, example_level=False
    )
    np.testing.assert_allclose(state.concept_losses, estimates.mean(0), rtol=1e-5)
    assert int(state.step) == 5 and state.step.dtype == jnp.int32 and state.concept_losses.dtype == jnp.float32

    state, _ = _run_updates(
        hierarchical_reweighting(CONCEPT_OF_CLASS, CONCEPT_SIZES, example_level="none", step_offset=2.0),
        3,
        example_level=False,
    )
    expected = np.zeros(4)
    for t, estimate in enumerate(estimates[:3]):
        expected = expected + (estimate - expected) / (t + 1 + 2.0)
    np.testing.assert_allclose(state.concept_losses, expected, rtol=1e-5)

    state, _ = _run_updates(
        hierarchical_reweighting(CONCEPT_OF_CLASS, CONCEPT_SIZES, example_level="none", constant_step=0.5),
        2,
        example_level=False,
    )
    np.testing.assert_allclose(state.concept_losses, 0.25 * estimates[0] + 0.5 * estimates[1], rtol=1e-5)


def test_group_dro_is_exponentiated_gradient_on_cumulative_losses():
    eta = 0.05
    tx = hierarchical_reweighting(
        CONCEPT_OF_CLASS, CONCEPT_SIZES, divergence="kl", lam=1 / eta, accumulate="sum", example_level="none"
    )
    state, estimates = _run_updates(tx, 4, example_level=False)
    unnormalised = 0.25 * np.exp(eta * estimates.sum(0))
    np.testing.assert_allclose(concept_distribution(state), unnormalised / unnormalised.sum(), rtol=1e-5)


def test_update_leaves_gradients_unchanged_and_ignores_unknown_extra_args():
    tx = hierarchical_reweighting(CONCEPT_OF_CLASS, CONCEPT_SIZES)
    loss, labels, features = random_batch(0)
    grads = {"w": jnp.array([1.0, -2.0])}
    updates, _ = tx.update(
        grads,
        tx.init(grads),
        per_example_loss=loss,
        labels=labels,
        features=features,
        value=jnp.float32(3.0),
        grad=grads,
    )
    np.testing.assert_array_equal(updates["w"], grads["w"])


@pytest.mark.parametrize("missing", ["per_example_loss", "labels", "features"])
def test_missing_extra_arg_names_it_at_trace_time(missing):
    tx = hierarchical_reweighting(CONCEPT_OF_CLASS, CONCEPT_SIZES)
    loss, labels, features = random_batch(0)
    extra_args = {"per_example_loss": loss, "labels": labels, "features": features}
    extra_args[missing] = None
    with pytest.raises(TypeError, match=f"`{missing}`"):
        jax.jit(lambda state: tx.update({}, state, **extra_args)).trace(tx.init({}))
    if missing != "labels":
        with pytest.raises(TypeError, match=f"`{missing}`"):
            loss_weights(tx.init({}), labels, **{k: v for k, v in extra_args.items() if k != "labels"})


def test_loss_weights_formula():
    tx = hierarchical_reweighting(
        CONCEPT_OF_CLASS, CONCEPT_SIZES, divergence="kl", lam=0.3, gamma=0.5, example_temperature=0.7
    )
    state, _ = _run_updates(tx, 2)
    loss, labels, features = random_batch(9)
    distribution = concept_best_response(state.concept_losses, np.full(4, 0.25), divergence="kl", lam=0.3)
    concept = CONCEPT_OF_CLASS[np.asarray(labels)]
    expected = (
        np.asarray(distribution)[concept]
        * 100
        / CONCEPT_SIZES[concept]
        * np.asarray(example_weights(loss, features, labels, gamma=0.5, temperature=0.7))
    )
    weights = loss_weights(state, labels, per_example_loss=loss, features=features)
    assert weights.dtype == jnp.float32 and weights.shape == (16,)
    np.testing.assert_allclose(weights, expected, rtol=1e-5)


def test_special_cases_erm_and_prior_only():
    loss, labels, features = random_batch(1)
    erm = hierarchical_reweighting(
        CONCEPT_OF_CLASS, CONCEPT_SIZES, lam=float("inf"), prior="empirical", example_level="none"
    )
    erm_state, _ = _run_updates(erm, 2, example_level=False)
    np.testing.assert_allclose(loss_weights(erm_state, labels), 1.0, rtol=1e-6)
    prior = np.array([0.1, 0.2, 0.3, 0.4])
    for options in ({"divergence": "none"}, {"divergence": "wasserstein", "lam": float("inf")}):
        tx = hierarchical_reweighting(CONCEPT_OF_CLASS, CONCEPT_SIZES, prior=prior, **options)
        state, _ = _run_updates(tx, 2)
        np.testing.assert_allclose(concept_distribution(state), prior, atol=1e-6)


def test_floor_mixes_the_prior_into_p_hand_computed():
    tx = hierarchical_reweighting(
        CONCEPT_OF_CLASS, CONCEPT_SIZES, divergence="l2", lam=1.0, floor=0.2, example_level="none"
    )
    state = tx.init({})._replace(concept_losses=jnp.array([2.0, 0.0, 0.0, 0.0]))
    # p* = Π_Δ(q + f/λ) = Π_Δ([2.25, 0.25, 0.25, 0.25]) = [1, 0, 0, 0]; p = 0.8 p* + 0.2 q.
    np.testing.assert_allclose(concept_distribution(state), [0.85, 0.05, 0.05, 0.05], rtol=1e-6)
    labels = jnp.array([0, 2, 3, 5])  # One class of each concept: w = p_k · N/n_k, N = 100.
    np.testing.assert_allclose(
        loss_weights(state, labels), [0.85 * 2.5, 0.05 * 10, 0.05 * 100 / 30, 0.05 * 5], rtol=1e-6
    )


@pytest.mark.parametrize("divergence", ["l2", "kl", "wasserstein"])
def test_floor_keeps_every_concept_at_least_rho_times_its_prior(divergence):
    prior = np.array([0.1, 0.2, 0.3, 0.4])
    rng = np.random.default_rng(0)
    concept_losses = jnp.asarray(rng.uniform(0.0, 3.0, (50, 4)), jnp.float32)
    for floor in (0.1, 0.5, 0.9):
        tx = hierarchical_reweighting(
            CONCEPT_OF_CLASS, CONCEPT_SIZES, divergence=divergence, lam=0.05, floor=floor, prior=prior
        )
        unfloored = hierarchical_reweighting(
            CONCEPT_OF_CLASS, CONCEPT_SIZES, divergence=divergence, lam=0.05, prior=prior
        )
        for losses in concept_losses:
            p = np.asarray(concept_distribution(tx.init({})._replace(concept_losses=losses)))
            p_star = np.asarray(concept_distribution(unfloored.init({})._replace(concept_losses=losses)))
            assert np.all(p >= floor * prior * (1 - 1e-6)), (floor, p)
            np.testing.assert_allclose(p, (1 - floor) * p_star + floor * prior, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-6)
    if divergence == "l2":  # λ = 0.05 leaves p* sparse, so some concept sits exactly on its floor.
        assert np.any(np.isclose(p, 0.9 * prior, rtol=1e-6))


def test_floor_zero_is_the_unfloored_best_response_bit_for_bit():
    for divergence in ("l2", "kl", "wasserstein", "none"):
        tx = hierarchical_reweighting(CONCEPT_OF_CLASS, CONCEPT_SIZES, divergence=divergence, lam=0.3, floor=0.0)
        state, _ = _run_updates(tx, 3)
        expected = concept_best_response(
            state.concept_losses, state.settings.prior, divergence=divergence, lam=0.3, cost=None, temperature=None
        )
        np.testing.assert_array_equal(concept_distribution(state), expected)


@pytest.mark.parametrize("floor", [-0.1, 1.0, 1.5, float("nan"), True, "0.1"])
def test_floor_outside_zero_one_is_refused(floor):
    with pytest.raises(ValueError, match=r"floor \(rho\) must be a number in \[0, 1\), got"):
        hierarchical_reweighting(CONCEPT_OF_CLASS, CONCEPT_SIZES, floor=floor)


def test_state_is_found_in_nested_optimizer_states():
    update_loss, update_labels, update_features = random_batch(0)  # the batch _run_updates applies first
    extra_args = {"per_example_loss": update_loss, "labels": update_labels, "features": update_features}
    loss, labels, features = random_batch(2)
    params = {"head": jnp.ones(3), "body": jnp.ones(2)}
    reweighting = hierarchical_reweighting(CONCEPT_OF_CLASS, CONCEPT_SIZES, divergence="kl", lam=0.2)
    reference_state, _ = _run_updates(reweighting, 1)
    expected = loss_weights(reference_state, labels, per_example_loss=loss, features=features)
    optimizers = {
        "chain": optax.chain(optax.clip_by_global_norm(1.0), reweighting, optax.adamw(1e-3)),
        "masked": optax.chain(optax.masked(reweighting, {"head": True, "body": False}), optax.sgd(0.1)),
        "inject_hyperparams": optax.chain(reweighting, optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)),
        "multi_steps": optax.MultiSteps(optax.chain(reweighting, optax.sgd(0.1)), every_k_schedule=1),
    }
    for name, tx in optimizers.items():
        opt_state = tx.init(params)
        _, opt_state = jax.jit(lambda s: tx.update(params, s, params, **extra_args))(opt_state)
        weights = jax.jit(lambda s: loss_weights(s, labels, per_example_loss=loss, features=features))(opt_state)
        np.testing.assert_allclose(weights, expected, rtol=1e-5, err_msg=name)
    with pytest.raises(ValueError, match="found 0"):
        loss_weights(optax.sgd(0.1).init(params), labels)
    with pytest.raises(ValueError, match="found 2"):
        loss_weights(optax.chain(reweighting, reweighting).init(params), labels)


def test_invalid_settings_are_reported():
    cases = [
        ({"divergence": "chi2"}, "divergence must be one of"),
        ({"example_level": "perturb"}, "perturb_features"),
        ({"example_level": "input"}, "example_level='input' changes the loss"),
        ({"example_level": "reweigh"}, r"example_level must be one of \('reweight', 'none'\)"),
        ({"lam": 0.0}, "lam must be a number > 0"),
        ({"prior": np.array([0.5, 0.5, 0.5, 0.5])}, "summing to 1"),
        ({"temperature": -0.1}, "temperature must be a number > 0"),
        ({"divergence": "wasserstein", "cost": np.ones((3, 3))}, r"\[K, K\] = \[4, 4\]"),
        ({"constant_step": 0.1, "accumulate": "sum"}, "constant_step applies to accumulate='mean'"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            hierarchical_reweighting(CONCEPT_OF_CLASS, CONCEPT_SIZES, **options)
    ignored = hierarchical_reweighting(
        CONCEPT_OF_CLASS, CONCEPT_SIZES, divergence="kl", temperature=0.1, cost=np.ones((4, 4))
    ).init({})
    assert ignored.settings.temperature is None and ignored.settings.cost is None
    with pytest.raises(ValueError, match="positive counts"):
        hierarchical_reweighting(CONCEPT_OF_CLASS, np.array([4, 0, 3, 2]))
    with pytest.raises(ValueError, match=r"values in \[0, 3\)"):
        hierarchical_reweighting(CONCEPT_OF_CLASS, np.array([4, 1, 3]))


def test_orbax_round_trip_gives_identical_weights(tmp_path):
    params = {"w": jnp.zeros(3)}
    tx = optax.chain(
        hierarchical_reweighting(CONCEPT_OF_CLASS, CONCEPT_SIZES, divergence="l2", lam=0.5), optax.adam(1e-2)
    )
    opt_state = tx.init(params)
    for seed in range(3):
        loss, labels, features = random_batch(seed)
        _, opt_state = tx.update(params, opt_state, params, per_example_loss=loss, labels=labels, features=features)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "opt_state", opt_state)
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(tmp_path / "opt_state", jax.eval_shape(tx.init, params))
    saved_state, restored_state = find_reweighting_state(opt_state), find_reweighting_state(restored)
    assert isinstance(restored_state, HierarchicalReweightingState)
    np.testing.assert_array_equal(restored_state.concept_losses, saved_state.concept_losses)
    assert int(restored_state.step) == 3
    loss, labels, features = random_batch(7)
    np.testing.assert_array_equal(
        loss_weights(restored, labels, per_example_loss=loss, features=features),
        loss_weights(opt_state, labels, per_example_loss=loss, features=features),
    )


def test_jit_needs_no_host_transfer():
    tx = hierarchical_reweighting(CONCEPT_OF_CLASS, CONCEPT_SIZES, divergence="wasserstein", lam=0.5, radius=0.2)
    state = tx.init({})
    loss, labels, features = random_batch(3)

    @jax.jit
    def step(state, loss, labels, features):
        weights = loss_weights(state, labels, per_example_loss=loss, features=features)
        _, state = tx.update({}, state, per_example_loss=loss, labels=labels, features=features)
        return weights, state

    with jax.transfer_guard("disallow"):
        weights, state = step(state, loss, labels, features)
        weights, state = step(state, loss, labels, features)
    assert np.all(np.isfinite(np.asarray(weights))) and int(state.step) == 2


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
def test_sharded_batch_gives_the_single_device_result(axis_type):
    tx = hierarchical_reweighting(CONCEPT_OF_CLASS, CONCEPT_SIZES, divergence="l2", lam=0.5, gamma=0.5)
    state, _ = _run_updates(tx, 1)
    loss, labels, features = random_batch(4, size=32)

    def step(state, loss, labels, features):
        weights = loss_weights(state, labels, per_example_loss=loss, features=features)
        _, state = tx.update({}, state, per_example_loss=loss, labels=labels, features=features)
        return weights, state

    single_weights, single_state = jax.jit(step)(state, loss, labels, features)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    with jax.set_mesh(mesh):
        batch_sharding, replicated = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())
        sharded = [jax.device_put(x, batch_sharding) for x in (loss, labels)]
        sharded.append(jax.device_put(features, NamedSharding(mesh, PartitionSpec("data", None))))
        weights, new_state = jax.jit(step)(jax.device_put(state, replicated), *sharded)
    np.testing.assert_allclose(weights, single_weights, rtol=1e-5)
    np.testing.assert_allclose(new_state.concept_losses, single_state.concept_losses, rtol=1e-5)
    assert new_state.concept_losses.sharding.is_fully_replicated and new_state.step.sharding.is_fully_replicated


def test_thousand_concepts_and_huge_losses_stay_finite():
    num_classes = 1000
    rng = np.random.default_rng(0)
    tx = hierarchical_reweighting(
        np.arange(num_classes), rng.integers(1, 50, num_classes), divergence="l2", lam=0.01, example_temperature=0.01
    )
    labels = jnp.asarray(np.r_[np.zeros(8, int), rng.integers(0, num_classes, 24)])
    loss = jnp.asarray(np.where(np.arange(32) % 2, 1e4, 0.0), jnp.float32)
    features = jnp.asarray(rng.normal(size=(32, 4)), jnp.float32)

    @jax.jit
    def two_steps(state):
        for _ in range(2):
            _, state = tx.update({}, state, per_example_loss=loss, labels=labels, features=features)
        return state, loss_weights(state, labels, per_example_loss=loss, features=features)

    state, weights = two_steps(tx.init({}))
    assert np.all(np.isfinite(np.asarray(state.concept_losses))) and np.all(np.isfinite(np.asarray(weights)))
    np.testing.assert_allclose(np.sum(concept_distribution(state)), 1.0, atol=1e-4)


def _rare_hard_concept_problem():
    """Concept 0 (classes 0, 1) has 90% of the data; the rare concept 1 (classes 2, 3) overlaps it."""
    rng = np.random.default_rng(0)
    means = np.array([[0.0, 0.0], [4.0, 0.0], [1.2, 0.0], [2.8, 0.0]]) + np.array([0.0, 0.0])
    means = np.c_[means, [[0.0], [0.0], [1.0], [1.0]]]

    def sample(class_counts):
        labels = np.repeat(np.arange(4), class_counts)
        points = means[labels] + rng.normal(scale=0.8, size=(labels.size, 3))
        return jnp.asarray(points, jnp.float32), jnp.asarray(labels)

    return sample([900, 900, 100, 100]), sample([500, 500, 500, 500])


def _train_worst_concept_accuracy(reweighting) -> float:
    (train_x, train_y), (test_x, test_y) = _rare_hard_concept_problem()
    tx = optax.chain(optax.clip_by_global_norm(1.0), reweighting, optax.adamw(1e-3))
    params = {"kernel": jnp.zeros((3, 4)), "bias": jnp.zeros(4)}
    batches = jax.random.randint(jax.random.key(0), (1500, 32), 0, train_y.shape[0])

    def loss_fn(params, opt_state, x, y):
        per_example_loss = optax.softmax_cross_entropy_with_integer_labels(x @ params["kernel"] + params["bias"], y)
        weights = loss_weights(opt_state, y, per_example_loss=per_example_loss, features=x)
        return jnp.mean(weights * per_example_loss), per_example_loss

    def train_step(carry, indices):
        params, opt_state = carry
        x, y = train_x[indices], train_y[indices]
        grads, per_example_loss = jax.grad(loss_fn, has_aux=True)(params, opt_state, x, y)
        updates, opt_state = tx.update(
            grads, opt_state, params, per_example_loss=per_example_loss, labels=y, features=x
        )
        return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = jax.jit(lambda carry: jax.lax.scan(train_step, carry, batches))((params, tx.init(params)))
    correct = np.asarray(jnp.argmax(test_x @ params["kernel"] + params["bias"], axis=1) == test_y)
    concept = np.array([0, 0, 1, 1])[np.asarray(test_y)]
    return min(correct[concept == k].mean() for k in range(2))


def test_robust_training_raises_worst_concept_accuracy_over_erm():
    concept_of_class, concept_sizes = np.array([0, 0, 1, 1]), np.array([1800, 200])
    erm = hierarchical_reweighting(
        concept_of_class, concept_sizes, lam=float("inf"), prior="empirical", example_level="none"
    )
    robust = hierarchical_reweighting(
        concept_of_class,
        concept_sizes,
        divergence="l2",
        lam=0.1,
        example_level="reweight",
        gamma=1.0,
        example_temperature=1.0,
    )
    erm_worst, robust_worst = _train_worst_concept_accuracy(erm), _train_worst_concept_accuracy(robust)
    assert robust_worst > erm_worst + 0.05, (erm_worst, robust_worst)
