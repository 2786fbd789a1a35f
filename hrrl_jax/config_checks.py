"""The one check of a whole config, and the reading of a run's config.json of any version (jax-free).

launch.py validates the config with this module before jax is imported or any data is read, so a bad value
fails in a second naming its key (`hrrl_jax.schema` holds the keys, defaults and allowed names).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from hrrl_jax.errors import ConfigError
from hrrl_jax.schema import (
    ARM_FAMILY_PATTERN,
    ARM_KEYS,
    ARM_NAME_PATTERN,
    BATCH_NORM_VARIANCES,
    COMPARISON_TARGETS,
    CONCEPT_COSTS,
    DIVERGENCES,
    EXAMPLE_LEVELS,
    HOLDOUT_SPLIT,
    INPUT_BATCH_NORMS,
    INPUT_COUPLINGS,
    INPUT_CRAFT_MODES,
    INPUT_DIRECTIONS,
    INPUT_GRADIENTS,
    KNOWN_DATASETS,
    KNOWN_SHIFTS,
    LAM_SCHEDULES,
    MODEL_NAMES,
    OPTIMIZER_NAMES,
    PRECISION_NAMES,
    PRIORS,
    REFERENCE_FAMILY,
    ROBUST_METHODS,
    SCHEDULE_NAMES,
    SELECTION_METRICS,
    SELECTION_SCORES,
    SHIFT_MARKER,
    SPLIT_PATTERN,
    STEMS,
    arm_family,
    default_compare_config,
    default_config,
    default_optimizer_config,
    default_robust_config,
    value_at,
)

# Checks: a value in, None when it is fine, else what it must be (the caller adds the key and the value).
Check = Callable[[Any], str | None]


def _integer(minimum: int) -> Check:
    requirement = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def check(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        return None if ok else f"must be {requirement}"

    return check


def _number(requirement: str, ok: Callable[[float], bool]) -> Check:
    def check(value: Any) -> str | None:
        is_number = isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)
        return None if is_number and ok(value) else f"must be {requirement}"

    return check


def _one_of(names: tuple[str, ...]) -> Check:
    return lambda value: None if isinstance(value, str) and value in names else f"must be one of {names}"


def _optional(check: Check) -> Check:
    def check_if_set(value: Any) -> str | None:
        problem = None if value is None else check(value)
        return None if problem is None else f"{problem}, or None (unset)"

    return check_if_set


def _sequence_of(check: Check, requirement: str, *, non_empty: bool = False) -> Check:
    def check_all(value: Any) -> str | None:
        ok = isinstance(value, (tuple, list)) and (len(value) > 0 or not non_empty)
        return None if ok and all(check(item) is None for item in value) else f"must be {requirement}"

    return check_all


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be True or False"


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) else "must be a string"


def _path(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "must be a non-empty path"


def _split(value: Any) -> str | None:
    ok = isinstance(value, str) and SPLIT_PATTERN.match(value)
    return None if ok else "must be a split name, optionally sliced as in TFDS: 'train', 'test', 'train[:90%]'"


def _dataset_name(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be a data set name (a string)"
    base, marker, shift = value.partition(SHIFT_MARKER)
    if base not in KNOWN_DATASETS:
        return f"is not a known data set; choose one of {KNOWN_DATASETS}, or NAME{SHIFT_MARKER}SHIFT"
    if marker and shift not in KNOWN_SHIFTS:
        return f"has an unknown shift {shift!r}; choose one of {KNOWN_SHIFTS}"
    return None


def _concept_cost(value: Any) -> str | None:
    if value in CONCEPT_COSTS:
        return None
    if isinstance(value, str) and value.endswith((".npy", ".csv")) and os.path.isfile(value):
        return None
    return "must be 'hierarchy' or the path of an existing .npy or .csv K x K matrix (None: the 0/1 cost 1 - I)"


_POSITIVE_INTEGER = _integer(1)
_NON_NEGATIVE_INTEGER = _integer(0)
_POSITIVE = _number("a finite number > 0", lambda v: 0 < v < math.inf)
_POSITIVE_OR_INF = _number("a number > 0 (inf allowed)", lambda v: v > 0)
_NON_NEGATIVE = _number("a finite number >= 0", lambda v: 0 <= v < math.inf)
_IN_UNIT_INTERVAL = _number("a number in [0, 1)", lambda v: 0 <= v < 1)
_FRACTION_INSIDE_UNIT = _number("a number in (0, 1)", lambda v: 0 < v < 1)
_STEP_SIZE = _number("a number in (0, 1]", lambda v: 0 < v <= 1)
_CLASS_IDS = _sequence_of(_NON_NEGATIVE_INTEGER, "a tuple of class indices (integers >= 0)")
_SEEDS = _sequence_of(_NON_NEGATIVE_INTEGER, "a non-empty tuple of integers >= 0", non_empty=True)


def _step_boundaries(value: Any) -> str | None:
    fractions = list(value) if isinstance(value, (tuple, list)) else None
    ok = fractions is not None and all(_FRACTION_INSIDE_UNIT(f) is None for f in fractions)
    if ok and fractions == sorted(set(fractions)):
        return None
    return "must be strictly increasing fractions of total_steps inside (0, 1)"


def _arm_list(value: Any) -> str | None:
    ok = isinstance(value, (tuple, list)) and all(_is_section(arm) for arm in value)
    return None if ok else "must be a tuple of arms, each a dict with a name and a method"


RULES: dict[str, Check] = {
    "seed": _NON_NEGATIVE_INTEGER,
    "batch_size": _POSITIVE_INTEGER,
    "gradient_accumulation_steps": _POSITIVE_INTEGER,  # Divides batch_size: see _check_relations.
    "init_from": _optional(_path),
    "eval_batch_size": _optional(_POSITIVE_INTEGER),
    "total_steps": _NON_NEGATIVE_INTEGER,  # Positive unless num_epochs is set: see _check_relations.
    "num_epochs": _optional(_POSITIVE),
    "log_every_steps": _POSITIVE_INTEGER,
    "eval_every_steps": _NON_NEGATIVE_INTEGER,
    "eval_every_epochs": _optional(_NON_NEGATIVE),
    "checkpoint_every_steps": _POSITIVE_INTEGER,
    "checkpoint_every_epochs": _optional(_POSITIVE),
    "keep_checkpoints": _POSITIVE_INTEGER,
    "precision": _one_of(PRECISION_NAMES),
    "dataset.name": _dataset_name,
    "dataset.data_dir": _optional(_path),
    "dataset.prepare": _boolean,
    "dataset.train_split": _split,
    "dataset.test_split": _split,
    "dataset.validation_fraction": _IN_UNIT_INTERVAL,
    "dataset.validation_seed": _NON_NEGATIVE_INTEGER,
    "dataset.image_size": _optional(_POSITIVE_INTEGER),
    "dataset.augment": _boolean,
    "dataset.num_workers": _NON_NEGATIVE_INTEGER,
    "dataset.exclude_classes": _CLASS_IDS,
    "dataset.only_classes": _CLASS_IDS,
    "model.name": _one_of(MODEL_NAMES),
    "model.width": _POSITIVE_INTEGER,
    "model.stem": _one_of(STEMS),
    "model.batch_norm_variance": _one_of(BATCH_NORM_VARIANCES),
    "optimizer.name": _one_of(OPTIMIZER_NAMES),
    "optimizer.learning_rate": _POSITIVE,
    "optimizer.momentum": _IN_UNIT_INTERVAL,
    "optimizer.nesterov": _boolean,
    "optimizer.weight_decay": _NON_NEGATIVE,
    "optimizer.b1": _IN_UNIT_INTERVAL,
    "optimizer.b2": _IN_UNIT_INTERVAL,
    "optimizer.eps": _POSITIVE,
    "optimizer.schedule": _one_of(SCHEDULE_NAMES),
    "optimizer.warmup_steps": _NON_NEGATIVE_INTEGER,
    "optimizer.warmup_epochs": _optional(_NON_NEGATIVE),
    "optimizer.step_boundaries": _step_boundaries,
    "optimizer.step_decay": _POSITIVE,
    "optimizer.grad_clip_norm": _optional(_POSITIVE),
    "profile.start_step": _optional(_NON_NEGATIVE_INTEGER),
    "profile.num_steps": _POSITIVE_INTEGER,
    "robust.method": _one_of(ROBUST_METHODS),
    "robust.divergence": _one_of(DIVERGENCES),
    "robust.lam": _POSITIVE_OR_INF,
    "robust.lam_schedule": _one_of(LAM_SCHEDULES),
    "robust.lam_schedule_steps": _NON_NEGATIVE_INTEGER,  # Positive with defer or anneal: see _check_relations.
    "robust.floor": _IN_UNIT_INTERVAL,
    "robust.prior": _one_of(PRIORS),
    "robust.cost": _optional(_concept_cost),
    "robust.temperature": _POSITIVE_OR_INF,
    "robust.example_level": _one_of(EXAMPLE_LEVELS),
    "robust.gamma": _POSITIVE_OR_INF,
    "robust.example_temperature": _POSITIVE_OR_INF,
    "robust.radius": _optional(_POSITIVE_OR_INF),
    "robust.perturb_steps": _POSITIVE_INTEGER,
    "robust.input_beta": _number("a number in [0, 1]", lambda v: 0 <= v <= 1),
    "robust.input_fraction": _STEP_SIZE,
    "robust.input_gradient": _one_of(INPUT_GRADIENTS),
    "robust.input_direction": _one_of(INPUT_DIRECTIONS),
    "robust.input_batch_norm": _one_of(INPUT_BATCH_NORMS),
    "robust.input_craft_batch_norm": _one_of(INPUT_CRAFT_MODES),
    "robust.input_gamma_by_concept": _optional(
        _sequence_of(_POSITIVE_OR_INF, "a non-empty tuple of numbers > 0 (inf allowed)", non_empty=True)
    ),
    "robust.input_coupling": _one_of(INPUT_COUPLINGS),
    "robust.input_defer_steps": _NON_NEGATIVE_INTEGER,
    "robust.input_ramp_steps": _NON_NEGATIVE_INTEGER,
    "robust.step_offset": _NON_NEGATIVE,
    "robust.constant_step": _optional(_STEP_SIZE),
    "robust.group_dro_eta": _POSITIVE,
    "compare.methods": _sequence_of(_one_of(ROBUST_METHODS), f"a non-empty tuple of {ROBUST_METHODS}", non_empty=True),
    "compare.seeds": _SEEDS,
    "compare.overrides": lambda value: None,  # Its entries are checked as config.robust values: _check_overrides.
    "compare.lambda_sweep": _sequence_of(_POSITIVE_OR_INF, "a tuple of numbers > 0"),
    "compare.sweep_methods": _sequence_of(_one_of(ROBUST_METHODS), f"a tuple of {ROBUST_METHODS}"),
    "compare.sweep_seeds": _SEEDS,
    "compare.targets": _sequence_of(_one_of(COMPARISON_TARGETS), f"a tuple of {COMPARISON_TARGETS}"),
    "compare.probe_train_examples": _POSITIVE_INTEGER,
    "compare.probe_l2_grid": _sequence_of(_NON_NEGATIVE, "a non-empty tuple of numbers >= 0", non_empty=True),
    "compare.write_report": _boolean,
    "compare.notes": _text,
    "compare.arms": _arm_list,  # Each arm's entries are checked by _check_arms.
    "compare.selection_seeds": _SEEDS,
    "compare.confirmation_seeds": _SEEDS,
    "compare.post_hoc_arms": _sequence_of(_text, "a tuple of arm names"),
    "compare.stand_in_unselectable": _boolean,
    "compare.selection_metric": _one_of(SELECTION_METRICS),
    "compare.selection_score": _one_of(SELECTION_SCORES),
    "compare.top1_tolerance": _IN_UNIT_INTERVAL,
    "compare.tie_tolerance": _IN_UNIT_INTERVAL,
    "compare.few_shot_targets": _sequence_of(_one_of(COMPARISON_TARGETS), f"a tuple of {COMPARISON_TARGETS}"),
    "compare.few_shot_shots": _sequence_of(_POSITIVE_INTEGER, "a tuple of positive integers"),
    "compare.within_concept_shots": _sequence_of(_POSITIVE_INTEGER, "a tuple of positive integers"),
    "compare.few_shot_draws": _integer(2),
    "compare.draw_seed": _NON_NEGATIVE_INTEGER,
}
_FREE_KEYS = frozenset({"compare.overrides"})  # Sub-configs whose keys are not fixed by the defaults.


def _is_section(value: Any) -> bool:
    return isinstance(value, (Mapping, ml_collections.ConfigDict))


def _expected_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The defaults `config` is checked against: a training run's, plus `compare` if it has that section."""
    expected = default_config()
    if "compare" in config:
        expected.compare = default_compare_config()
    return expected


