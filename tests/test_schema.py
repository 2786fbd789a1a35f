"""hrrl_jax.schema: jax-free defaults, one validation naming the bad key, old config.json files, shared names."""

import glob
import importlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from hrrl_jax import config_checks, schema
from hrrl_jax.errors import ConfigError, UserError
from tests.train.helpers import REPO_ROOT

HEAVY_MODULES = ("jax", "jaxlib", "flax", "optax", "orbax", "tensorflow", "tensorflow_datasets")
CONFIG_MODULES = sorted(
    f"configs.{os.path.basename(path)[:-3]}"
    for path in glob.glob(os.path.join(REPO_ROOT, "configs", "*.py"))
    if not path.endswith("__init__.py")
)


def with_values(config=None, **values):
    """`config` (default: the defaults) with `a__b=v` setting `config.a.b`."""
    config = schema.default_config() if config is None else config
    for path, value in values.items():
        *parents, key = path.split("__")
        node = config
        for parent in parents:
            node = node[parent]
        node[key] = value
    return config


def test_schema_and_configs_load_without_jax_or_tfds():
    code = (
        "import importlib, json, sys\n"
        f"for name in ['hrrl_jax.schema', 'hrrl_jax.errors', *{CONFIG_MODULES!r}]:\n"
        "    importlib.import_module(name).__name__\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    command = [sys.executable, "-c", code]
    result = subprocess.run(command, check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout))
    assert "configs" in loaded and "ml_collections" in loaded
    assert loaded.isdisjoint(HEAVY_MODULES), loaded & set(HEAVY_MODULES)


@pytest.mark.parametrize("name", CONFIG_MODULES)
def test_every_config_file_validates(name):
    config_checks.validate_config(importlib.import_module(name).get_config())


def test_the_rules_cover_every_key_and_the_defaults_pass():
    def leaves(config, prefix=""):
        for key, value in config.items():
            path = f"{prefix}{key}"
            nested = hasattr(value, "items") and path != "compare.overrides"
            yield from leaves(value, f"{path}.") if nested else [path]

    config = schema.default_config()
    config.compare = schema.default_compare_config()
    assert set(leaves(config)) == set(config_checks.RULES)
    config_checks.validate_config(config)


@pytest.mark.parametrize(
    "values, key",
    [
        ({"log_every_steps": 0}, "log_every_steps"),
        ({"checkpoint_every_steps": 0}, "checkpoint_every_steps"),
        ({"keep_checkpoints": -1}, "keep_checkpoints"),
        ({"batch_size": 0}, "batch_size"),
        ({"eval_batch_size": 0}, "eval_batch_size"),
        ({"num_epochs": "ten"}, "num_epochs"),
        ({"total_steps": 0}, "total_steps"),
        ({"robust__method": "nope"}, "robust.method"),
        ({"robust__divergence": "tv"}, "robust.divergence"),
        ({"robust__prior": "zipf"}, "robust.prior"),
        ({"robust__cost": "/no/such/cost.npy"}, "robust.cost"),
        ({"robust__lam": 0.0}, "robust.lam"),
        ({"robust__radius": -1.0}, "robust.radius"),
        ({"robust__constant_step": 2.0}, "robust.constant_step"),
        ({"robust__method": "group_dro", "robust__constant_step": 0.5}, "robust.constant_step"),
        ({"robust__perturb_steps": 0}, "robust.perturb_steps"),
        ({"robust__floor": 1.0}, "robust.floor"),
        ({"robust__floor": -0.1}, "robust.floor"),
        ({"robust__lam_schedule": "cosine"}, "robust.lam_schedule"),
        ({"robust__lam_schedule_steps": -1}, "robust.lam_schedule_steps"),
        ({"robust__lam_schedule": "defer"}, "robust.lam_schedule_steps"),  # T = 0 with a schedule.
        ({"robust__lam_schedule": "anneal", "robust__lam_schedule_steps": 0}, "robust.lam_schedule_steps"),
        ({"model__name": "resnet7"}, "model.name"),
        ({"model__width": 0}, "model.width"),
        ({"model__stem": "big"}, "model.stem"),
        ({"model__batch_norm_variance": "x"}, "model.batch_norm_variance"),
        ({"optimizer__schedule": "linear"}, "optimizer.schedule"),
        ({"optimizer__name": "lamb"}, "optimizer.name"),
        ({"optimizer__learning_rate": -0.1}, "optimizer.learning_rate"),
        ({"optimizer__grad_clip_norm": 0.0}, "optimizer.grad_clip_norm"),
        ({"optimizer__step_boundaries": (0.75, 0.5)}, "optimizer.step_boundaries"),
        ({"optimizer__warmup_steps": 1000}, "optimizer.warmup_steps"),
        ({"precision": "float16"}, "precision"),
        ({"dataset__name": "nope"}, "dataset.name"),
        ({"dataset__name": "fashion_mnist_shift/nope"}, "dataset.name"),
        ({"dataset__train_split": "train[:half]"}, "dataset.train_split"),
        ({"dataset__image_size": 0}, "dataset.image_size"),
        ({"dataset__num_workers": -1}, "dataset.num_workers"),
        ({"dataset__exclude_classes": (-1,)}, "dataset.exclude_classes"),
        ({"dataset__validation_fraction": 1.0}, "dataset.validation_fraction"),
        ({"dataset__validation_seed": -1}, "dataset.validation_seed"),
        ({"dataset__test_split": "holdout"}, "dataset.test_split"),  # Holds nothing out: validation_fraction is 0.
        ({"dataset__train_split": "holdout", "dataset__validation_fraction": 0.1}, "dataset.train_split"),
    ],
)
def test_each_bad_value_names_its_key(values, key):
    with pytest.raises(ConfigError) as error:
        config_checks.validate_config(with_values(**values))
    assert str(error.value).startswith(f"config.{key}="), str(error.value)
    assert "\n" not in str(error.value)
    assert isinstance(error.value, UserError) and isinstance(error.value, ValueError)


