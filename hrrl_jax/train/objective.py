"""Maps `config.robust` onto the library's robust transform: ERM, EL, CL, HRRL and Group DRO from one path.

The trainer uses `hrrl_jax.robust` exactly as a user of the library would: this module only chooses the
arguments of `hierarchical_reweighting` and whether the loss uses the `perturb` form.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np
import optax

from hrrl_jax import robust

ROBUST_METHODS = ("erm", "el", "cl", "hrrl", "group_dro")
EXAMPLE_LEVELS = ("reweight", "perturb")


@dataclasses.dataclass(frozen=True)
class Objective:
    """What the train step needs to know about the robust method (static under jit).

    `reweights`: the optimizer holds the reweighting transform and the loss uses `robust.loss_weights`.
    `perturb_gamma`: when set, per-example losses are the `perturb` form's robust losses.
    """

    method: str
    reweights: bool
    perturb_gamma: float | None = None
    perturb_steps: int = 1


def default_robust_config() -> ml_collections.ConfigDict:
    """Every `config.robust` key with its default (plain ERM)."""
    config = ml_collections.ConfigDict()
    config.method = "erm"
    config.divergence = "l2"  # Concept level: l2 | kl | wasserstein.
    config.lam = 1.0  # Concept-level penalty λ; smaller = more adversarial.
    config.prior = "uniform"  # uniform | empirical.
    config.cost = ""  # Concept ground cost for `wasserstein`: "" (1 - I), "hierarchy", or a .npy/.csv K x K file.
    config.temperature = 0.1  # τ_c of the entropic `wasserstein` response.
    config.example_level = "reweight"  # reweight | perturb.
    config.gamma = 1.0  # Wasserstein penalty multiplier γ of the example level.
    config.example_temperature = 1.0  # τ_e of `reweight`.
    config.radius = 0.0  # > 0: find γ per class so the coupling moves exactly this much (reweight only).
    config.perturb_steps = 1  # Ascent steps of the `perturb` form.
    config.step_offset = 0.0  # t0 of the adversary's step size 1 / (t + 1 + t0).
    config.constant_step = 0.0  # > 0: constant adversary step instead of 1 / (t + 1 + t0).
    config.group_dro_eta = 0.01  # Group DRO's step size η (lam = 1 / η, cumulative losses).
    return config


def build_objective(
    config: ml_collections.ConfigDict, concept_of_class: np.ndarray, concept_sizes: np.ndarray
) -> tuple[Objective, optax.GradientTransformationExtraArgs | None]:
    """Returns the step's `Objective` and the reweighting transform to put first in the optimizer chain.

    erm: no transform. el: example level only (empirical prior, so concept weights are 1). cl: concept
    level only. hrrl: both. group_dro: `kl` on cumulative losses with λ = 1/η (Sagawa et al. 2020).
    """
    method = config.method
    if method not in ROBUST_METHODS:
        raise ValueError(f"config.robust.method={method!r} is not known; choose one of {ROBUST_METHODS}.")
    if config.example_level not in EXAMPLE_LEVELS:
        raise ValueError(
            f"config.robust.example_level={config.example_level!r} is not known; choose one of {EXAMPLE_LEVELS}."
        )
    if method == "erm":
        return Objective(method=method, reweights=False), None

    uses_example_level = method in ("el", "hrrl")
    perturb = uses_example_level and config.example_level == "perturb"
    reweight = uses_example_level and config.example_level == "reweight"
    concept_level = method in ("cl", "hrrl", "group_dro")
    transform_args = dict(
        divergence=config.divergence if concept_level else "none",
        lam=config.lam,
        prior=config.prior if concept_level else "empirical",
        cost=_concept_cost(config.cost, len(concept_sizes)),
        temperature=config.temperature,
        example_level="reweight" if reweight else "none",
        gamma=config.gamma,
        example_temperature=config.example_temperature,
        radius=config.radius if config.radius > 0 else None,
        step_offset=config.step_offset,
        constant_step=config.constant_step if config.constant_step > 0 else None,
    )
    if method == "group_dro":
        transform_args.update(divergence="kl", lam=1.0 / config.group_dro_eta, accumulate="sum")
    transform = robust.hierarchical_reweighting(concept_of_class, concept_sizes, **transform_args)
    objective = Objective(
        method=method,
        reweights=True,
        perturb_gamma=config.gamma if perturb else None,
        perturb_steps=config.perturb_steps,
    )
    return objective, transform


def _concept_cost(cost: str, num_concepts: int) -> np.ndarray | None:
    """The K x K ground cost of the `wasserstein` concept response, or None for the default 1 - I.

    "hierarchy": the data sets here have a single concept level, so the tree distance between concepts
    is 1 - I as well; a file gives any other metric.
    """
    if cost in ("", "hierarchy"):
        return None
    if not os.path.exists(cost):
        raise FileNotFoundError(f"config.robust.cost={cost!r}: no such file (give a .npy or .csv K x K matrix).")
    matrix = np.load(cost) if cost.endswith(".npy") else np.loadtxt(cost, delimiter=",")
    if matrix.shape != (num_concepts, num_concepts):
        raise ValueError(
            f"config.robust.cost {cost!r} has shape {matrix.shape}; the data set has {num_concepts} concepts, "
            f"so it must be {(num_concepts, num_concepts)}."
        )
    return matrix.astype(np.float32)
