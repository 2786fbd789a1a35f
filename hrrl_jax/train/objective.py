"""Maps `config.robust` onto the library's robust transform: ERM, EL, CL, HRRL and Group DRO from one path.

The trainer uses `hrrl_jax.robust` exactly as a user of the library would: this module only chooses the
arguments of `hierarchical_reweighting` and whether the loss uses the `perturb` or the `input` form.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from hrrl_jax import robust
from hrrl_jax.errors import ConfigError
from hrrl_jax.robust.schedules import Hyperparameter
from hrrl_jax.schema import EXAMPLE_LEVELS, LAM_SCHEDULES, ROBUST_METHODS, default_robust_config

__all__ = [
    "EXAMPLE_LEVELS",
    "ROBUST_METHODS",
    "InputLevel",
    "Objective",
    "build_objective",
    "default_robust_config",
    "lam_schedule",
]


@dataclasses.dataclass(frozen=True)
class Objective:
    """What the train step needs to know about the robust method (static under jit).

    `reweights`: the optimizer holds the reweighting transform and the loss uses `robust.loss_weights`.
    `perturb_gamma`: when set, per-example losses are the `perturb` form's robust losses.
    `input_level`: when set, the step's value and gradient are the `input` form's
    (`robust.input_level_value_and_grad`, through `hrrl_jax.train.input_level`). `perturb_steps`: the ascent steps
    of the `perturb` form.
    """

    method: str
    reweights: bool
    perturb_gamma: float | None = None
    input_level: InputLevel | None = None
    perturb_steps: int = 1


@dataclasses.dataclass(frozen=True)
class InputLevel:
    """The `input` example level's settings, `config.robust.input_*` (docs/method.md §3), static under jit.

    `gamma_by_concept` (γ_k, one per concept) replaces the scalar `gamma` when set; `defer_steps` and `ramp_steps`
    schedule it over the train step (`robust.deferred_ramp`); `seed` seeds the random control's directions.
    """

    gamma: float
    gamma_by_concept: tuple[float, ...] | None
    steps: int
    beta: float
    fraction: float
    gradient: str
    direction: str
    batch_norm: str
    craft_batch_norm: str
    coupling: str
    defer_steps: int
    ramp_steps: int
    seed: int


def build_objective(
    config: ml_collections.ConfigDict, concept_of_class: np.ndarray, concept_sizes: np.ndarray, *, seed: int = 0
) -> tuple[Objective, optax.GradientTransformationExtraArgs | None]:
    """Returns the step's `Objective` and the reweighting transform to put first in the optimizer chain.

    erm: no transform. el: example level only (empirical prior, so concept weights are 1). cl: concept
    level only. hrrl: both. group_dro: `kl` on cumulative losses with λ = 1/η (Sagawa et al. 2020).
    cl and hrrl play λ_t of `robust.lam_schedule` (`lam_schedule`); group_dro keeps its λ = 1/η, whose
    annealing is in its cumulative losses. The floor ρ (`robust.floor`) applies to every method with a
    concept level: cl, hrrl and group_dro. The `perturb` and `input` example levels change the loss, not the
    weights, so their transform is built with `example_level="none"`. `seed` (the run's) seeds the `input` level's
    random control.
    """
    method = config.method
    if method not in ROBUST_METHODS:
        raise ValueError(f"config.robust.method={method!r} is not known; choose one of {ROBUST_METHODS}.")
    if config.example_level not in EXAMPLE_LEVELS:
        raise ValueError(
            f"config.robust.example_level={config.example_level!r} is not known; choose one of {EXAMPLE_LEVELS}."
        )
    if config.lam_schedule not in LAM_SCHEDULES:
        raise ValueError(
            f"config.robust.lam_schedule={config.lam_schedule!r} is not known; choose one of {LAM_SCHEDULES}."
        )
    if method == "erm":
        return Objective(method=method, reweights=False), None

    uses_example_level = method in ("el", "hrrl")
    perturb = uses_example_level and config.example_level == "perturb"
    input_form = uses_example_level and config.example_level == "input"
    reweight = uses_example_level and config.example_level == "reweight"
    concept_level = method in ("cl", "hrrl", "group_dro")
    transform_args = dict(
        divergence=config.divergence if concept_level else "none",
        lam=lam_schedule(config.lam, config.lam_schedule, config.lam_schedule_steps),
        floor=config.floor if concept_level else 0.0,
        prior=config.prior if concept_level else "empirical",
        cost=load_concept_cost(config.cost, len(concept_sizes)),
        temperature=config.temperature,
        example_level="reweight" if reweight else "none",
        gamma=config.gamma,
        example_temperature=config.example_temperature,
        radius=config.radius,
        step_offset=config.step_offset,
        constant_step=config.constant_step,
    )
    if method == "group_dro":
        transform_args.update(divergence="kl", lam=1.0 / config.group_dro_eta, accumulate="sum")
    transform = robust.hierarchical_reweighting(concept_of_class, concept_sizes, **transform_args)
    objective = Objective(
        method=method,
        reweights=True,
        perturb_gamma=config.gamma if perturb else None,
        input_level=input_level(config, len(concept_sizes), seed) if input_form else None,
        perturb_steps=config.perturb_steps,
    )
    return objective, transform


def input_level(config: ml_collections.ConfigDict, num_concepts: int, seed: int) -> InputLevel:
    """`config.robust`'s `input` settings; a ConfigError naming the key when `input_gamma_by_concept` does not have
    one value per concept (checked before any data is read)."""
    gamma_by_concept = config.get("input_gamma_by_concept")
    if gamma_by_concept is not None:
        gamma_by_concept = tuple(float(value) for value in gamma_by_concept)
        if len(gamma_by_concept) != num_concepts:
            raise ConfigError(
                f"config.robust.input_gamma_by_concept={config.input_gamma_by_concept!r}: has {len(gamma_by_concept)} "
                f"values; the data set has {num_concepts} concepts, so give {num_concepts}."
            )
    return InputLevel(
        gamma=float(config.gamma),
        gamma_by_concept=gamma_by_concept,
        steps=int(config.perturb_steps),
        beta=float(config.input_beta),
        fraction=float(config.input_fraction),
        gradient=config.input_gradient,
        direction=config.input_direction,
        batch_norm=config.input_batch_norm,
        craft_batch_norm=config.input_craft_batch_norm,
        coupling=config.input_coupling,
        defer_steps=int(config.input_defer_steps),
        ramp_steps=int(config.input_ramp_steps),
        seed=int(seed),
    )


def lam_schedule(lam: float, schedule: str, steps: int) -> Hyperparameter:
    """λ_t of `robust.lam_schedule` for the transform's `lam`: the number `lam` itself for "constant", else a
    function of the adversary's step t with T = `steps`.

    defer: λ_t = inf (p = q) for t < T, then lam. anneal: λ_t = lam · T/t for 1 <= t < T (inf at t = 0), then lam;
    Group DRO's λ ∝ 1/t (docs/method.md §2), truncated at lam.
    """
    if schedule == "constant":
        return lam

    def deferred(step: jax.Array) -> jax.Array:
        return jnp.where(step < steps, jnp.inf, lam)

    def annealed(step: jax.Array) -> jax.Array:
        return jnp.where(step < steps, lam * steps / jnp.asarray(step, jnp.float32), lam)

    return deferred if schedule == "defer" else annealed


def load_concept_cost(cost: str | None, num_concepts: int) -> np.ndarray | None:
    """The K x K ground cost of the `wasserstein` concept response, or None for the default 1 - I; a ConfigError
    naming the key when the file is missing or of another shape (checked before any data is read).

    "hierarchy": the data sets here have a single concept level, so the tree distance between concepts
    is 1 - I as well; a file gives any other metric.
    """
    if cost is None or cost == "hierarchy":
        return None
    if not os.path.exists(cost):
        raise ConfigError(f"config.robust.cost={cost!r}: no such file (give a .npy or .csv K x K matrix).")
    matrix = np.load(cost) if cost.endswith(".npy") else np.loadtxt(cost, delimiter=",")
    if matrix.shape != (num_concepts, num_concepts):
        raise ConfigError(
            f"config.robust.cost={cost!r}: has shape {matrix.shape}; the data set has {num_concepts} concepts, "
            f"so it must be {(num_concepts, num_concepts)}."
        )
    return matrix.astype(np.float32)
