"""Example-level worst cases inside each class: batch reweighting and linear-head feature perturbation.

The ground cost moves mass only between examples of the same class, in deep-feature space,
``c((z,y),(z',y')) = ‖z − z'‖² + ∞·[y ≠ y']``, handled in penalty form with multiplier ``γ``
(Sinha, Namkoong, Duchi, "Certifying Some Distributional Robustness with Principled Adversarial
Training", ICLR 2018). See `method §3 <method.html#3-example-level>`_.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from hrrl_jax.robust._sharding import replicated

LOG_GAMMA_RANGE = (-12.0, 24.0)
DEFAULT_BISECTION_STEPS = 40


@jax.jit
def within_class_coupling(
    per_example_loss: jax.Array,
    features: jax.Array,
    labels: jax.Array,
    *,
    gamma: float | jax.Array,
    temperature: float | jax.Array,
) -> jax.Array:
    """The worst-case coupling ``π`` of the batch restricted to its own support.

    Within each class group ``G`` of the batch, with uniform source mass and unit-length features ``ẑ``:
    ``π_ij = (1/|G|) · softmax_{j∈G}((ℓ_j − γ‖ẑ_i − ẑ_j‖²) / τ_e)`` and ``π_ij = 0`` across classes.
    This is the exact maximiser of ``Σ_ij π_ij (ℓ_j − γ‖ẑ_i − ẑ_j‖²) − τ_e Σ_ij π_ij log(|G| π_ij)``
    over couplings whose row sums are the uniform source mass ``1/|G|``.

    Args:
      per_example_loss: ``ℓ``, shape ``[m]``.
      features: deep features ``z``, shape ``[m, D]``; normalised to unit length here.
      labels: integer class labels, shape ``[m]``.
      gamma: transport penalty ``γ >= 0`` (``inf`` allowed), a scalar or one value per example
        (row ``i`` uses ``gamma[i]``).
      temperature: entropic temperature ``τ_e > 0``.

    Returns:
      float32 ``[m, m]`` coupling, rows summing to ``1/|G_i|``; no gradient flows through it.
    """
    geometry = _pairwise_geometry(per_example_loss, features, labels)
    group_size = jnp.sum(geometry.same_class, axis=1, keepdims=True)
    return _within_class_softmax(geometry, gamma, temperature) / group_size


@jax.jit
def example_weights(
    per_example_loss: jax.Array,
    features: jax.Array,
    labels: jax.Array,
    *,
    gamma: float | jax.Array | None,
    temperature: float | jax.Array,
    radius: float | jax.Array | None = None,
) -> jax.Array:
    """Within-class closed-form Wasserstein weights ``v`` on the batch's support.

    See `method §3 <method.html#3-example-level>`_.

    ``v_j = |G| · Σ_i π_ij`` with ``π`` from :func:`within_class_coupling`: the worst-case mass that
    lands on example ``j``, relative to uniform. The mean of ``v`` over each class present in the
    batch is 1; ``γ → ∞`` gives ``v ≡ 1`` (ERM); ``γ → 0`` gives ``|G| · softmax(ℓ/τ_e)`` in the class.

    With ``radius = ε`` the constraint form is used instead of the penalty: per class group, ``γ`` is
    the value whose coupling moves exactly ``Σ_ij π_ij ‖ẑ_i − ẑ_j‖² = ε`` (``γ = 0`` where even
    ``γ = 0`` moves less), found by :func:`gamma_for_radius` in jit; pass ``gamma=None`` then.

    Args:
      per_example_loss: ``ℓ``, shape ``[m]``.
      features: ``z``, shape ``[m, D]``.
      labels: integer class labels, shape ``[m]``.
      gamma: penalty ``γ >= 0`` (``inf`` allowed); ``None`` exactly when ``radius`` is given.
      temperature: ``τ_e > 0``; smaller concentrates the weights on the hardest examples.
      radius: optional transport budget ``ε > 0`` in squared unit-feature distance (at most 4).

    Returns:
      float32 ``[m]`` weights with stopped gradient.
    """
    if (gamma is None) == (radius is None):
        raise ValueError(
            f"example_weights needs exactly one of gamma (penalty form) and radius (constraint form); "
            f"got gamma={gamma!r}, radius={radius!r}. Pass gamma=None when setting radius."
        )
    if radius is not None:
        gamma = gamma_for_radius(per_example_loss, features, labels, radius=radius, temperature=temperature)
    row_softmax = _within_class_softmax(_pairwise_geometry(per_example_loss, features, labels), gamma, temperature)
    # |G| · Σ_i π_ij = Σ_i softmax_ij, since π_ij = softmax_ij / |G| and i, j share the group G.
    return jax.lax.stop_gradient(jnp.sum(row_softmax, axis=0))


@functools.partial(jax.jit, static_argnames=("bisection_steps",))
def gamma_for_radius(
    per_example_loss: jax.Array,
    features: jax.Array,
    labels: jax.Array,
    *,
    radius: float | jax.Array,
    temperature: float | jax.Array,
    bisection_steps: int = DEFAULT_BISECTION_STEPS,
) -> jax.Array:
    """Per class group, the penalty ``γ`` whose within-class coupling moves exactly ``radius``.

    The moved cost ``T_G(γ) = Σ_{i∈G, j} π_ij ‖ẑ_i − ẑ_j‖²`` decreases in ``γ``
    (``dT/dγ = −Var(d)/τ_e`` per row), so a fixed number of bisection steps on ``log γ`` over
    ``[e^-12, e^24]`` finds the root inside jit without host round-trips. Groups with
    ``T_G(0) <= radius`` (including single-example groups) get ``γ = 0``.

    Returns:
      float32 ``[m]``: the ``γ`` of each example's class group.
    """
    radius = jnp.asarray(radius, jnp.float32)
    # The geometry does not depend on γ: built once here, reused by every bisection step.
    geometry = _pairwise_geometry(per_example_loss, features, labels)
    same_class, sq_distance = geometry.same_class, geometry.sq_distance
    group_size = jnp.sum(same_class, axis=1)
    # Every member reads its group's cost from the group's first member, so all members of a group
    # take the same bisection decisions bit for bit.
    first_member = jnp.argmax(same_class, axis=1)

    def group_moved_cost(gamma_per_row: jax.Array) -> jax.Array:
        row_softmax = _within_class_softmax(geometry, gamma_per_row, temperature)
        moved_per_row = jnp.sum(row_softmax * sq_distance, axis=1)
        return ((same_class.astype(jnp.float32) @ moved_per_row) / group_size)[first_member]

    def bisect(bounds: tuple[jax.Array, jax.Array], _) -> tuple[tuple[jax.Array, jax.Array], None]:
        low, high = bounds
        middle = 0.5 * (low + high)
        moves_too_much = group_moved_cost(jnp.exp(middle)) > radius
        return (jnp.where(moves_too_much, middle, low), jnp.where(moves_too_much, high, middle)), None

    # Built from the losses so that the carry varies over the same shard_map axes as the bisection's output.
    zeros = jnp.zeros_like(geometry.loss)
    start = (zeros + LOG_GAMMA_RANGE[0], zeros + LOG_GAMMA_RANGE[1])
    (low, high), _ = jax.lax.scan(bisect, start, None, length=bisection_steps)
    gamma = jnp.exp(0.5 * (low + high))
    within_budget_unpenalised = group_moved_cost(zeros) <= radius
    return jax.lax.stop_gradient(jnp.where(within_budget_unpenalised, 0.0, gamma))


@functools.partial(jax.jit, static_argnames=("steps",))
def perturb_features(
    features: jax.Array,
    labels: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    *,
    gamma: float | jax.Array,
    steps: int = 1,
) -> jax.Array:
    """Worst-case features for a linear head ``(W, b)``, off the batch's support.

    See `method §3 <method.html#3-example-level>`_.

    One step is the closed-form ascent ``δ_i = ∇_z ℓ_i / (2γ) = Wᵀ(softmax(W z_i + b) − e_{y_i}) / (2γ)``,
    exact for the linearised loss; ``steps > 1`` iterates the stationarity condition of
    ``sup_z' ℓ(z') − γ‖z' − z‖²``, ``z' ← z + ∇ℓ(z') / (2γ)``, which converges to the exact maximiser
    when ``γ`` exceeds the head's smoothness constant. The training loss is then
    ``ℓ_i^rob = CE(W(z_i + stop_grad(δ_i)) + b, y_i)``: gradients flow through ``z`` (and the head
    applied by the caller) but not through ``δ``.

    Args:
      features: ``z``, shape ``[m, D]``.
      labels: integer class labels, shape ``[m]``.
      kernel: head kernel in Flax layout ``[D, C]`` (logits ``= z @ kernel + bias``).
      bias: head bias ``[C]``.
      gamma: penalty ``γ > 0`` (``inf`` gives ``δ = 0``).
      steps: fixed number of ascent steps, at least 1.

    Returns:
      ``z + stop_grad(δ)`` in the dtype of ``features`` (``δ`` computed in float32).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    features = jnp.asarray(features)
    clean = jax.lax.stop_gradient(jnp.asarray(features, jnp.float32))
    kernel = jax.lax.stop_gradient(jnp.asarray(kernel, jnp.float32))
    bias = jax.lax.stop_gradient(jnp.asarray(bias, jnp.float32))
    one_hot = jax.nn.one_hot(labels, kernel.shape[1], dtype=jnp.float32)
    scale = 1.0 / (2.0 * jnp.asarray(gamma, jnp.float32))
    adversarial = clean
    for _ in range(steps):
        loss_gradient = (jax.nn.softmax(adversarial @ kernel + bias, axis=-1) - one_hot) @ kernel.T
        adversarial = clean + scale * loss_gradient
    delta = jax.lax.stop_gradient(adversarial - clean)
    return features + delta.astype(features.dtype)


class _PairwiseGeometry(NamedTuple):
    """What every within-class softmax of one batch shares, whatever ``γ`` and ``τ_e``.

    An example whose loss or features are not finite (NaN, inf) is left out of its class group: it forms a group
    of its own (loss and features read as 0), so it gets ``v = 1`` and the others' weights are what they would be
    without it, all finite.

    Attributes:
      loss: ``ℓ``, float32 ``[m]``, replicated, no gradient; 0 where not finite.
      sq_distance: ``d_ij = ‖ẑ_i − ẑ_j‖²`` of the unit-length features, float32 ``[m, m]``, 0 on the diagonal.
      same_class: ``y_i == y_j`` for two finite examples, and ``i == j``, bool ``[m, m]``.
    """

    loss: jax.Array
    sq_distance: jax.Array
    same_class: jax.Array


def _pairwise_geometry(per_example_loss: jax.Array, features: jax.Array, labels: jax.Array) -> _PairwiseGeometry:
    """Checks the batch's shapes, normalises the features and builds ``d`` and the same-class mask once."""
    loss = jax.lax.stop_gradient(replicated(jnp.asarray(per_example_loss, jnp.float32)))
    features = jax.lax.stop_gradient(replicated(jnp.asarray(features, jnp.float32)))
    labels = replicated(jnp.asarray(labels))
    if loss.ndim != 1 or features.ndim != 2 or labels.shape != loss.shape or features.shape[0] != loss.shape[0]:
        raise ValueError(
            "expected per_example_loss [m], features [m, D] and labels [m]; got shapes "
            f"{loss.shape}, {features.shape} and {labels.shape}."
        )
    finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(features), axis=1)
    loss = jnp.where(finite, loss, 0.0)
    features = jnp.where(finite[:, None], features, 0.0)
    norms = jnp.linalg.norm(features, axis=1, keepdims=True)
    unit = features / jnp.maximum(norms, 1e-12)
    is_diagonal = jnp.eye(loss.shape[0], dtype=bool)
    sq_distance = jnp.where(is_diagonal, 0.0, jnp.clip(2.0 - 2.0 * unit @ unit.T, 0.0, 4.0))
    both_finite = finite[:, None] & finite[None, :]
    same_class = ((labels[:, None] == labels[None, :]) & both_finite) | is_diagonal
    return _PairwiseGeometry(loss=loss, sq_distance=sq_distance, same_class=same_class)


def _within_class_softmax(
    geometry: _PairwiseGeometry, gamma: float | jax.Array, temperature: float | jax.Array
) -> jax.Array:
    """``softmax_{j∈G_i}((ℓ_j − γ_i d_ij) / τ_e)``, float32 ``[m, m]``, zero across classes.

    ``γ d`` is taken as 0 where ``d = 0`` so that ``γ = inf`` gives the identity coupling, not NaN.
    Every row keeps its own diagonal entry, so no row is empty.
    """
    loss, sq_distance = geometry.loss, geometry.sq_distance
    gamma_per_row = jnp.broadcast_to(jnp.asarray(gamma, jnp.float32), loss.shape)[:, None]
    penalty = jnp.where(sq_distance > 0, gamma_per_row * sq_distance, 0.0)
    scores = (loss[None, :] - penalty) / jnp.asarray(temperature, jnp.float32)
    logits = jnp.where(geometry.same_class, scores, -jnp.inf)
    return jax.nn.softmax(logits, axis=1)
