"""The `input` example level in the trainer: the library's ascent (`robust.worst_case_inputs`) on flax models, against
jax.grad per example, under BatchNorm and bfloat16, γ = inf is ERM, the step's loss and BatchNorm statistics are
those at x', 8 devices = 1. The closed forms of the ascent itself: tests/robust/test_input_level.py."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hrrl_jax import robust
from hrrl_jax.data import load_data
from hrrl_jax.robust import worst_case_inputs
from hrrl_jax.train.input_level import model_loss_fn
from hrrl_jax.train.run import build_run
from tests.train.helpers import rounding_bound, tiny_config, train_on_one_and_all_devices


def train_mode_losses(model, variables, labels):
    """inputs -> per-example cross-entropy of `model` in train mode (the trainer's loss function, labels bound)."""
    loss_fn = model_loss_fn(model, variables["batch_stats"])
    return lambda inputs: loss_fn(variables["params"], inputs, labels)[0]


class TinyNet(nn.Module):
    """A two-layer perceptron on flattened images: examples do not interact (no BatchNorm)."""

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        hidden = jnp.tanh(nn.Dense(6)(images.reshape(images.shape[0], -1)))
        return nn.Dense(3)(hidden)


def _tiny_problem(seed: int = 0):
    key = jax.random.key(seed)
    images = jax.random.normal(key, (5, 4, 4, 1))
    labels = jax.random.randint(jax.random.fold_in(key, 1), (5,), 0, 3)
    model = TinyNet()
    variables = model.init(jax.random.fold_in(key, 2), images)
    return model, variables, images, labels


def _per_example_gradient(model, variables, images, labels):
    """∇_{x_i} ℓ_i(x_i), each example through the model alone."""

    def loss_of_one(image, label):
        logits = model.apply(variables, image[None])
        return optax.softmax_cross_entropy_with_integer_labels(logits, label[None])[0]

    return jax.vmap(jax.grad(loss_of_one))(images, labels)


def test_one_step_is_x_plus_the_per_example_gradient_over_two_gamma_and_k_steps_iterate_it():
    model, variables, images, labels = _tiny_problem()

    def losses_at(inputs):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(variables, inputs), labels)

    gamma = 0.7
    expected = images + _per_example_gradient(model, variables, images, labels) / (2 * gamma)
    np.testing.assert_allclose(worst_case_inputs(losses_at, images, gamma=gamma), expected, rtol=1e-6, atol=1e-7)
    assert float(jnp.max(jnp.abs(expected - images))) > 1e-2  # The step moves the images.
    iterate = images
    for _ in range(3):
        iterate = images + _per_example_gradient(model, variables, iterate, labels) / (2 * gamma)
    np.testing.assert_allclose(
        worst_case_inputs(losses_at, images, gamma=gamma, steps=3), iterate, rtol=1e-6, atol=1e-6
    )
    np.testing.assert_array_equal(worst_case_inputs(losses_at, images, gamma=jnp.inf, steps=2), images)  # x' = x.


