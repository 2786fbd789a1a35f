"""Linear probe: multinomial logistic regression on frozen features, its strength chosen on train data.

The probe answers "how linearly separable are the target classes in this feature space?". Protocol:

1. Carve a stratified validation split (``validation_fraction`` of each class) out of the TRAIN features.
2. Standardise with the fitting split's mean and std, then for every ``l2`` in the grid minimise
       J(W, b) = (1/n) Σ_i CE(softmax(W x_i + b), y_i) + (l2 / 2) ‖W‖²
   (bias not penalised) with full-batch L-BFGS and a zoom line search (``optax.lbfgs``); all grid values
   are solved from the strongest to the weakest, each warm-started from the last, by one compiled program.
3. Keep the ``l2`` with the best validation accuracy (ties go to the stronger regularisation), refit on
   train + validation with it.

The test set is never seen before the final ``probe_accuracy`` call, so the choice of ``l2`` cannot
depend on it. Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hrrl_jax.schema import PROBE_L2_GRID

DEFAULT_L2_GRID: tuple[float, ...] = PROBE_L2_GRID
# Features whose training std is below this are constant: they are centred and left unscaled.
_MIN_FEATURE_STD = 1e-6


class LinearProbe(NamedTuple):
    """A fitted probe: logits = ((x - mean) / std) @ weights + bias.

    Attributes:
      weights: (d, C) float32 weights acting on standardised features.
      bias: (C,) float32 bias.
      mean: (d,) training mean used to standardise.
      std: (d,) training std used to standardise (1 where a feature is constant).
      l2: the chosen regularisation strength.
      validation_accuracy: accuracy of the chosen strength on the validation split.
      validation_curve: (l2, validation accuracy) for every grid value, in grid order.
    """

    weights: jax.Array
    bias: jax.Array
    mean: jax.Array
    std: jax.Array
    l2: float
    validation_accuracy: float
    validation_curve: tuple[tuple[float, float], ...]


def _check_features_and_labels(features, labels, num_classes: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns (float32 features, int32 labels) or raises a ValueError that says what to fix."""
    features = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels)
    if features.ndim != 2:
        raise ValueError(f"{name} features must be a 2-D array (examples x dimensions); got shape {features.shape}.")
    if labels.shape != (features.shape[0],):
        raise ValueError(
            f"{name} labels must have shape ({features.shape[0]},) to match the features; got {labels.shape}."
        )
    if not np.all(np.isfinite(features)):
        raise ValueError(f"{name} features contain NaN or infinite values; check the feature extraction.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{name} labels must lie in [0, {num_classes}); saw values in [{labels.min()}, {labels.max()}]. "
            "Pass the right num_classes or remap the labels to 0..C-1."
        )
    return features, labels.astype(np.int32)


