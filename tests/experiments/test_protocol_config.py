"""Checks of the protocol's config: each bad arm or relation is refused with an error naming its key."""

import pytest

from hrrl_jax import schema
from hrrl_jax.config_checks import validate_config
from hrrl_jax.errors import ConfigError

GOOD_ARMS = (
    {"name": "erm", "method": "erm", "optimizer": {"weight_decay": 1e-3}},
    {"name": "cl", "method": "cl", "robust": {"lam": 1.0, "prior": "empirical"}},
    {"name": "hrrl", "method": "hrrl", "combine": ("cl",)},
)


def protocol_config(arms=GOOD_ARMS, **compare):
    config = schema.default_config()
    config.dataset.exclude_classes = (3, 6, 9)
    config.dataset.validation_fraction = 0.1
    config.compare = schema.default_compare_config()
    config.compare.arms = arms
    config.compare.targets = ("shift/blur", "held_out", "digits")
    for key, value in compare.items():
        config.compare[key] = value
    return config


def test_a_good_protocol_config_passes():
    validate_config(protocol_config())


@pytest.mark.parametrize(
    "arms, message",
    [
        (({"name": "erm", "method": "erm", "lam": 1.0},), r"^config.compare.arms\[0\]=.*'lam' is not one of them"),
        (({"method": "erm"},), r"^config.compare.arms\[0\]=.*an arm has a name, a method"),
        (({"name": "a/b", "method": "erm"},), r"^config.compare.arms\[0\].name='a/b'"),
        (GOOD_ARMS + ({"name": "cl", "method": "cl"},), r"^config.compare.arms\[3\].name='cl': must be a new name"),
        (({"name": "erm", "method": "sgd"},), r"^config.compare.arms\[0\].method='sgd'"),
        (({"name": "erm", "method": "erm", "robust": {"lam": -1.0}},), r"^config.compare.arms\[0\].robust.lam=-1.0"),
        (({"name": "erm", "method": "erm", "robust": {"method": "cl"}},), r"arms\[0\].robust.method is not a config"),
        (({"name": "e", "method": "erm", "optimizer": {"momentum": 2.0}},), r"^config.compare.arms\[0\].optimizer.mom"),
        (({"name": "e", "method": "erm", "optimizer": {"lr": 0.1}},), r"optimizer.lr is not a config.optimizer key"),
        (GOOD_ARMS[:2] + ({"name": "h", "method": "hrrl", "combine": ("el",)},), r"arms\[2\].combine=\('el',\)"),
        (({"name": "e", "method": "erm", "combine": ("cl",)}, GOOD_ARMS[1]), r"arms\[0\].combine=.*an erm arm"),
        (
            (
                GOOD_ARMS[0],
                {"name": "c", "method": "cl", "combine": ("hrrl",)},
                {"name": "h", "method": "hrrl", "combine": ("cl",)},
            ),
            r"^config.compare.arms: families \['cl', 'hrrl'\] combine each other's selections in a cycle",
        ),
        (GOOD_ARMS[1:2], r"^config.compare.arms: needs an erm arm"),
    ],
)
def test_bad_arms_are_named(arms, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(protocol_config(arms))


@pytest.mark.parametrize(
    "compare, dataset, message",
    [
        ({}, {"validation_fraction": 0.0}, r"^config.dataset.validation_fraction=0.0: the protocol selects"),
        ({"targets": ()}, {}, r"^config.compare.targets=\(\)"),
        ({"few_shot_targets": ("cifar10",)}, {}, r"^config.compare.few_shot_targets=\('cifar10',\): \['cifar10'\]"),
        ({"confirmation_seeds": (0, 1)}, {}, r"^config.compare.confirmation_seeds=\(0, 1\): seeds \[0\] also select"),
        ({"few_shot_draws": 1}, {}, r"^config.compare.few_shot_draws=1"),
        ({"post_hoc_arms": ("erm", "nope")}, {}, r"^config.compare.post_hoc_arms=\('erm', 'nope'\): \['nope'\] are"),
        ({"selection_metric": "loss"}, {}, r"^config.compare.selection_metric='loss'"),
        ({"top1_tolerance": 1.0}, {}, r"^config.compare.top1_tolerance=1.0"),
        ({"within_concept_shots": (0,)}, {}, r"^config.compare.within_concept_shots=\(0,\)"),
    ],
)
def test_bad_protocol_relations_are_named(compare, dataset, message):
    config = protocol_config(**compare)
    for key, value in dataset.items():
        config.dataset[key] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_without_arms_the_protocol_keys_constrain_nothing():
    config = protocol_config(arms=())
    config.dataset.validation_fraction = 0.0
    config.compare.targets = ()
    validate_config(config)
