"""Static configuration of the reweighting transform: validated once, then carried by its state.

Where the static configuration lives: :class:`ReweightingSettings` is registered with
``jax.tree_util.register_static``, so ``HierarchicalReweightingState.settings`` is a pytree node with no array
leaves, part of the tree structure rather than of the leaves. Hence ``jit`` treats it as static (the concept map
and the hyperparameters become compile-time constants); sharding and ``device_put`` see only arrays; and
``loss_weights`` can compute the weights from the optimizer state alone, wherever the transform sits in a nested
state. Settings compare by value (numbers, strings and array contents; a schedule by identity, the same function
object), with the key computed once at construction, so two transforms built with the same arguments have equal
tree structures and share compiled steps.

Orbax saves only array leaves, so the state also carries the settings' fingerprint as an array
(:mod:`hrrl_jax.robust._fingerprint`): a state restored into a transform with other settings is refused.
"""

import dataclasses
import hashlib
import math
import numbers
from typing import Any, Literal

import jax
import numpy as np

from hrrl_jax.robust._checks import check_positive
from hrrl_jax.robust._fingerprint import settings_fingerprint
from hrrl_jax.robust.concept_level import DIVERGENCES, Divergence
from hrrl_jax.robust.schedules import Hyperparameter, check_hyperparameter

# The transform's own example levels; the trainer's config (hrrl_jax/schema.py) has reweight | perturb | input.
TRANSFORM_EXAMPLE_LEVELS = ("reweight", "none")
ACCUMULATIONS = ("mean", "sum")


@dataclasses.dataclass(frozen=True, eq=False)
class ReweightingSettings:
    """Static configuration of a ``hierarchical_reweighting`` transform (compared by value).

    ``concept_of_class`` is the int32 ``[C]`` map, or ``None`` when every example's concept is passed as
    ``groups``; ``concept_sizes`` are the counts ``n_k`` (float32 ``[K]``), ``prior`` the resolved ``q``
    (float32 ``[K]``); ``fingerprint`` is the uint8 array the state carries (:mod:`hrrl_jax.robust._fingerprint`);
    the other fields are the transform's arguments of the same names (``lam``, ``gamma`` and
    ``example_temperature`` a float or the schedule as given).
    """

    concept_of_class: np.ndarray | None
    concept_sizes: np.ndarray
    prior: np.ndarray
    divergence: Divergence
    lam: Hyperparameter
    floor: float
    cost: np.ndarray | None
    temperature: float | None
    example_level: Literal["reweight", "none"]
    gamma: Hyperparameter
    example_temperature: Hyperparameter
    radius: float | None
    step_offset: float
    constant_step: float | None
    accumulate: Literal["mean", "sum"]
    axis_name: Any = None
    fingerprint: np.ndarray = dataclasses.field(default=None, repr=False)
    _key: tuple = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        key = tuple(_comparable(getattr(self, field.name)) for field in dataclasses.fields(self)[:-2])
        object.__setattr__(self, "_key", key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReweightingSettings) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    @property
    def num_concepts(self) -> int:
        """``K``, the number of concepts."""
        return self.concept_sizes.shape[0]


jax.tree_util.register_static(ReweightingSettings)