def standardisation_statistics(features: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-feature mean and std of ``features`` (N, d); a constant feature gets std 1 so it stays finite."""
    mean = jnp.mean(features, axis=0)
    std = jnp.std(features, axis=0)
    return mean, jnp.where(std < _MIN_FEATURE_STD, 1.0, std)


@jax.custom_vjp
def _features_times(features: jax.Array, features_transposed: jax.Array, weights: jax.Array) -> jax.Array:
    """features @ weights, whose weight gradient reads the row-major copy ``features_transposed``.

    XLA:CPU runs (d, N) @ (N, C) on a contiguous transpose markedly faster than it contracts (N, d) over
    its leading axis; the probe's full-batch solver spends nearly all its time in these two products.
    """
    return features @ weights


def _features_times_forward(features, features_transposed, weights):
    return features @ weights, features_transposed


def _features_times_backward(features_transposed, output_cotangent):
    return None, None, features_transposed @ output_cotangent


_features_times.defvjp(_features_times_forward, _features_times_backward)


def _zero_parameters(dimension: int, num_classes: int) -> tuple[jax.Array, jax.Array]:
    return jnp.zeros((dimension, num_classes), jnp.float32), jnp.zeros((num_classes,), jnp.float32)


@functools.partial(jax.jit, static_argnames=("max_iterations",))
def fit_logistic_regression(
    features: jax.Array,
    labels: jax.Array,
    example_weights: jax.Array,
    l2: jax.Array,
    initial: tuple[jax.Array, jax.Array],
    *,
    max_iterations: int = 100,
    tolerance: float = 1e-4,
) -> tuple[jax.Array, jax.Array]:
    """Minimises J(W, b) = Σ_i a_i CE_i / Σ_i a_i + (l2/2)‖W‖² on already standardised features by L-BFGS.

    ``example_weights`` a_i >= 0 select the fitting rows (0 leaves a row out), so every fit over one
    feature matrix (each grid value, the refit) shares one compiled program. Starts from ``initial`` =
    (W, b): zeros, or a neighbouring strength's solution to warm-start a path. Stops when
    ‖∇J‖ <= ``tolerance`` or after ``max_iterations`` L-BFGS steps.

    Returns:
      (weights (d, C), bias (C,)).
    """
    features_transposed = features.T.copy()
    normalised_weights = example_weights / jnp.sum(example_weights)

    def objective(params):
        weights, bias = params
        logits = _features_times(features, features_transposed, weights) + bias
        cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return jnp.sum(normalised_weights * cross_entropy) + 0.5 * l2 * jnp.sum(weights**2)

    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry):
        params, state, iteration = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=objective)
        return optax.apply_updates(params, updates), state, iteration + 1

    def keep_going(carry):
        _, state, iteration = carry
        gradient_norm = optax.tree.norm(optax.tree.get(state, "grad"))
        return (iteration == 0) | ((iteration < max_iterations) & (gradient_norm > tolerance))

    params, _, _ = jax.lax.while_loop(keep_going, step, (initial, solver.init(initial), jnp.asarray(0)))
    return params


def _predict(weights: jax.Array, bias: jax.Array, standardised_features: jax.Array) -> jax.Array:
    return jnp.argmax(standardised_features @ weights + bias, axis=-1)


def stratified_validation_split(
    labels: np.ndarray, validation_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, validation): round(fraction · n_c) random examples of each class c go to validation."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1); got {validation_fraction}.")
    permutation = np.random.default_rng(seed).permutation(labels.shape[0])
    validation = []
    for label in np.unique(labels):
        members = permutation[labels[permutation] == label]
        validation.append(members[: int(round(validation_fraction * members.size))])
    validation = np.sort(np.concatenate(validation))
    fit = np.setdiff1d(np.arange(labels.shape[0]), validation)
    if validation.size == 0 or fit.size == 0:
        raise ValueError(
            f"validation_fraction={validation_fraction} of {labels.shape[0]} training examples leaves an empty "
            "fitting or validation split; use more training examples or another fraction."
        )
    return fit, validation


def fit_linear_probe(
    train_features,
    train_labels,
    *,
    num_classes: int,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    validation_fraction: float = 0.2,
    seed: int = 0,
    max_iterations: int = 100,
) -> LinearProbe:
    """Fits a linear probe on train features only, choosing ``l2`` on a validation split of them.

    Args:
      train_features: (N, d) frozen features.
      train_labels: (N,) integer labels in [0, num_classes).
      num_classes: number of classes C.
      l2_grid: candidate strengths of (l2/2)‖W‖² added to the mean cross-entropy.
      validation_fraction: share of each class held out to choose ``l2``.
      seed: seed of the validation split.
      max_iterations: L-BFGS steps per fit.

    Returns:
      The probe refitted on all train features with the chosen ``l2``.
    """
    features, labels = _check_features_and_labels(train_features, train_labels, num_classes, "train")
    if len(l2_grid) == 0 or min(l2_grid) < 0:
        raise ValueError(f"l2_grid must be a non-empty sequence of non-negative strengths; got {tuple(l2_grid)}.")
    fit_indices, validation_indices = stratified_validation_split(labels, validation_fraction, seed)

    is_fit_row = np.zeros(labels.shape[0], np.float32)
    is_fit_row[fit_indices] = 1.0
    all_features, all_labels = jnp.asarray(features), jnp.asarray(labels)
    fit_mean, fit_std = standardisation_statistics(jnp.asarray(features[fit_indices]))
    standardised = (all_features - fit_mean) / fit_std
    validation_features = standardised[validation_indices]
    validation_labels = all_labels[validation_indices]

    # From the strongest to the weakest strength, each fit warm-started from the previous solution.
    params = _zero_parameters(features.shape[1], num_classes)
    solution_of_l2, accuracy_of_l2 = {}, {}
    for l2 in sorted({float(l2) for l2 in l2_grid}, reverse=True):
        params = fit_logistic_regression(
            standardised, all_labels, jnp.asarray(is_fit_row), jnp.float32(l2), params, max_iterations=max_iterations
        )
        solution_of_l2[l2] = params
        accuracy_of_l2[l2] = float(jnp.mean(_predict(*params, validation_features) == validation_labels))
    # Best validation accuracy; among equals, the strongest regularisation.
    chosen_l2 = max(accuracy_of_l2, key=lambda l2: (accuracy_of_l2[l2], l2))

    mean, std = standardisation_statistics(all_features)
    weights, bias = fit_logistic_regression(
        (all_features - mean) / std,
        all_labels,
        jnp.ones(labels.shape[0], jnp.float32),
        jnp.float32(chosen_l2),
        solution_of_l2[chosen_l2],
        max_iterations=max_iterations,
    )
    return LinearProbe(
        weights=weights,
        bias=bias,
        mean=mean,
        std=std,
        l2=chosen_l2,
        validation_accuracy=accuracy_of_l2[chosen_l2],
        validation_curve=tuple((float(l2), accuracy_of_l2[float(l2)]) for l2 in l2_grid),
    )


def probe_predictions(probe: LinearProbe, features) -> jax.Array:
    """Predicted class of each row of ``features`` (N, d) under ``probe``."""
    features = jnp.asarray(features, jnp.float32)
    if features.ndim != 2 or features.shape[1] != probe.weights.shape[0]:
        raise ValueError(
            f"features must have shape (N, {probe.weights.shape[0]}) like the probe's training features; "
            f"got {features.shape}."
        )
    return _predict(probe.weights, probe.bias, (features - probe.mean) / probe.std)


def probe_accuracy(probe: LinearProbe, features, labels) -> float:
    """Top-1 accuracy of ``probe`` on (features, labels), a fraction in [0, 1]."""
    labels = np.asarray(labels)
    predictions = np.asarray(probe_predictions(probe, features))
    if labels.shape != predictions.shape:
        raise ValueError(f"labels must have shape {predictions.shape} to match the features; got {labels.shape}.")
    return float(np.mean(predictions == labels))


def evaluate_linear_probe(
    train_features,
    train_labels,
    test_features,
    test_labels,
    *,
    num_classes: int,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    validation_fraction: float = 0.2,
    seed: int = 0,
    max_iterations: int = 100,
) -> dict:
    """Fits a probe on the train features (``fit_linear_probe``) and scores it once on the test features.

    Returns:
      {"test_accuracy", "l2", "validation_accuracy", "validation_curve"}; accuracies are fractions.
    """
    test_features, test_labels = _check_features_and_labels(test_features, test_labels, num_classes, "test")
    probe = fit_linear_probe(
        train_features,
        train_labels,
        num_classes=num_classes,
        l2_grid=l2_grid,
        validation_fraction=validation_fraction,
        seed=seed,
        max_iterations=max_iterations,
    )
    return {
        "test_accuracy": probe_accuracy(probe, test_features, test_labels),
        "l2": probe.l2,
        "validation_accuracy": probe.validation_accuracy,
        "validation_curve": [list(point) for point in probe.validation_curve],
    }
