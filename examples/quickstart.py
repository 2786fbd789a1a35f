"""The README's library example: the reweighting in an own training loop, with jax, numpy and optax only.

Softmax regression on random data; `pip install hrrl_jax` is all it needs. It prints the adversary's concept
distribution p and the effective sample size of the loss weights after three steps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hrrl_jax import robust

concept_of_class = np.array([0, 0, 1, 1, 2])  # class -> concept (identity if there is no hierarchy)
concept_sizes = np.array([600, 300, 100])  # training examples per concept, n_k

tx = optax.chain(
    optax.clip_by_global_norm(1.0),
    robust.hierarchical_reweighting(
        concept_of_class,
        concept_sizes,
        divergence="l2",
        lam=1.0,
        example_level="reweight",
        gamma=1.0,
        example_temperature=1.0,
    ),
    optax.adamw(1e-3),
)
params = {"kernel": jnp.zeros((8, 5)), "bias": jnp.zeros(5)}
opt_state = tx.init(params)


def loss_fn(params, opt_state, images, labels):
    features = images  # deep features z: the input of the last linear layer
    logits = features @ params["kernel"] + params["bias"]
    per_example_loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    weights = robust.loss_weights(opt_state, labels, per_example_loss=per_example_loss, features=features)
    return jnp.mean(weights * per_example_loss), (per_example_loss, features, weights)


@jax.jit
def train_step(params, opt_state, images, labels):
    grads, (per_example_loss, features, weights) = jax.grad(loss_fn, has_aux=True)(params, opt_state, images, labels)
    updates, opt_state = tx.update(
        grads, opt_state, params, per_example_loss=per_example_loss, labels=labels, features=features
    )
    metrics = {"concept_distribution": robust.concept_distribution(opt_state), **robust.weight_stats(weights)}
    return optax.apply_updates(params, updates), opt_state, metrics


key = jax.random.key(0)
for step in range(3):
    images = jax.random.normal(jax.random.fold_in(key, step), (32, 8))
    labels = jax.random.randint(jax.random.fold_in(key, 1000 + step), (32,), 0, 5)
    params, opt_state, metrics = train_step(params, opt_state, images, labels)
print(metrics["concept_distribution"], metrics["ess"])
