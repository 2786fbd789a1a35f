"""The hierarchical reweighting as an optax transform: the concept-level adversary lives in its state.

Each step (`method §5 <method.html#5-the-algorithm>`_): the loss function reads the per-example weights
``w_i = p_t[c(y_i)] · N/n_{c(y_i)} · v_i`` from the optimizer state with :func:`loss_weights`, the
optimizer steps on ``∇ (1/m) Σ_i w_i ℓ_i``, and ``update`` advances the adversary's running concept
losses with the unbiased estimate ``f̂``. ``update`` returns the gradient updates unchanged, so the
transform composes with any other optax transform in a chain.

The static configuration rides in ``HierarchicalReweightingState.settings``: see :mod:`hrrl_jax.robust.settings`;
its fingerprint rides in the state's leaves, so a checkpoint restored into a transform with other settings is
refused (:mod:`hrrl_jax.robust._fingerprint`).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hrrl_jax.robust._batch import OUT_OF_RANGE, per_example_concepts
from hrrl_jax.robust._checks import concrete_value, debug_check
from hrrl_jax.robust._fingerprint import mismatch_message
from hrrl_jax.robust._sharding import gather_batch, local_part
from hrrl_jax.robust.concept_level import Divergence, concept_best_response
from hrrl_jax.robust.estimators import batch_concept_losses
from hrrl_jax.robust.example_level import example_weights
from hrrl_jax.robust.schedules import Hyperparameter, hyperparameter_at
from hrrl_jax.robust.settings import ReweightingSettings, make_settings


class HierarchicalReweightingState(NamedTuple):
    """State of :func:`hierarchical_reweighting`.

    Attributes:
      concept_losses: the adversary's concept losses ``f̄`` (float32 ``[K]``): the running average of
        ``f̂`` with ``accumulate="mean"``, their sum with ``accumulate="sum"``.
      step: number of updates applied so far (int32 scalar); the ``t`` of ``α_t`` and of the schedules.
      skipped_updates: number of updates skipped so far (int32 scalar): batches whose concept-loss estimate
        was not finite, held an id out of range, or met a state saved with other settings. Log it.
      settings_fingerprint: the settings this state was made with, as uint8 ``[512]``, saved with the state.
      settings: the static configuration (no array leaves; see :mod:`hrrl_jax.robust.settings`).
    """

    concept_losses: jax.Array
    step: jax.Array
    skipped_updates: jax.Array
    settings_fingerprint: jax.Array
    settings: ReweightingSettings


def hierarchical_reweighting(
    concept_of_class: Any | None,
    concept_sizes: Any,
    *,
    divergence: Divergence = "l2",
    lam: Hyperparameter = 1.0,
    floor: float = 0.0,
    prior: Literal["uniform", "empirical"] | Any = "uniform",
    cost: Any | None = None,
    temperature: float | None = None,
    example_level: Literal["reweight", "none"] = "reweight",
    gamma: Hyperparameter = 1.0,
    example_temperature: Hyperparameter = 1.0,
    step_offset: float = 0.0,
    constant_step: float | None = None,
    accumulate: Literal["mean", "sum"] = "mean",
    radius: float | None = None,
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Hierarchically robust reweighting (HRRL objective as implemented here) as an optax transform.

    Objective: ``min_θ max_{p∈Δ_K} Σ_k p_k R_k(θ) − λ D(p, q)`` with ``R_k`` the example-level
    worst-case loss inside concept ``k``. The concept distribution is the closed-form best response
    ``p_t = (1 − ρ) p*(f̄_t; λ_t) + ρ q`` (:func:`concept_best_response`, floor ``ρ``, default 0) to the
    adversary's concept losses, updated by dual averaging ``f̄_{t+1} = (1 − α_t) f̄_t + α_t f̂``,
    ``α_t = 1/(t + 1 + t0)`` (or a constant α), with ``f̂`` the unbiased minibatch estimate
    (:func:`concept_loss_estimate`). ``t`` is the state's step count (updates so far).

    Schedules: ``lam``, ``gamma`` and ``example_temperature`` each take a number or an optax-style schedule
    ``t -> value`` read at ``t`` wherever the value is used: ``λ_t`` in :func:`concept_distribution` (hence
    :func:`loss_weights`), ``γ_t`` and ``τ_e,t`` in the example weights of :func:`loss_weights` and of
    ``update`` (the same ``t`` in both within a step). ``λ_t = inf`` gives ``p_t = q``: a schedule that is
    ``inf`` for the first ``T`` steps defers the concept level, a decreasing one anneals it. A schedule is
    checked here at every step from 0 to 1024 and at 2^k and 1.5·2^k up to 2^24
    (:data:`hrrl_jax.robust.schedules.SCHEDULE_CHECK_STEPS`); a value ``<= 0`` or NaN raises ``ValueError``
    naming the argument and the step.

    Floor: ``ρ ∈ [0, 1)`` mixes ``p_t = (1 − ρ) p* + ρ q``, so ``p_t,k >= ρ q_k`` for every concept
    (ε-contamination of the prior). It is the exact best response of an adversary restricted to
    ``{(1 − ρ) p' + ρ q : p' ∈ Δ_K}`` with penalty ``(1 − ρ) λ D(p', q)``, and the weights keep their
    form, so they stay unbiased.

    Special cases: ERM (``lam=inf``, ``prior="empirical"``, ``example_level="none"``: all weights 1),
    EL (``divergence="none"``), CL (``example_level="none"``), HRRL (both). Group DRO (Sagawa et al.,
    "Distributionally Robust Neural Networks", ICLR 2020): ``accumulate="sum"``, ``divergence="kl"``,
    ``lam=1/η`` gives ``p ∝ q · exp(η Σ_s f̂_s)``, its exponentiated-gradient adversary on the concept
    simplex, with one difference: ``f̂`` is the unbiased importance-weighted estimate, not Group DRO's
    per-group batch mean. The same adversary on running means is ``accumulate="mean"``, ``divergence="kl"``,
    ``lam=lambda t: 1 / (η t)`` (``inf`` at ``t = 0``): Group DRO is a ``kl`` response with an annealed λ.

    Groups: with ``concept_of_class=None`` the concepts are given per example, ``groups=`` (int ``[m]`` in
    ``[0, K)``) to ``update`` and :func:`loss_weights`, e.g. the groups ``(label, attribute)`` of Group DRO;
    ``concept_sizes`` are then the group sizes. The example level still moves mass only within a label.

    Loud, never silent: a label (or group) outside its range raises ``ValueError`` naming it where the ids are
    concrete; under ``jit`` it is a ``checkify`` check, on with ``checkify.checkify(step,
    errors=checkify.user_checks)``, and the example gets weight 0. An update whose estimate ``f̂`` (or the new
    ``f̄``) is not finite, or whose batch holds an out-of-range id, is skipped: the state keeps its last values
    and counts it in ``skipped_updates``. An example whose loss is not finite is left out of the example level,
    so the other examples' weights stay finite (its own weighted loss is NaN: see ``optax.apply_if_finite``).

    Sharded: under ``jit`` with a sharded batch the statistics are those of the global batch. Under
    ``shard_map`` or ``pmap``, give the mapped batch axis as ``axis_name``: the estimate ``f̂`` is summed over
    it and the example level sees the whole batch (gathered), so the state stays replicated and equals the
    single-device one.

    ``update(updates, state, params=None, *, per_example_loss, labels, features=None, groups=None, **extra_args)``
    returns ``updates`` unchanged and advances the state; ``features`` is required with
    ``example_level="reweight"``; unknown extra args are ignored. optax's chain passes the same extra
    args to every member: since optax 0.2.7 a line search (``optax.scale_by_backtracking_linesearch``,
    ``scale_by_zoom_linesearch``) in the same chain raises ``TypeError`` on extra args its ``value_fn``
    does not accept, so give that ``value_fn`` ``**kwargs`` or keep the line search out of the chain.
    ``optax.MultiSteps`` passes only the last micro-batch's extra args.

    Args:
      concept_of_class: ``c``: integer ``[C]``, concept id in ``[0, K)`` of each class; ``None`` to pass each
        example's concept as ``groups``.
      concept_sizes: ``n_k``: training examples per concept (or group), ``[K]``, all positive.
      divergence: ``"l2"``, ``"kl"``, ``"wasserstein"`` or ``"none"`` (``p = q``).
      lam: ``λ > 0`` or a schedule ``t -> λ_t``; ``inf`` gives ``p = q``. Smaller is a stronger
        concept-level adversary.
      floor: ``ρ ∈ [0, 1)``: ``p = (1 − ρ) p* + ρ q``; 0 (the default) leaves ``p = p*``.
      prior: ``q``: ``"uniform"``, ``"empirical"`` (``n_k/N``) or an explicit ``[K]`` distribution.
      cost: ``[K, K]`` ground cost between concepts for ``"wasserstein"`` (default ``1 − I``);
        ignored by the other divergences.
      temperature: ``τ_c`` for ``"wasserstein"`` (default 1.0); ignored by the other divergences.
      example_level: ``"reweight"`` (within-class Wasserstein weights ``v``) or ``"none"`` (``v ≡ 1``).
        The ``perturb`` form changes the loss, not the weights: apply :func:`perturb_features` inside
        the loss, pass its per-example losses, and use ``"none"`` here.
      gamma: ``γ > 0`` of the example level (``inf`` gives ``v ≡ 1``), or a schedule ``t -> γ_t``;
        replaced by ``radius`` if set.
      example_temperature: ``τ_e > 0`` of the example level, or a schedule ``t -> τ_e,t``.
      step_offset: ``t0 >= 0`` in ``α_t = 1/(t + 1 + t0)``.
      constant_step: a constant ``α`` in ``(0, 1]`` instead (tracks non-stationary losses).
      accumulate: ``"mean"`` (dual averaging) or ``"sum"`` (cumulative losses, Group DRO).
      radius: optional Wasserstein budget ``ε`` of the example level (constraint form).
      axis_name: the ``shard_map``/``pmap`` axis (or tuple of axes) the batch is split over; ``None`` (the
        default) under ``jit`` or on one device.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a :class:`HierarchicalReweightingState`.
    """
    settings = make_settings(
        concept_of_class,
        concept_sizes,
        divergence=divergence,
        lam=lam,
        floor=floor,
        prior=prior,
        cost=cost,
        temperature=temperature,
        example_level=example_level,
        gamma=gamma,
        example_temperature=example_temperature,
        step_offset=step_offset,
        constant_step=constant_step,
        accumulate=accumulate,
        radius=radius,
        axis_name=axis_name,
    )

    def init_fn(params: optax.Params) -> HierarchicalReweightingState:
        del params
        return HierarchicalReweightingState(
            concept_losses=jnp.zeros((settings.num_concepts,), jnp.float32),
            step=jnp.zeros((), jnp.int32),
            skipped_updates=jnp.zeros((), jnp.int32),
            settings_fingerprint=jnp.asarray(settings.fingerprint),
            settings=settings,
        )

    def update_fn(
        updates: optax.Updates,
        state: HierarchicalReweightingState,
        params: optax.Params | None = None,
        *,
        per_example_loss: jax.Array | None = None,
        labels: jax.Array | None = None,
        features: jax.Array | None = None,
        groups: jax.Array | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, HierarchicalReweightingState]:
        del params, extra_args
        _require_extra_args(
            settings, per_example_loss=per_example_loss, labels=labels, features=features, groups=groups
        )
        settings_match = _settings_match(state)
        concept, ids_in_range = per_example_concepts(
            settings.concept_of_class, settings.num_concepts, labels, groups, axis_name=settings.axis_name
        )
        estimate = batch_concept_losses(
            per_example_loss,
            concept,
            settings.concept_sizes,
            weights=_example_level_weights(settings, per_example_loss, features, labels, state.step),
            axis_name=settings.axis_name,
        )
        if settings.accumulate == "sum":
            concept_losses = state.concept_losses + estimate
        else:
            if settings.constant_step is not None:
                step_size = jnp.float32(settings.constant_step)
            else:
                step_size = 1.0 / (state.step.astype(jnp.float32) + 1.0 + settings.step_offset)
            concept_losses = (1.0 - step_size) * state.concept_losses + step_size * estimate
        finite = jnp.all(jnp.isfinite(estimate)) & jnp.all(jnp.isfinite(concept_losses))
        applied = settings_match & ids_in_range & finite
        return updates, state._replace(
            concept_losses=jnp.where(applied, concept_losses, state.concept_losses),
            step=state.step + applied.astype(jnp.int32),
            skipped_updates=state.skipped_updates + (~applied).astype(jnp.int32),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def find_reweighting_state(opt_state: Any) -> HierarchicalReweightingState:
    """The single :class:`HierarchicalReweightingState` inside a (nested) optimizer state.

    Searches the whole pytree, so it is found inside ``optax.chain`` tuples, ``optax.masked``,
    ``optax.inject_hyperparams``, ``optax.MultiSteps`` and user containers alike. Where the state's leaves are
    concrete (outside ``jit``), a state saved with other settings than its transform's raises ``ValueError``
    naming both (call it right after restoring a checkpoint to check).
    """
    state = _the_reweighting_state(opt_state)
    _settings_match(state)
    return state


def adopt_settings(opt_state: Any) -> Any:
    """``opt_state`` with its reweighting state marked as made with its transform's settings.

    For a run resumed on purpose with other settings (a new ``lam``, say): the adversary's concept losses and
    step carry over to the new settings instead of being refused. The fingerprint keeps its sharding.
    """
    state = _the_reweighting_state(opt_state)
    fingerprint = jnp.asarray(state.settings.fingerprint)
    if isinstance(state.settings_fingerprint, jax.Array):
        fingerprint = jax.device_put(fingerprint, state.settings_fingerprint.sharding)
    return jax.tree_util.tree_map(
        lambda node: node._replace(settings_fingerprint=fingerprint) if node is state else node,
        opt_state,
        is_leaf=lambda node: isinstance(node, HierarchicalReweightingState),
    )


def concept_distribution(opt_state: Any) -> jax.Array:
    """The adversary's current concept distribution ``p_t = (1 − ρ) p*(f̄_t; λ_t) + ρ q``, float32 ``[K]``.

    ``t`` is the state's step count, ``λ_t`` the value of ``lam`` there (the number itself if it is one),
    ``ρ`` the floor (with ``ρ = 0``, exactly ``p*(f̄_t; λ_t)``).
    """
    state = find_reweighting_state(opt_state)
    settings = state.settings
    distribution = concept_best_response(
        state.concept_losses,
        settings.prior,
        divergence=settings.divergence,
        lam=hyperparameter_at(settings.lam, state.step),
        cost=settings.cost,
        temperature=settings.temperature,
    )
    if settings.floor == 0:
        return distribution
    return (1.0 - settings.floor) * distribution + settings.floor * jnp.asarray(settings.prior)


def loss_weights(
    opt_state: Any,
    labels: jax.Array | None = None,
    *,
    per_example_loss: jax.Array | None = None,
    features: jax.Array | None = None,
    groups: jax.Array | None = None,
) -> jax.Array:
    """Per-example loss weights ``w_i = p_t[c_i] · N/n_{c_i} · v_i``, ``c_i = c(y_i)``.

    See `method §4 <method.html#4-unbiased-minibatch-estimates>`_.

    With a uniform minibatch, ``E_B[(1/m) Σ_i w_i ℓ_i] = Σ_k p_k R̂_k``: the gradient of the weighted
    mean is an unbiased estimate of the robust objective's. Call it inside the loss function (it is
    pure and jit-friendly); ``per_example_loss`` and ``features`` are needed with
    ``example_level="reweight"``; ``groups`` (the concept ``c_i`` of each example) with a transform built
    with ``concept_of_class=None``, and ``labels`` then only for the example level. An example whose
    label or group is out of range (under ``jit``; outside it raises) gets weight 0.

    Returns:
      float32 ``[m]`` weights (this device's examples under ``axis_name``) with stopped gradient.
    """
    state = find_reweighting_state(opt_state)
    settings = state.settings
    _require_extra_args(
        settings,
        per_example_loss=per_example_loss,
        labels=labels,
        features=features,
        groups=groups,
        need_loss=settings.example_level == "reweight",
        caller="loss_weights",
    )
    concept, _ = per_example_concepts(settings.concept_of_class, settings.num_concepts, labels, groups)
    in_range = concept != OUT_OF_RANGE
    concept = jnp.where(in_range, concept, 0)
    concept_sizes = jnp.asarray(settings.concept_sizes, jnp.float32)
    weights = concept_distribution(opt_state)[concept] * (jnp.sum(concept_sizes) / concept_sizes[concept])
    weights = jnp.where(in_range, weights, 0.0)
    example_level = _example_level_weights(settings, per_example_loss, features, labels, state.step)
    if example_level is not None:
        weights = weights * example_level
    return jax.lax.stop_gradient(weights.astype(jnp.float32))


def _the_reweighting_state(opt_state: Any) -> HierarchicalReweightingState:
    found = [
        node
        for node in jax.tree_util.tree_leaves(
            opt_state, is_leaf=lambda node: isinstance(node, HierarchicalReweightingState)
        )
        if isinstance(node, HierarchicalReweightingState)
    ]
    if len(found) != 1:
        raise ValueError(
            f"expected exactly one HierarchicalReweightingState in the optimizer state, found {len(found)}; "
            "build the optimizer with exactly one hierarchical_reweighting(...) transform and pass its state."
        )
    return found[0]


def _settings_match(state: HierarchicalReweightingState) -> jax.Array:
    """Whether the state was made with its transform's settings, as a bool scalar.

    Raises ``ValueError`` naming both where the fingerprint is concrete; under ``jit`` a mismatch is a
    ``checkify`` check (``checkify.user_checks``) and the update that sees it is skipped.
    """
    expected = state.settings.fingerprint
    saved = concrete_value(state.settings_fingerprint)
    if saved is not None:
        if not np.array_equal(saved, expected):
            raise ValueError(mismatch_message(saved, expected))
        return jnp.bool_(True)
    matches = jnp.all(state.settings_fingerprint == jnp.asarray(expected))
    debug_check(
        matches,
        "the hierarchical_reweighting state was saved by a transform with other settings; read it outside jit "
        "(robust.find_reweighting_state) to see which, or call robust.adopt_settings(opt_state).",
    )
    return matches


def _example_level_weights(
    settings: ReweightingSettings,
    per_example_loss: jax.Array,
    features: jax.Array | None,
    labels: jax.Array,
    step: jax.Array,
) -> jax.Array | None:
    """The example weights ``v`` (`method §3 <method.html#3-example-level>`_) with ``γ_t``, ``τ_e,t`` at ``step``, or
    ``None`` for ``example_level="none"``; with ``axis_name``, computed on the gathered batch and this device's part
    returned."""
    if settings.example_level == "none":
        return None
    temperature = hyperparameter_at(settings.example_temperature, step)
    gamma = None if settings.radius is not None else hyperparameter_at(settings.gamma, step)
    batch = (per_example_loss, features, labels)
    if settings.axis_name is not None:
        batch = tuple(gather_batch(jnp.asarray(x), settings.axis_name) for x in batch)
    weights = example_weights(*batch, gamma=gamma, temperature=temperature, radius=settings.radius)
    if settings.axis_name is not None:
        weights = local_part(weights, settings.axis_name, jnp.shape(per_example_loss)[0])
    return weights


def _require_extra_args(
    settings: ReweightingSettings,
    *,
    per_example_loss: jax.Array | None,
    labels: jax.Array | None,
    features: jax.Array | None,
    groups: jax.Array | None,
    need_loss: bool = True,
    caller: str = "hierarchical_reweighting update",
) -> None:
    """Raises at trace time, naming the missing (or misplaced) argument, when a required one is ``None``."""
    by_groups = settings.concept_of_class is None
    if groups is not None and not by_groups:
        raise TypeError(
            f"{caller} got `groups`, but this transform maps classes to concepts with concept_of_class; build it "
            "with concept_of_class=None and the group sizes as concept_sizes to give concepts per example."
        )
    required = {}
    if by_groups:
        required["groups"] = groups
    if not by_groups or settings.example_level == "reweight":
        required["labels"] = labels
    if need_loss:
        required["per_example_loss"] = per_example_loss
    if settings.example_level == "reweight":
        required["features"] = features
    for name, value in required.items():
        if value is None:
            raise TypeError(
                f"{caller} needs the argument `{name}` (example_level={settings.example_level!r}"
                + (", concepts given as groups" if by_groups else "")
                + f"), got None. Pass {', '.join(f'{arg}=...' for arg in required)}, e.g. "
                f"tx.update(grads, opt_state, params, {', '.join(f'{arg}=...' for arg in required)})."
            )