def _check_keys(config: ml_collections.ConfigDict, expected: ml_collections.ConfigDict, prefix: str) -> None:
    if not _is_section(config):
        raise ConfigError(f"config.{prefix[:-1]}={config!r}: must be a section with keys {sorted(expected)}.")
    unknown = sorted(set(config) - set(expected))
    missing = sorted(set(expected) - set(config))
    if unknown:
        raise ConfigError(
            f"config.{prefix}{unknown[0]} is not a config key; the keys here are {sorted(expected)} "
            "(see hrrl_jax/schema.py). Fix the spelling or remove it."
        )
    if missing:
        raise ConfigError(
            f"config.{prefix}{missing[0]} is missing; build the config from configs/base.py "
            "(hrrl_jax.schema.default_config()) and change only the values."
        )
    for key, default in expected.items():
        if isinstance(default, ml_collections.ConfigDict) and f"{prefix}{key}" not in _FREE_KEYS:
            _check_keys(config[key], default, f"{prefix}{key}.")


def _check(path: str, value: Any, check: Check) -> None:
    problem = check(value)
    if problem is not None:
        raise ConfigError(f"config.{path}={value!r}: {problem}.")


def _check_overrides(overrides: Mapping[str, Any]) -> None:
    """`compare.overrides`: method -> a few `config.robust` keys, each checked as that key."""
    robust_keys = sorted(default_robust_config())
    for method, values in overrides.items():
        _check(f"compare.overrides.{method}", method, _one_of(ROBUST_METHODS))
        if not _is_section(values):
            raise ConfigError(f"config.compare.overrides.{method}={values!r}: must map config.robust keys to values.")
        for key, value in values.items():
            if key not in robust_keys:
                raise ConfigError(
                    f"config.compare.overrides.{method}.{key} is not a config.robust key; choose from {robust_keys}."
                )
            _check(f"compare.overrides.{method}.{key}", value, RULES[f"robust.{key}"])


