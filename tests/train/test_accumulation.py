"""Gradient accumulation (config.gradient_accumulation_steps): an accumulated step is the logical batch's step.

The reference is written independently of hrrl_jax/train/accumulation.py: one loss over the whole logical batch
(BatchNorm over each micro-batch, rows j, j + k, ... as the trainer documents), one gradient, the weights of the
adversary over the whole batch, one `tx.update` with every example's loss, label and features.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hrrl_jax import robust
from hrrl_jax.config_checks import validate_config
from hrrl_jax.data import load_data
from hrrl_jax.data.normalisation import normalise_images
from hrrl_jax.errors import ConfigError
from hrrl_jax.train.accumulation import logical_batch, micro_batches
from hrrl_jax.train.launch_checks import check_before_data
from hrrl_jax.train.run import build_run
from hrrl_jax.train.steps import per_example_losses
from tests.train.helpers import relative_deviation, rounding_bound, tiny_config, train_on_one_and_all_devices

# Each case trains ResNet-10 steps end to end: the full suite runs them, the fast tier leaves them out.
pytestmark = pytest.mark.slow

STEPS = 2  # Micro-batches of 16 rows out of the tiny config's 32.
METHODS = {
    "erm": {"robust__method": "erm"},
    "cl": {"robust__method": "cl", "robust__lam": 0.05},
    "group_dro": {"robust__method": "group_dro", "robust__group_dro_eta": 0.5},
    # The reweight example level: its weights solve a transport problem over the whole batch.
    "hrrl": {"robust__method": "hrrl", "robust__lam": 0.05, "robust__gamma": 0.5},
}


def _config(name, **overrides):
    return tiny_config(**METHODS[name], **overrides)


@pytest.fixture(scope="module")
def splits():
    return load_data(tiny_config())


def _reference_step(run, state, batch, count):
    """The logical batch's step with the BatchNorm statistics of each micro-batch, as one gradient."""
    model, tx, objective = run.trainer.model, run.trainer.tx, run.trainer.objective
    images = normalise_images(batch["image"], mean=run.info.mean, std=run.info.std)
    labels = jnp.asarray(batch["label"])
    size = labels.shape[0]
    rows = [np.arange(start, size, count) for start in range(count)]
    inverse = np.argsort(np.concatenate(rows))

    def loss(params):
        outputs = [
            model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                images[part],
                train=True,
                mutable=["batch_stats"],
            )
            for part in rows
        ]
        logits = jnp.concatenate([logits for (logits, _), _ in outputs])[inverse]
        features = jnp.concatenate([features for (_, features), _ in outputs])[inverse]
        losses = per_example_losses(params, logits, features, labels, objective)
        weights = jnp.ones_like(losses)
        if objective.reweights:
            weights = robust.loss_weights(
                state.opt_state,
                labels,
                per_example_loss=jax.lax.stop_gradient(losses),
                features=jax.lax.stop_gradient(features),
            )
        stats = jax.tree_util.tree_map(lambda *parts: sum(parts) / count, *[updated for _, updated in outputs])
        return jnp.mean(weights * losses), (losses, features, logits, stats["batch_stats"])

    (value, (losses, features, logits, stats)), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
    updates, opt_state = tx.update(
        grads,
        state.opt_state,
        state.params,
        per_example_loss=jax.lax.stop_gradient(losses),
        labels=labels,
        features=jax.lax.stop_gradient(features),
    )
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=stats,
        opt_state=opt_state,
    )
    accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
    return new_state, {"loss": value, "accuracy": accuracy}


def test_micro_batches_take_every_kth_row_and_merge_back():
    values = jnp.arange(12 * 2).reshape(12, 2)
    split = micro_batches(values, 3)
    np.testing.assert_array_equal(split[1, :, 0], [2, 8, 14, 20])  # Rows 1, 4, 7, 10.
    np.testing.assert_array_equal(logical_batch(split), values)


@pytest.mark.parametrize("name", list(METHODS))
def test_the_accumulated_step_is_the_logical_batch_step(splits, name):
    config = _config(name, gradient_accumulation_steps=STEPS)
    run = build_run(config, devices=jax.devices()[:1], splits=splits)
    reference_step = jax.jit(functools.partial(_reference_step, run, count=STEPS))
    accumulated = reference = run.trainer.state
    for step in range(2):  # The second step's weights come from the adversary the first one moved.
        batch = run.train_pipeline.global_batch(step)
        reference, reference_metrics = reference_step(reference, batch)
        accumulated, metrics = run.trainer.jitted_train_step(accumulated, batch)
    accumulated, reference = jax.device_get((accumulated, reference))
    assert relative_deviation(reference.params, accumulated.params) < 1e-5
    assert relative_deviation(reference.batch_stats, accumulated.batch_stats) < 1e-5
    np.testing.assert_allclose(metrics["loss"], reference_metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], reference_metrics["accuracy"])
    if run.trainer.objective.reweights:
        adversary = robust.find_reweighting_state(accumulated.opt_state).concept_losses
        expected = robust.find_reweighting_state(reference.opt_state).concept_losses
        assert np.ptp(expected) > 1e-3  # The adversary has moved, and unevenly: the comparison can fail.
        np.testing.assert_allclose(adversary, expected, rtol=1e-5)


def test_one_micro_batch_per_device_share_matches_between_one_and_eight_devices(splits):
    config = _config("hrrl", gradient_accumulation_steps=2)
    results = train_on_one_and_all_devices(config, splits)
    losses = [float(metrics["loss"]) for _, metrics in results]
    params = [jax.device_get(state.params) for state, _ in results]
    np.testing.assert_allclose(losses[1], losses[0], rtol=rounding_bound(config))
    assert relative_deviation(params[0], params[1]) < 100 * rounding_bound(config)


def test_the_input_level_with_beta_zero_accumulates_as_erm(splits):
    erm_run = build_run(_config("erm", gradient_accumulation_steps=2), devices=jax.devices()[:1], splits=splits)
    input_config = tiny_config(
        robust__method="el", robust__example_level="input", robust__input_beta=0.0, gradient_accumulation_steps=2
    )
    input_run = build_run(input_config, devices=jax.devices()[:1], splits=splits)
    batch = erm_run.train_pipeline.global_batch(0)
    erm_state, erm_metrics = erm_run.trainer.jitted_train_step(erm_run.trainer.state, batch)
    input_state, input_metrics = input_run.trainer.jitted_train_step(input_run.trainer.state, batch)
    assert relative_deviation(jax.device_get(erm_state.params), jax.device_get(input_state.params)) < 1e-5
    np.testing.assert_allclose(input_metrics["loss"], erm_metrics["loss"], rtol=1e-6)
    assert float(input_metrics["input_perturbation_norm"]) == 0.0


def test_a_batch_that_does_not_split_into_micro_batches_fails_before_data():
    with pytest.raises(ConfigError, match=r"^config.gradient_accumulation_steps=3: must divide config.batch_size=32"):
        validate_config(tiny_config(gradient_accumulation_steps=3))
    assert jax.device_count() == 8
    with pytest.raises(
        ConfigError, match=r"^config.gradient_accumulation_steps=2: config.batch_size=24 must be a multiple of 2 micro"
    ):
        check_before_data(tiny_config(gradient_accumulation_steps=2, batch_size=24))
