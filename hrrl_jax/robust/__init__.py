"""hrrl_jax.robust: closed-form hierarchical (example- and concept-level) robust reweighting.

A pure library core (imports only jax, numpy and optax): the closed-form worst cases of the method page
(`§2 <method.html#2-concept-level>`_, `§3 <method.html#3-example-level>`_; the input-space ascent among them),
the unbiased minibatch estimators, and the optax transform that runs the concept-level adversary.
"""

from hrrl_jax.robust.concept_level import DIVERGENCES, concept_best_response, default_cost
from hrrl_jax.robust.estimators import concept_loss_estimate, weight_stats
from hrrl_jax.robust.example_level import (
    example_weights,
    gamma_for_radius,
    perturb_features,
    within_class_coupling,
)
from hrrl_jax.robust.input_level import (
    InputLevelAux,
    clean_robust_mixture,
    input_level_value_and_grad,
    per_example_gamma,
    worst_case_inputs,
)
from hrrl_jax.robust.schedules import deferred_ramp
from hrrl_jax.robust.settings import ReweightingSettings
from hrrl_jax.robust.simplex import project_simplex
from hrrl_jax.robust.transform import (
    HierarchicalReweightingState,
    adopt_settings,
    concept_distribution,
    find_reweighting_state,
    hierarchical_reweighting,
    loss_weights,
)

__all__ = [
    "DIVERGENCES",
    "HierarchicalReweightingState",
    "InputLevelAux",
    "ReweightingSettings",
    "adopt_settings",
    "clean_robust_mixture",
    "concept_best_response",
    "concept_distribution",
    "concept_loss_estimate",
    "default_cost",
    "deferred_ramp",
    "example_weights",
    "find_reweighting_state",
    "gamma_for_radius",
    "hierarchical_reweighting",
    "input_level_value_and_grad",
    "loss_weights",
    "per_example_gamma",
    "perturb_features",
    "project_simplex",
    "weight_stats",
    "within_class_coupling",
    "worst_case_inputs",
]
