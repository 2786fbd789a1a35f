"""The reweighting in your own training loop: a Flax model on the digits, both levels, logging p and the ESS.

    python examples/own_loop.py

Each step computes per-example losses, reads the weights ``w_i = p[c(y_i)] · N/n_{c(y_i)} · v_i`` from the
optimizer state (concept level: the adversary's distribution p over concepts; example level: the within-class
weights v on the batch's deep features), differentiates the weighted mean, and hands the per-example losses,
labels and features to ``tx.update``, which advances the adversary. The log shows p and the effective sample size
(ESS) of the weights: 1 means uniform weights, small values mean a few examples dominate the gradient.

The chain sits inside ``optax.apply_if_finite``: a step whose gradient is not finite is skipped as a whole,
the adversary's update included (its state is part of the wrapped chain's state), and
``robust.loss_weights`` still finds the adversary inside the wrapper's state.
"""

from typing import Callable, NamedTuple

import digits
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hrrl_jax import robust


def make_optimizer(
    concept_sizes: np.ndarray, learning_rate: float = 3e-3, axis_name: str | None = None
) -> optax.GradientTransformationExtraArgs:
    """AdamW with the hierarchical reweighting in its chain, skipping non-finite steps; `axis_name` for a step
    written per device (shard_map)."""
    return optax.apply_if_finite(
        optax.chain(
            robust.hierarchical_reweighting(
                digits.CONCEPT_OF_CLASS,
                concept_sizes,
                divergence="l2",  # concept level: p = projection of q + f/λ onto the simplex
                lam=1.0,  # price of moving p away from the uniform prior: smaller, stronger adversary
                example_level="reweight",  # example level: within-class Wasserstein weights v
                gamma=1.0,
                example_temperature=1.0,
                axis_name=axis_name,
            ),
            optax.adamw(learning_rate),
        ),
        max_consecutive_errors=5,
    )


def make_train_step(model: digits.MLP, tx: optax.GradientTransformationExtraArgs) -> Callable:
    """A pure step ``(params, opt_state, images, labels) -> (params, opt_state, metrics)``."""

    def weighted_loss(params, opt_state, images, labels):
        logits, features = model.apply(params, images)
        per_example_loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        weights = robust.loss_weights(opt_state, labels, per_example_loss=per_example_loss, features=features)
        return jnp.mean(weights * per_example_loss), (per_example_loss, features, weights)

    def train_step(params, opt_state, images, labels):
        grads, (per_example_loss, features, weights) = jax.grad(weighted_loss, has_aux=True)(
            params, opt_state, images, labels
        )
        updates, opt_state = tx.update(
            grads, opt_state, params, per_example_loss=per_example_loss, labels=labels, features=features
        )
        metrics = {
            "loss": jnp.mean(per_example_loss),
            "concept_distribution": robust.concept_distribution(opt_state),
            "ess": robust.weight_stats(weights)["ess"],
        }
        return optax.apply_updates(params, updates), opt_state, metrics

    return train_step


def accuracy(model: digits.MLP, params, images: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Top-1 accuracy and the accuracy within each concept."""
    logits, _ = jax.jit(model.apply)(params, images)
    correct = np.asarray(jnp.argmax(logits, axis=-1) == labels)
    concepts = digits.CONCEPT_OF_CLASS[labels]
    return float(correct.mean()), np.array([correct[concepts == k].mean() for k in range(len(digits.CONCEPT_NAMES))])


class TrainResult(NamedTuple):
    params: dict
    opt_state: optax.OptState
    losses: np.ndarray  # mean cross-entropy of each step's batch
    concept_distributions: np.ndarray  # p after each step, [steps, K]
    ess: np.ndarray  # ESS of each step's weights
    test_accuracy: float
    test_concept_accuracy: np.ndarray


def train(num_steps: int = 300, batch_size: int = 128, seed: int = 0, log_every: int = 50, log=print) -> TrainResult:
    data = digits.load()
    model = digits.MLP()
    params = model.init(jax.random.key(seed), data.train_images[:1])
    tx = make_optimizer(data.concept_sizes)
    opt_state = tx.init(params)
    train_step = jax.jit(make_train_step(model, tx))

    history = []
    for step, (images, labels) in zip(range(num_steps), digits.uniform_batches(data, batch_size, seed)):
        params, opt_state, metrics = train_step(params, opt_state, images, labels)
        history.append(metrics)
        if log_every and (step + 1) % log_every == 0:
            log(log_line(step + 1, metrics))
    return finish(model, params, opt_state, history, data, log)


def log_line(step: int, metrics: dict) -> str:
    p = ", ".join(f"{name} {share:.3f}" for name, share in zip(digits.CONCEPT_NAMES, metrics["concept_distribution"]))
    return f"step {step}: loss {float(metrics['loss']):.4f}, ESS {float(metrics['ess']):.3f}, p = {p}"


def finish(model: digits.MLP, params, opt_state, history: list[dict], data: digits.Digits, log) -> TrainResult:
    """Test accuracy and the per-step metrics, fetched from the devices once at the end."""
    history = jax.device_get(history)
    test_accuracy, test_concept_accuracy = accuracy(model, params, data.test_images, data.test_labels)
    log(f"test accuracy {test_accuracy:.4f}, per concept {np.round(test_concept_accuracy, 4).tolist()}")
    return TrainResult(
        params,
        opt_state,
        np.array([m["loss"] for m in history]),
        np.stack([m["concept_distribution"] for m in history]),
        np.array([m["ess"] for m in history]),
        test_accuracy,
        test_concept_accuracy,
    )


if __name__ == "__main__":
    train()