def _check_section_values(path: str, values: Any, section: str, keys: list[str]) -> None:
    """A few `config.<section>` keys, each checked as that key."""
    if not _is_section(values):
        raise ConfigError(f"config.{path}={values!r}: must map config.{section} keys to values.")
    for key, value in values.items():
        if key not in keys:
            raise ConfigError(f"config.{path}.{key} is not a config.{section} key; choose from {keys}.")
        _check(f"{path}.{key}", value, RULES[f"{section}.{key}"])


def _check_arms(arms: tuple[Mapping[str, Any], ...]) -> None:
    """`compare.arms`: unique names, a method and a family each, robust and optimizer values, `combine` naming other
    families."""
    robust_keys = [key for key in default_robust_config() if key != "method"]
    optimizer_keys = list(default_optimizer_config())
    names: list[str] = []
    families = {family for arm in arms if "method" in arm and isinstance(family := arm_family(arm), str)}
    for index, arm in enumerate(arms):
        path = f"compare.arms[{index}]"
        unknown = sorted(set(arm) - set(ARM_KEYS))
        if unknown or "name" not in arm or "method" not in arm:
            raise ConfigError(
                f"config.{path}={dict(arm)!r}: an arm has a name, a method and optionally {list(ARM_KEYS[2:])}"
                + (f"; {unknown[0]!r} is not one of them." if unknown else ".")
            )
        name = arm["name"]
        if not isinstance(name, str) or not ARM_NAME_PATTERN.match(name) or name in names:
            raise ConfigError(
                f"config.{path}.name={name!r}: must be a new name of letters, digits and _.=+- (it names the arm's "
                "run directory)."
            )
        names.append(name)
        _check(f"{path}.method", arm["method"], _one_of(ROBUST_METHODS))
        family = arm_family(arm)
        if not isinstance(family, str) or not ARM_FAMILY_PATTERN.match(family):
            raise ConfigError(
                f"config.{path}.family={family!r}: must be a name of lower-case letters, digits and _ that starts "
                "with a letter, e.g. 'control' (leave it out for the arm's method)."
            )
        if family == REFERENCE_FAMILY and arm["method"] != "erm":
            raise ConfigError(
                f"config.{path}.family={family!r}: the {REFERENCE_FAMILY} family is the top-1 reference and holds "
                f"only arms of method 'erm', not {arm['method']!r}; give this arm another family."
            )
        _check_section_values(f"{path}.robust", arm.get("robust", {}), "robust", robust_keys)
        _check_section_values(f"{path}.optimizer", arm.get("optimizer", {}), "optimizer", optimizer_keys)
        combine = arm.get("combine", ())
        others = sorted(families - {family, REFERENCE_FAMILY})
        if (
            not isinstance(combine, (tuple, list))
            or any(other not in others for other in combine)
            or (combine and family == REFERENCE_FAMILY)
        ):
            raise ConfigError(
                f"config.{path}.combine={combine!r}: must be a tuple of other families with arms, from {others} "
                f"(an {REFERENCE_FAMILY} arm combines none: its top-1 is the reference every selection needs)."
            )
    _check_acyclic({arm_family(arm): set() for arm in arms}, arms)


