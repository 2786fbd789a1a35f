"""The `input` example level's forms in the trainer (docs/method.md §3): β = 0 is ERM's step, the auxiliary
BatchNorm's statistics come from the pass at x' and the main ones from the clean pass, the random control moves
each image as far as the gradient step, the warm-up keeps x' = x, a wrong γ_k count fails before data, and the new
state trains alike on 1 and 8 devices. The closed forms themselves: tests/robust/test_input_level_forms.py."""

import jax
import numpy as np
import pytest

from hrrl_jax.data import load_data
from hrrl_jax.data.normalisation import normalise_images
from hrrl_jax.errors import ConfigError
from hrrl_jax.train.launch_checks import check_before_data
from hrrl_jax.train.run import build_run
from tests.train.helpers import rounding_bound, tiny_config, train_on_one_and_all_devices

# Each test builds and steps a trainer: the full suite runs them, the fast tier leaves them out.
pytestmark = pytest.mark.slow

CHEAP_AUXILIARY = {
    "robust__input_gradient": "clean_pass",
    "robust__input_beta": 0.5,
    "robust__input_fraction": 0.5,
    "robust__input_batch_norm": "auxiliary",
}


def _input_config(**overrides):
    return tiny_config(**{"robust__method": "el", "robust__example_level": "input", "robust__gamma": 0.5, **overrides})


@pytest.fixture(scope="module")
def splits():
    return load_data(_input_config())


def _one_step(config, splits, devices=None):
    run = build_run(config, devices=devices or jax.devices()[:1], splits=splits)
    state = run.trainer.state
    before = jax.device_get(state)
    new_state, metrics = run.trainer.jitted_train_step(state, run.train_pipeline.global_batch(0))
    return run, before, jax.device_get(new_state), jax.device_get(metrics)


def test_beta_zero_is_the_erm_step(splits):
    _, _, erm_state, erm_metrics = _one_step(tiny_config(robust__method="erm"), splits)
    _, _, state, metrics = _one_step(_input_config(robust__input_beta=0.0), splits)
    for new, expected in zip(jax.tree.leaves(state.params), jax.tree.leaves(erm_state.params), strict=True):
        np.testing.assert_allclose(new, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["loss"], erm_metrics["loss"], rtol=1e-6)
    assert float(metrics["input_perturbation_norm"]) == 0.0


def test_auxiliary_statistics_come_from_the_perturbed_pass_and_the_main_ones_from_the_clean_pass(splits):
    run, before, state, metrics = _one_step(_input_config(**CHEAP_AUXILIARY), splits)
    model = run.trainer.model
    batch = run.train_pipeline.global_batch(0)
    clean = normalise_images(batch["image"], mean=run.info.mean, std=run.info.std)
    _, updated = model.apply(
        {"params": before.params, "batch_stats": before.batch_stats}, clean, train=True, mutable=["batch_stats"]
    )
    paths = jax.tree_util.tree_flatten_with_path(state.batch_stats)[0]
    expected = dict(jax.tree_util.tree_flatten_with_path(updated["batch_stats"])[0])
    old = dict(jax.tree_util.tree_flatten_with_path(before.batch_stats)[0])
    auxiliary = [path for path, _ in paths if "bn_aux" in jax.tree_util.keystr(path)]
    assert auxiliary and len(auxiliary) * 2 == len(paths)
    for path, value in paths:
        if path in auxiliary:
            assert not np.allclose(value, old[path])  # The pass at x' moved the auxiliary statistics.
        else:
            np.testing.assert_allclose(value, expected[path], rtol=1e-5, atol=1e-6)
    assert float(metrics["input_perturbation_norm"]) > 0


def test_the_random_control_moves_each_image_as_far_as_the_gradient_step(splits):
    config = _input_config(**CHEAP_AUXILIARY)
    _, _, gradient_state, gradient_metrics = _one_step(config, splits)
    _, _, random_state, random_metrics = _one_step(
        _input_config(**CHEAP_AUXILIARY, robust__input_direction="random"), splits
    )
    np.testing.assert_allclose(
        random_metrics["input_perturbation_norm"], gradient_metrics["input_perturbation_norm"], rtol=1e-5
    )
    # Same distances, other directions: another loss at x', another step.
    assert abs(float(random_metrics["loss"]) - float(gradient_metrics["loss"])) > 1e-4


def test_the_warm_up_keeps_the_images_clean_until_the_ramp(splits):
    _, _, _, metrics = _one_step(_input_config(robust__input_defer_steps=3, robust__input_ramp_steps=2), splits)
    _, _, _, undeferred = _one_step(_input_config(), splits)
    # x' = x up to the rounding of normalising the images in two fusions; the undeferred step moves them.
    assert float(metrics["input_perturbation_norm"]) < 1e-5 < 1e-2 < float(undeferred["input_perturbation_norm"])


def test_a_wrong_number_of_per_concept_gammas_fails_before_any_data_is_read():
    config = _input_config(robust__input_gamma_by_concept=(1.0, 2.0))
    with pytest.raises(
        ConfigError, match=r"^config.robust.input_gamma_by_concept=\(1.0, 2.0\): has 2 values; the data set has"
    ):
        check_before_data(config)


def test_eight_devices_match_one_device_with_the_auxiliary_batch_norm_and_the_random_control(splits):
    assert jax.device_count() == 8
    config = _input_config(**CHEAP_AUXILIARY, robust__input_direction="random", robust__input_coupling="weights")
    config.robust.method = "hrrl"
    results = train_on_one_and_all_devices(config, splits)
    losses = [float(metrics["loss"]) for _, metrics in results]
    norms = [float(metrics["input_perturbation_norm"]) for _, metrics in results]
    np.testing.assert_allclose(losses[1], losses[0], rtol=rounding_bound(config))
    np.testing.assert_allclose(norms[1], norms[0], rtol=1e-4)