def make_settings(concept_of_class: Any, concept_sizes: Any, **options: Any) -> ReweightingSettings:
    """Checks every option of :func:`hierarchical_reweighting`, resolves the prior and fingerprints the result.

    Raises ``ValueError`` saying what was wrong and what to change. ``cost`` and ``temperature`` are
    used by ``divergence="wasserstein"`` only and stored as ``None`` for the other divergences, so a
    config may set them unconditionally. ``concept_of_class=None`` means concepts come per example as ``groups``.
    """
    axis_name = options.pop("axis_name", None)
    concept_sizes = np.asarray(concept_sizes, np.float64)
    if concept_sizes.ndim != 1 or concept_sizes.size == 0 or not np.all(concept_sizes > 0):
        raise ValueError(
            f"concept_sizes must be a non-empty 1-D array of positive counts n_k, got "
            f"{concept_sizes.tolist() if concept_sizes.size <= 20 else concept_sizes.shape}; "
            "drop or merge concepts without training examples."
        )
    num_concepts = concept_sizes.shape[0]
    if concept_of_class is not None:
        concept_of_class = _checked_concept_map(concept_of_class, num_concepts)
    _check_choice("divergence", options["divergence"], DIVERGENCES)
    if options["example_level"] == "perturb":
        raise ValueError(
            "example_level='perturb' changes the loss, not the weights: apply perturb_features "
            "inside the loss function, pass the robust per-example losses, and use "
            "example_level='none' here."
        )
    if options["example_level"] == "input":
        raise ValueError(
            "example_level='input' changes the loss, not the weights: take the loss at the worst-case inputs, "
            "pass those per-example losses, and use example_level='none' here."
        )
    _check_choice("example_level", options["example_level"], TRANSFORM_EXAMPLE_LEVELS)
    _check_choice("accumulate", options["accumulate"], ACCUMULATIONS)
    schedule_values = {
        name: check_hyperparameter(name, options[name]) for name in ("lam", "gamma", "example_temperature")
    }
    floor = options["floor"]
    if isinstance(floor, bool) or not isinstance(floor, numbers.Real) or not 0 <= floor < 1:
        raise ValueError(f"floor (rho) must be a number in [0, 1), got {floor!r}; 0 leaves p = p* unchanged.")
    for name in ("temperature", "radius"):
        if options[name] is not None:
            check_positive(name, options[name])
    if not (math.isfinite(options["step_offset"]) and options["step_offset"] >= 0):
        raise ValueError(f"step_offset (t0) must be a finite number >= 0, got {options['step_offset']!r}.")
    if options["constant_step"] is not None:
        if not 0 < options["constant_step"] <= 1:
            raise ValueError(f"constant_step must lie in (0, 1], got {options['constant_step']!r}.")
        if options["accumulate"] == "sum":
            raise ValueError(
                "constant_step applies to accumulate='mean' only; got accumulate='sum'. "
                "Drop constant_step or use accumulate='mean'."
            )
    cost = options.pop("cost")
    if options["divergence"] != "wasserstein":
        cost, options["temperature"] = None, None
    if cost is not None:
        cost = np.asarray(cost, np.float32)
        if cost.shape != (num_concepts, num_concepts) or not np.all(np.isfinite(cost)) or np.any(cost < 0):
            raise ValueError(
                f"cost must be a finite non-negative [K, K] = [{num_concepts}, {num_concepts}] "
                f"matrix, got shape {cost.shape}."
            )
    prior = _resolve_prior(options.pop("prior"), concept_sizes)
    settings = ReweightingSettings(
        concept_of_class=concept_of_class,
        concept_sizes=concept_sizes.astype(np.float32),
        prior=prior,
        cost=cost,
        lam=_number_or_schedule(options.pop("lam")),
        floor=float(options.pop("floor")),
        gamma=_number_or_schedule(options.pop("gamma")),
        example_temperature=_number_or_schedule(options.pop("example_temperature")),
        step_offset=float(options.pop("step_offset")),
        axis_name=axis_name,
        **options,
    )
    return dataclasses.replace(settings, fingerprint=settings_fingerprint(settings, schedule_values))


def _checked_concept_map(concept_of_class: Any, num_concepts: int) -> np.ndarray:
    """The class -> concept map as int32 ``[C]``, refused unless every entry is a concept id in ``[0, K)``."""
    concept_of_class = np.asarray(concept_of_class)
    if concept_of_class.ndim != 1 or not np.issubdtype(concept_of_class.dtype, np.integer):
        raise ValueError(
            f"concept_of_class must be a 1-D integer array [C], got dtype "
            f"{concept_of_class.dtype} and shape {concept_of_class.shape}; pass None to give concepts per "
            "example as groups= instead."
        )
    if concept_of_class.size and (concept_of_class.min() < 0 or concept_of_class.max() >= num_concepts):
        raise ValueError(
            f"concept_of_class must take values in [0, {num_concepts}) (one per concept size), "
            f"got values in [{concept_of_class.min()}, {concept_of_class.max()}]."
        )
    return concept_of_class.astype(np.int32)


def _comparable(value: Any) -> Any:
    """A hashable stand-in for a settings field that compares by value: arrays by dtype, shape and content."""
    if isinstance(value, np.ndarray):
        return (value.dtype.str, value.shape, hashlib.sha256(np.ascontiguousarray(value).tobytes()).digest())
    return value


def _number_or_schedule(value: Hyperparameter) -> Hyperparameter:
    """A number as a Python float; a schedule as given."""
    return value if callable(value) else float(value)


def _resolve_prior(prior: Any, concept_sizes: np.ndarray) -> np.ndarray:
    """``q``: uniform, empirical ``n_k/N``, or a validated explicit distribution, as float32 ``[K]``."""
    num_concepts = concept_sizes.shape[0]
    if isinstance(prior, str):
        if prior == "uniform":
            return np.full((num_concepts,), 1.0 / num_concepts, np.float32)
        if prior == "empirical":
            return (concept_sizes / concept_sizes.sum()).astype(np.float32)
        raise ValueError(f"prior must be 'uniform', 'empirical' or a [K] array, got {prior!r}.")
    prior = np.asarray(prior, np.float64)
    if prior.shape != (num_concepts,) or np.any(prior < 0) or not np.isclose(prior.sum(), 1.0, atol=1e-5):
        raise ValueError(
            f"an explicit prior must be a non-negative [K] = [{num_concepts}] array summing to 1, "
            f"got shape {prior.shape} and sum {prior.sum():.6g}; normalise it."
        )
    return prior.astype(np.float32)


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