def _check_acyclic(depends_on: dict[str, set[str]], arms: tuple[Mapping[str, Any], ...]) -> None:
    """No family may wait, through `combine`, for its own selection."""
    for arm in arms:
        depends_on[arm_family(arm)].update(arm.get("combine", ()))
    finished: set[str] = set()
    while len(finished) < len(depends_on):
        ready = [family for family, needs in depends_on.items() if family not in finished and needs <= finished]
        if not ready:
            waiting = sorted(set(depends_on) - finished)
            raise ConfigError(f"config.compare.arms: families {waiting} combine each other's selections in a cycle.")
        finished.update(ready)


def _check_protocol(config: ml_collections.ConfigDict) -> None:
    """The selection protocol's relations, when `compare.arms` is set."""
    compare = config["compare"]
    if not compare["arms"]:
        return
    if config["dataset"]["validation_fraction"] <= 0:
        raise ConfigError(
            f"config.dataset.validation_fraction={config['dataset']['validation_fraction']!r}: the protocol selects "
            "on validation data; hold out a share of the training images, e.g. 0.1."
        )
    if REFERENCE_FAMILY not in {arm_family(arm) for arm in compare["arms"]}:
        raise ConfigError(
            f"config.compare.arms: needs an erm arm of family {REFERENCE_FAMILY!r} (its source-validation top-1 "
            "bounds every selection)."
        )
    if not compare["targets"]:
        raise ConfigError("config.compare.targets=(): the selection score averages validation probes of the targets.")
    missing = [target for target in compare["few_shot_targets"] if target not in compare["targets"]]
    if missing:
        raise ConfigError(
            f"config.compare.few_shot_targets={compare['few_shot_targets']!r}: {missing} are not in "
            "config.compare.targets; few-shot probes use the features of those targets."
        )
    unknown = [name for name in compare["post_hoc_arms"] if name not in {arm["name"] for arm in compare["arms"]}]
    if unknown:
        raise ConfigError(
            f"config.compare.post_hoc_arms={tuple(compare['post_hoc_arms'])!r}: {unknown} are not arms of "
            "config.compare.arms."
        )
    shared = sorted(set(compare["selection_seeds"]) & set(compare["confirmation_seeds"]))
    if shared:
        raise ConfigError(
            f"config.compare.confirmation_seeds={compare['confirmation_seeds']!r}: seeds {shared} also select; "
            "confirmation needs fresh seeds."
        )