def test_valid_corner_values_pass():
    config_checks.validate_config(with_values(total_steps=0, num_epochs=2))  # total_steps is unused with epochs.
    config_checks.validate_config(
        with_values(robust__lam=math.inf, eval_every_steps=0, dataset__name="digits_shift/blur")
    )
    config_checks.validate_config(with_values(robust__cost="hierarchy", optimizer__grad_clip_norm=1, num_epochs=0.5))
    config_checks.validate_config(with_values(robust__lam_schedule="anneal", robust__lam_schedule_steps=300))
    config_checks.validate_config(with_values(robust__floor=0.5, robust__lam_schedule_steps=7))  # Unused T is fine.


def test_unknown_and_missing_keys_are_named():
    config = schema.default_config()
    config.model.wdith = 4
    with pytest.raises(ConfigError, match=r"^config.model.wdith is not a config key"):
        config_checks.validate_config(config)
    config = schema.default_config()
    del config.robust["gamma"]
    with pytest.raises(ConfigError, match=r"^config.robust.gamma is missing"):
        config_checks.validate_config(config)


def test_comparison_overrides_are_checked_as_robust_values():
    config = importlib.import_module("configs.compare_fashion_mnist").get_config()
    config.compare.overrides.hrrl.lam = -1.0
    with pytest.raises(ConfigError, match=r"^config.compare.overrides.hrrl.lam=-1.0"):
        config_checks.validate_config(config)
    config.compare.overrides.hrrl.lam = 0.1
    config.compare.targets = ("shift/sepia",)
    with pytest.raises(ConfigError, match=r"^config.compare.targets="):
        config_checks.validate_config(config)


def test_old_config_json_sentinels_become_none_and_missing_keys_get_their_old_value():
    old = json.loads(schema.default_config().to_json())
    old.update(eval_batch_size=0, num_epochs=0.0)
    old["dataset"].update(data_dir="", image_size=0, exclude_classes=[3, 6])
    old["robust"].update(cost="", radius=0.0, constant_step=0.0)
    old["optimizer"]["grad_clip_norm"] = 0.0
    del old["model"]["batch_norm_variance"]  # Written before the key existed: two passes were the rule.
    config = config_checks.config_from_json(old)
    for value in (
        config.eval_batch_size,
        config.num_epochs,
        config.dataset.data_dir,
        config.dataset.image_size,
        config.robust.cost,
        config.robust.radius,
        config.robust.constant_step,
        config.optimizer.grad_clip_norm,
    ):
        assert value is None
    assert config.model.batch_norm_variance == "two_pass"
    assert config.dataset.exclude_classes == (3, 6) and config.optimizer.step_boundaries == (0.5, 0.75)
    config_checks.validate_config(config)


