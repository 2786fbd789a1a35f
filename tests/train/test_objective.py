"""config.robust -> the library's transform and the loss form, for every method."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hrrl_jax import robust
from hrrl_jax.train.loop import train_and_evaluate
from hrrl_jax.train.objective import Objective, build_objective, default_robust_config
from hrrl_jax.train.steps import per_example_losses
from tests.train.helpers import tiny_config

CONCEPT_OF_CLASS = np.array([0, 0, 1, 2, 2])
CONCEPT_SIZES = np.array([20, 10, 30])


def settings_for(**robust_overrides):
    config = default_robust_config()
    for key, value in robust_overrides.items():
        config[key] = value
    objective, transform = build_objective(config, CONCEPT_OF_CLASS, CONCEPT_SIZES)
    if transform is None:
        return objective, None
    return objective, robust.find_reweighting_state(transform.init({"w": jnp.zeros(2)})).settings


def test_each_method_maps_to_its_special_case():
    objective, settings = settings_for(method="erm")
    assert settings is None and not objective.reweights
    _, el = settings_for(method="el")
    assert el.divergence == "none" and el.example_level == "reweight"
    np.testing.assert_allclose(el.prior, CONCEPT_SIZES / CONCEPT_SIZES.sum())  # Concept weights stay 1.
    _, cl = settings_for(method="cl", lam=0.1)
    assert cl.divergence == "l2" and cl.example_level == "none" and cl.lam == 0.1
    _, hrrl = settings_for(method="hrrl")
    assert hrrl.divergence == "l2" and hrrl.example_level == "reweight"
    _, group_dro = settings_for(method="group_dro", group_dro_eta=0.01)
    assert group_dro.divergence == "kl" and group_dro.accumulate == "sum" and math.isclose(group_dro.lam, 100.0)


def test_floor_goes_to_every_method_with_a_concept_level():
    for method in ("cl", "hrrl", "group_dro"):
        assert settings_for(method=method, floor=0.3)[1].floor == 0.3, method
    assert settings_for(method="el", floor=0.3)[1].floor == 0.0  # p = q already: nothing to floor.


def test_lam_schedules_defer_and_anneal_and_group_dro_keeps_its_own_lambda():
    _, constant = settings_for(method="cl", lam=0.5)
    assert constant.lam == 0.5 and isinstance(constant.lam, float)
    steps = jnp.array([0, 1, 5, 9, 10, 11, 1000])
    _, deferred = settings_for(method="hrrl", lam=0.5, lam_schedule="defer", lam_schedule_steps=10)
    np.testing.assert_array_equal(jax.vmap(deferred.lam)(steps), [np.inf] * 4 + [0.5] * 3)
    _, annealed = settings_for(method="cl", lam=0.5, lam_schedule="anneal", lam_schedule_steps=10)
    np.testing.assert_allclose(jax.vmap(annealed.lam)(steps), [np.inf, 5.0, 1.0, 5 / 9, 0.5, 0.5, 0.5], rtol=1e-7)
    _, group_dro = settings_for(method="group_dro", group_dro_eta=0.01, lam_schedule="defer", lam_schedule_steps=10)
    assert group_dro.lam == 100.0


def test_a_deferred_cl_run_starts_at_the_prior_and_leaves_it():
    config = default_robust_config()
    config.update(method="cl", lam=0.1, lam_schedule="defer", lam_schedule_steps=2)
    _, transform = build_objective(config, CONCEPT_OF_CLASS, CONCEPT_SIZES)
    state = transform.init({})
    labels = jnp.array([0, 1, 2, 3, 4, 2])
    loss = jnp.array([0.1, 0.2, 3.0, 0.3, 0.1, 2.5])
    distributions = []
    for _ in range(3):
        distributions.append(np.asarray(robust.concept_distribution(state)))
        _, state = transform.update({}, state, per_example_loss=loss, labels=labels)
    np.testing.assert_allclose(distributions[:2], np.full((2, 3), 1 / 3), atol=1e-7)  # λ = inf: p = q.
    assert distributions[2][1] > 0.9  # λ = 0.1 from step 2: concept 1 (class 2) has by far the largest loss.


def test_perturb_form_changes_the_loss_not_the_weights():
    objective, settings = settings_for(method="el", example_level="perturb", gamma=2.0)
    assert objective.perturb_gamma == 2.0 and settings.example_level == "none"


def test_input_form_changes_the_loss_not_the_weights():
    for method in ("el", "hrrl"):
        objective, settings = settings_for(method=method, example_level="input", gamma=2.0, perturb_steps=3)
        assert (objective.input_level.gamma, objective.perturb_gamma, objective.input_level.steps) == (2.0, None, 3)
        assert settings.example_level == "none"
    objective, _ = settings_for(method="cl", example_level="input")  # No example level in cl.
    assert objective.input_level is None


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="config.robust.method='drO'"):
        settings_for(method="drO")


def test_perturbed_losses_are_never_below_the_plain_ones():
    key = jax.random.PRNGKey(0)
    features = jax.random.normal(key, (32, 6))
    labels = jax.random.randint(jax.random.fold_in(key, 1), (32,), 0, 5)
    params = {"head": {"kernel": jax.random.normal(jax.random.fold_in(key, 2), (6, 5)), "bias": jnp.zeros(5)}}
    logits = features @ params["head"]["kernel"]
    plain = per_example_losses(params, logits, features, labels, Objective("erm", reweights=False))
    perturbed = per_example_losses(params, logits, features, labels, Objective("el", True, perturb_gamma=1.0))
    assert np.all(np.asarray(perturbed) >= np.asarray(plain) - 1e-6)  # CE is convex in z: ascent raises it.
    assert float(jnp.mean(perturbed)) > float(jnp.mean(plain)) + 1e-3
    far = per_example_losses(params, logits, features, labels, Objective("el", True, perturb_gamma=1e6))
    np.testing.assert_allclose(far, plain, rtol=1e-4)


def test_training_with_the_perturb_form(tmp_path):
    config = tiny_config(total_steps=4, robust__method="hrrl", robust__example_level="perturb")
    results = train_and_evaluate(config, str(tmp_path))
    assert results["step"] == 4 and 0.0 <= results["test_accuracy"] <= 1.0