def _check_relations(config: ml_collections.ConfigDict) -> None:
    """The checks that involve two keys."""
    if config["num_epochs"] is None:
        if config["total_steps"] < 1:
            raise ConfigError(
                f"config.total_steps={config['total_steps']!r}: must be a positive integer (or set config.num_epochs)."
            )
        warmup_steps = config["optimizer"]["warmup_steps"]
        if config["optimizer"]["warmup_epochs"] is None and warmup_steps >= config["total_steps"]:
            raise ConfigError(
                f"config.optimizer.warmup_steps={warmup_steps!r}: must be below config.total_steps="
                f"{config['total_steps']}; shorten the warm-up or train longer."
            )
    accumulation_steps = config["gradient_accumulation_steps"]
    if config["batch_size"] % accumulation_steps:
        raise ConfigError(
            f"config.gradient_accumulation_steps={accumulation_steps!r}: must divide config.batch_size="
            f"{config['batch_size']} (the logical batch is split into micro-batches of equal size); change either."
        )
    dataset = config["dataset"]
    if dataset["train_split"] == HOLDOUT_SPLIT:
        raise ConfigError(
            f"config.dataset.train_split={HOLDOUT_SPLIT!r}: that is the share of train_split held out of training; "
            "train on a split of the data set, e.g. 'train'."
        )
    if dataset["test_split"] == HOLDOUT_SPLIT and dataset["validation_fraction"] <= 0:
        raise ConfigError(
            f"config.dataset.test_split={HOLDOUT_SPLIT!r}: evaluates on the share of train_split held out by "
            f"dataset.validation_fraction, now {dataset['validation_fraction']!r}; set it above 0, e.g. 0.1."
        )
    robust = config["robust"]
    if robust["lam_schedule"] != "constant" and robust["lam_schedule_steps"] < 1:
        raise ConfigError(
            f"config.robust.lam_schedule_steps={robust['lam_schedule_steps']!r}: must be a positive integer with "
            f"config.robust.lam_schedule={robust['lam_schedule']!r} (the step T from which λ is lam); set it, or use "
            "lam_schedule='constant'."
        )
    _check_input_level(robust)
    if robust["method"] == "group_dro" and robust["constant_step"] is not None:
        raise ConfigError(
            f"config.robust.constant_step={robust['constant_step']!r}: group_dro accumulates losses (sums), and a "
            "constant adversary step applies to running means only; unset it or use another method."
        )