def test_config_json_round_trips_and_rejects_unknown_keys():
    config = with_values(num_epochs=3.0, dataset__image_size=32, optimizer__grad_clip_norm=1.0)
    assert config_checks.config_from_json(json.loads(config.to_json_best_effort())).to_dict() == config.to_dict()
    comparison = importlib.import_module("configs.compare_fashion_mnist").get_config()
    restored = config_checks.config_from_json(json.loads(comparison.to_json_best_effort()))
    assert restored.to_dict() == comparison.to_dict()
    with pytest.raises(ConfigError, match=r"^config.model.depth in config.json is not a config key"):
        config_checks.config_from_json({"model": {"depth": 18}})


def test_the_library_core_knows_the_same_divergences_and_priors():
    from hrrl_jax import robust
    from hrrl_jax.robust.settings import make_settings

    assert robust.DIVERGENCES == schema.DIVERGENCES
    options = {
        "divergence": "l2",
        "lam": 1.0,
        "floor": 0.0,
        "cost": None,
        "temperature": None,
        "example_level": "none",
        "gamma": 1.0,
        "example_temperature": 1.0,
        "radius": None,
        "step_offset": 0.0,
        "constant_step": None,
        "accumulate": "mean",
    }
    for prior in schema.PRIORS:
        make_settings(np.array([0, 1]), np.array([1.0, 3.0]), prior=prior, **options)
    with pytest.raises(ValueError, match="prior"):
        make_settings(np.array([0, 1]), np.array([1.0, 3.0]), prior="zipf", **options)


def test_models_data_and_trainer_use_the_schema_names():
    from hrrl_jax.data import registry, shifts
    from hrrl_jax.models import BATCH_NORM_VARIANCES, MODEL_NAMES, PRECISIONS, resnet

    assert MODEL_NAMES == schema.MODEL_NAMES and tuple(resnet.RESNET_ARCHITECTURES) == schema.MODEL_NAMES
    assert resnet.STEMS == schema.STEMS
    assert BATCH_NORM_VARIANCES == schema.BATCH_NORM_VARIANCES
    assert tuple(registry._BASE_LOADERS) == schema.KNOWN_DATASETS
    assert (*shifts._DETERMINISTIC_SHIFTS, "noise") == schema.KNOWN_SHIFTS
    assert tuple(PRECISIONS) == schema.PRECISION_NAMES


def test_durations_in_epochs_become_steps_in_one_place():
    from configs import imagenet_resnet50

    config = imagenet_resnet50.get_config()
    resolved = schema.durations_in_steps(config, steps_per_epoch=1251)
    assert resolved.total_steps == 90 * 1251
    assert resolved.optimizer.warmup_steps == 5 * 1251
    assert resolved.eval_every_steps == resolved.checkpoint_every_steps == 4 * 1251
    assert resolved.log_every_steps == config.log_every_steps  # Given in steps: kept.
    # A doubled batch halves the epoch, and every duration given in epochs follows.
    halved = schema.durations_in_steps(config, steps_per_epoch=626)
    assert (halved.total_steps, halved.optimizer.warmup_steps) == (90 * 626, 5 * 626)
    assert config.optimizer.warmup_epochs == 5.0 and config.optimizer.warmup_steps == 0  # The input is unchanged.
    config_checks.validate_config(resolved)


def test_a_fraction_of_an_epoch_rounds_up_and_zero_epochs_stay_zero():
    config = schema.default_config()
    config.eval_every_epochs, config.checkpoint_every_epochs = 0.0, 0.001
    resolved = schema.durations_in_steps(config, steps_per_epoch=100)
    assert (resolved.eval_every_steps, resolved.checkpoint_every_steps) == (0, 1)


def test_epochs_times_the_epoch_size_is_rounded_before_it_is_rounded_up():
    config = schema.default_config()
    config.num_epochs = 1.1  # 1.1 * 100 is 110.00000000000001 in floating point: still 110 steps.
    assert schema.durations_in_steps(config, steps_per_epoch=100).total_steps == 110
