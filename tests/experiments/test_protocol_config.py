"""Checks of the protocol's config: each bad arm or relation is refused with an error naming its key."""

import pytest

from configs import protocol_fashion_mnist
from hrrl_jax import schema
from hrrl_jax.config_checks import validate_config
from hrrl_jax.errors import ConfigError
from hrrl_jax.experiments import protocol
from hrrl_jax.experiments.arms import arms_from_config

RANDOM = {"input_direction": "random"}
GOOD_ARMS = (
    {"name": "erm", "method": "erm", "optimizer": {"weight_decay": 1e-3}},
    {"name": "cl", "method": "cl", "robust": {"lam": 1.0, "prior": "empirical"}},
    {"name": "hrrl", "method": "hrrl", "combine": ("cl",)},
)


EL = {"name": "el", "method": "el", "robust": {"example_level": "input", "gamma": 1.0}}
# The random-perturbation control at the selected EL arm's strength: trains as el, selected in a family of its own.
CONTROL = {"name": "control", "method": "el", "family": "control", "combine": ("el",), "robust": RANDOM}


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
        (GOOD_ARMS[1:2] + ({"name": "e", "method": "erm", "family": "plain"},), r"arms: needs an erm arm of family"),
        (GOOD_ARMS + (CONTROL | {"family": "Control"},), r"^config.compare.arms\[3\].family='Control': must be a name"),
        (GOOD_ARMS + (CONTROL | {"family": "2nd"},), r"^config.compare.arms\[3\].family='2nd'"),
        (GOOD_ARMS + (CONTROL | {"family": ("c",)},), r"^config.compare.arms\[3\].family=\('c',\)"),
        (
            GOOD_ARMS + (CONTROL | {"family": "erm"},),
            r"^config.compare.arms\[3\].family='erm': the erm family is the top-1 reference and holds only arms of "
            r"method 'erm', not 'el'; give this arm another family\.$",
        ),
        (GOOD_ARMS + (CONTROL | {"combine": ("control",)},), r"arms\[3\].combine=\('control',\): must be a tuple"),
        (GOOD_ARMS + (CONTROL | {"combine": ("el",)},), r"arms\[3\].combine=\('el',\).*from \['cl', 'hrrl'\]"),
        (
            (GOOD_ARMS[0], {"name": "e2", "method": "erm", "family": "erm", "combine": ("cl",)}, GOOD_ARMS[1]),
            r"arms\[1\].combine=.*an erm arm combines none",
        ),
        (
            (GOOD_ARMS[0], EL, {"name": "c", "method": "el", "family": "control", "combine": ("hrrl",)})
            + ({"name": "h", "method": "hrrl", "combine": ("control",)},),
            r"^config.compare.arms: families \['control', 'hrrl'\] combine each other's selections in a cycle",
        ),
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


def test_families_default_to_the_method_and_combine_names_families():
    arms = (*GOOD_ARMS, EL, CONTROL, {"name": "hrrl_ctl", "method": "hrrl", "combine": ("cl", "control")})
    validate_config(protocol_config(arms))
    resolved = arms_from_config(arms)
    assert [(arm.method, arm.family) for arm in resolved] == [
        ("erm", "erm"),
        ("cl", "cl"),
        ("hrrl", "hrrl"),
        ("el", "el"),
        ("el", "control"),
        ("hrrl", "hrrl"),
    ]
    assert resolved[4].combine == ("el",) and resolved[4].robust == RANDOM
    explicit = ({"name": "erm", "method": "erm", "family": "erm"}, {"name": "cl", "method": "cl", "family": "cl"})
    validate_config(protocol_config(explicit))


def test_the_selection_score_is_one_of_the_rules():
    validate_config(protocol_config(selection_score="levels_and_worst_concept"))
    with pytest.raises(ConfigError, match=r"^config.compare.selection_score='worst': must be one of \('levels', "):
        validate_config(protocol_config(selection_score="worst"))


def test_the_v2_config_still_validates_with_its_methods_as_families():
    config = protocol_fashion_mnist.get_config()
    validate_config(config)
    assert config.compare.selection_score == "levels"
    arms = arms_from_config(config.compare.arms)
    assert all(arm.family == arm.method for arm in arms)
    assert list(dict.fromkeys(arm.family for arm in arms)) == ["erm", "el", "cl", "hrrl", "group_dro"]
    assert [arm.combine for arm in arms if arm.family == "hrrl"] == [("cl", "el")] * 2


def test_the_probe_l2_grid_is_a_non_empty_tuple_of_strengths():
    validate_config(protocol_config(probe_l2_grid=(0.0, 1e-3)))
    for grid in ((), (-1e-3,), (float("inf"),)):
        with pytest.raises(ConfigError, match=r"^config.compare.probe_l2_grid=.*: must be a non-empty tuple of num"):
            validate_config(protocol_config(probe_l2_grid=grid))


def test_measurements_recorded_before_the_probe_l2_grid_key_hold_for_the_default_grid_only():
    # Measurements recorded before the key existed used the default grid: they must stay valid, not be redone.
    compare = protocol_config().compare
    recorded_before = protocol._measurement_settings(compare)
    del recorded_before["probe_l2_grid"]
    assert protocol._measured_under(recorded_before, protocol._measurement_settings(compare))
    compare.probe_l2_grid = (1e-3, 1e-1)
    assert protocol._measurement_settings(compare)["probe_l2_grid"] == [1e-3, 1e-1]
    assert not protocol._measured_under(recorded_before, protocol._measurement_settings(compare))