def _check_input_level(robust: Mapping[str, Any]) -> None:
    """The `input` example level's forms that need another key (checked whatever the method, as the keys are)."""
    if robust["input_gradient"] == "clean_pass":
        if robust["perturb_steps"] != 1:
            raise ConfigError(
                f"config.robust.perturb_steps={robust['perturb_steps']!r}: input_gradient='clean_pass' takes one step, "
                "from the clean pass's own input gradient; set perturb_steps=1, or use input_gradient='ascent'."
            )
        if robust["input_beta"] >= 1:
            raise ConfigError(
                f"config.robust.input_beta={robust['input_beta']!r}: input_gradient='clean_pass' needs the clean "
                "loss in the objective (its backward gives ∇_x ℓ), so input_beta < 1, e.g. 0.5; or use "
                "input_gradient='ascent'."
            )
        if robust["input_craft_batch_norm"] != "train":
            raise ConfigError(
                f"config.robust.input_craft_batch_norm={robust['input_craft_batch_norm']!r}: "
                "input_gradient='clean_pass' crafts x' from the clean pass, in train mode; set it to 'train', or use "
                "input_gradient='ascent'."
            )
    if robust["input_batch_norm"] == "auxiliary" and robust["input_beta"] >= 1:
        raise ConfigError(
            f"config.robust.input_beta={robust['input_beta']!r}: input_batch_norm='auxiliary' trains the main "
            "BatchNorm on the clean pass only, which input_beta=1 leaves out; set input_beta < 1, e.g. 0.5."
        )


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks a whole resolved config without jax: keys against the defaults, then every value, then relations.

    Raises:
        ConfigError: naming the first bad key and its value, `config.log_every_steps=0: must be ...`.
    """
    _check_keys(config, _expected_config(config), prefix="")
    for path, check in RULES.items():
        if path.split(".")[0] in config:
            _check(path, value_at(config, path), check)
    if "compare" in config:
        _check_overrides(config["compare"]["overrides"])
        _check_arms(config["compare"]["arms"])
        _check_protocol(config)
    _check_relations(config)


# The value that meant "unset" in config.json files written before optional values were None.
_OLD_SENTINELS = {
    "eval_batch_size": 0,
    "num_epochs": 0,
    "dataset.data_dir": "",
    "dataset.image_size": 0,
    "robust.cost": "",
    "robust.radius": 0,
    "robust.constant_step": 0,
    "optimizer.grad_clip_norm": 0,
}
# `section.key` -> the value in effect in runs written before the key existed (else its default applies).
_BEFORE_THE_KEY = {"model.batch_norm_variance": "two_pass"}


def config_from_json(values: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The config of a run's config.json, as written by any version of hrrl_jax.

    Old sentinels (0, 0.0, "") of optional values become None, lists become tuples, and keys the file
    predates get the value in effect then (a missing `model.batch_norm_variance` was "two_pass") or their default.

    It is not validated (a run whose cost file has moved can still be read); call `validate_config` to train.

    Raises:
        ConfigError: the file has a key this version does not know, or a value of the wrong type.
    """
    config = _expected_config(values)
    _fill(config, values, prefix="")
    for path, value in _BEFORE_THE_KEY.items():
        section, key = path.split(".")
        if key not in values.get(section, {}):
            config[section][key] = value
    return config


def _fill(config: ml_collections.ConfigDict, values: Mapping[str, Any], prefix: str) -> None:
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in config:
            raise ConfigError(
                f"config.{path} in config.json is not a config key of this version of hrrl_jax; remove it from "
                "the file if it is obsolete."
            )
        if isinstance(config[key], ml_collections.ConfigDict) and path not in _FREE_KEYS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"config.{path}={value!r} in config.json: must be a section of keys.")
            _fill(config[key], value, f"{path}.")
            continue
        value = _tuples(value)
        sentinel = _OLD_SENTINELS.get(path)
        if sentinel is not None and value == sentinel and not isinstance(value, bool):
            value = None
        try:
            config[key] = ml_collections.ConfigDict(value) if path in _FREE_KEYS else value
        except TypeError as error:
            raise ConfigError(f"config.{path}={value!r} in config.json: {error}") from None


def _tuples(value: Any) -> Any:
    """JSON's lists as the tuples the config holds (nested mappings keep their shape)."""
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    if isinstance(value, Mapping):
        return {key: _tuples(item) for key, item in value.items()}
    return value