class TinyBatchNormNet(nn.Module):
    """Conv, train-mode BatchNorm, mean pool and a head, with the package's (logits, features) interface."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        x = nn.Conv(4, (3, 3), dtype=self.dtype)(images.astype(self.dtype))
        x = nn.relu(nn.BatchNorm(use_running_average=not train, dtype=self.dtype)(x))
        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return nn.Dense(3)(features), features


def _batch_norm_problem(dtype=jnp.float32):
    images = jax.random.normal(jax.random.key(3), (6, 8, 8, 1))
    labels = jnp.arange(6) % 3
    model = TinyBatchNormNet(dtype=dtype)
    variables = model.init(jax.random.key(0), images, train=False)
    return train_mode_losses(model, variables, labels), images


def test_under_batch_norm_the_step_follows_the_gradient_of_the_summed_loss_in_float32_under_bfloat16():
    gamma = 0.5
    losses_at, images = _batch_norm_problem()
    summed_loss_gradient = jax.grad(lambda x: jnp.sum(losses_at(x)))(images)
    adversarial = worst_case_inputs(losses_at, images, gamma=gamma)
    np.testing.assert_allclose(adversarial, images + summed_loss_gradient / (2 * gamma), rtol=1e-6, atol=1e-6)
    bfloat16_losses_at, _ = _batch_norm_problem(jnp.bfloat16)
    bfloat16_adversarial = worst_case_inputs(bfloat16_losses_at, images, gamma=gamma)
    assert adversarial.dtype == bfloat16_adversarial.dtype == jnp.float32
    delta, bfloat16_delta = adversarial - images, bfloat16_adversarial - images
    assert float(jnp.linalg.norm(bfloat16_delta - delta) / jnp.linalg.norm(delta)) < 0.05  # bfloat16's gradient.


def test_gamma_inf_gives_the_erm_losses_and_a_large_gamma_nearly():
    losses_at, images = _batch_norm_problem()
    erm_losses = losses_at(images)
    np.testing.assert_array_equal(losses_at(worst_case_inputs(losses_at, images, gamma=jnp.inf, steps=2)), erm_losses)
    np.testing.assert_allclose(losses_at(worst_case_inputs(losses_at, images, gamma=1e6)), erm_losses, rtol=1e-5)
    assert float(jnp.mean(losses_at(worst_case_inputs(losses_at, images, gamma=0.5)))) > float(jnp.mean(erm_losses))


def _input_config(**overrides):
    return tiny_config(**{"robust__method": "el", "robust__example_level": "input", "robust__gamma": 0.5, **overrides})


def test_the_step_takes_its_loss_and_batch_statistics_at_the_worst_case_images(monkeypatch):
    recorded = []

    def recording(per_example_loss_at, images, **kwargs):  # Keeps the images the step hands to the ascent.
        jax.debug.callback(lambda x: recorded.append(np.asarray(x)), images)
        return worst_case_inputs(per_example_loss_at, images, **kwargs)

    monkeypatch.setattr(robust.input_level, "worst_case_inputs", recording)
    config = _input_config(robust__perturb_steps=2)
    run = build_run(config, devices=jax.devices()[:1])
    state = run.trainer.state
    params, batch_stats = jax.device_get((state.params, state.batch_stats))
    batch = run.train_pipeline.global_batch(0)
    new_state, metrics = run.trainer.jitted_train_step(state, batch)
    (images,) = recorded
    labels = np.asarray(batch["label"])
    model = run.trainer.model
    variables = {"params": params, "batch_stats": batch_stats}
    losses_at = train_mode_losses(model, variables, labels)

    @jax.jit
    def independently(images):
        iterate = images
        for _ in range(2):
            iterate = images + jax.grad(lambda x: jnp.sum(losses_at(x)))(iterate) / (2 * 0.5)
        (logits, _), updated = model.apply(variables, iterate, train=True, mutable=["batch_stats"])
        adversarial_loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
        return adversarial_loss, updated["batch_stats"], jnp.mean(losses_at(images))

    adversarial_loss, expected_batch_stats, clean_loss = independently(images)
    np.testing.assert_allclose(metrics["loss"], adversarial_loss, rtol=1e-5)
    assert float(metrics["loss"]) > float(clean_loss) + 1e-3  # The ascent raised the loss.
    for new, expected in zip(
        jax.tree_util.tree_leaves(new_state.batch_stats), jax.tree_util.tree_leaves(expected_batch_stats), strict=True
    ):
        np.testing.assert_allclose(new, expected, rtol=1e-5, atol=1e-6)


def test_eight_devices_match_one_device():
    assert jax.device_count() == 8
    config = _input_config()
    splits = load_data(config)
    losses = [float(metrics["loss"]) for _, metrics in train_on_one_and_all_devices(config, splits)]
    # The ascent's gradient sums the batch in another order on 8 devices: rounding, bounded as in test_loop.py.
    np.testing.assert_allclose(losses[1], losses[0], rtol=rounding_bound(config))
