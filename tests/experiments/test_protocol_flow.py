"""The protocol's flow with training stubbed out: two selection rounds, the constraint, equal arms, skipped arms,
confirmation of each family's choice, the reports; and the splits each phase reads (no test split in selection)."""

import json
import os

import numpy as np
import pytest

from hrrl_jax import schema
from hrrl_jax.config_checks import validate_config
from hrrl_jax.data import load_data
from hrrl_jax.errors import ConfigError
from hrrl_jax.experiments import protocol, protocol_targets
from tests.train.helpers import tiny_config

FEW_SHOT = {"1": {"shots": 1, "mean": 0.5, "std": 0.1, "accuracies": [0.4, 0.6]}}
# (source-validation top-1, validation probe) of each arm. The ERM reference is 0.86, the threshold 0.85.
QUALITY = {
    "erm_a": (0.850, 0.70),
    "erm_b": (0.860, 0.69),
    "cl_x": (0.840, 0.80),  # The best score, but below the threshold.
    "cl_y": (0.855, 0.75),
    "el_z": (0.860, 0.72),
    "hrrl_sel": (0.850, 0.74),
}
ARMS = (
    {"name": "erm_a", "method": "erm"},
    {"name": "erm_b", "method": "erm", "optimizer": {"weight_decay": 1e-3}},
    {"name": "el_z", "method": "el", "robust": {"gamma": 1.0}},
    {"name": "cl_x", "method": "cl", "robust": {"lam": 0.3}},
    {"name": "cl_y", "method": "cl", "robust": {"lam": 1.0, "step_offset": 300.0}},
    {"name": "hrrl_sel", "method": "hrrl", "combine": ("cl", "el")},
    {"name": "hrrl_dup", "method": "hrrl", "robust": {"step_offset": 300.0}, "combine": ("cl", "el")},
)
CONFIRMATION_TOP1 = {"erm": {1: 0.851, 2: 0.851}, "el": {1: 0.862, 2: 0.864}}  # el − erm: +1.1, +1.3 points.


def protocol_config(arms=ARMS):
    config = tiny_config(total_steps=3, log_every_steps=1)  # digits, width-4 ResNet-10
    config.dataset.exclude_classes = (7, 8, 9)
    config.dataset.validation_fraction = 0.2
    config.compare = schema.default_compare_config()
    compare = config.compare
    compare.arms = arms
    compare.targets = ("shift/blur", "held_out")
    compare.few_shot_targets = ("held_out",)
    compare.few_shot_shots = (1, 5)
    compare.within_concept_shots = ()
    compare.few_shot_draws = 3
    compare.probe_train_examples = 300
    compare.confirmation_seeds = (1, 2)
    validate_config(config)
    return config


def fake_record(calls):
    def record(config, workdir, arm, seed, phase, targets):
        calls.append((phase, arm.name, arm.run_name, seed, dict(arm.robust), dict(arm.optimizer)))
        top1, probe = QUALITY[arm.name]
        top1 = CONFIRMATION_TOP1.get(arm.method, {}).get(seed, top1)
        target = {
            "probe": probe,
            "probe_per_concept": {"a": probe, "b": probe - 0.1},
            "probe_worst_concept": probe - 0.1,
            "recall_at_1": probe,
            "recall_at_1_centred": probe,
            "few_shot": FEW_SHOT,
        }
        return {
            "arm": arm.name,
            "method": arm.method,
            "seed": seed,
            "phase": phase,
            "source": {
                "test_accuracy": top1,
                "per_concept_accuracy": {"a": top1 + 0.05, "b": top1 - 0.05},
                "worst_concept_accuracy": top1 - 0.05,
                "best_concept_accuracy": top1 + 0.05,
            },
            "targets": {"shift/blur": target, "held_out": target},
            "within_concept": {},
            "concept_distribution": [] if arm.method == "erm" else [(1, [0.5, 0.5]), (2, [0.4, 0.6])],
        }

    return record


def test_selection_rounds_constraint_equal_arms_and_confirmation(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(protocol, "protocol_record", fake_record(calls))
    config = protocol_config()
    records = protocol.run_protocol(config, str(tmp_path))

    selection_calls = [call for call in calls if call[0] == "selection"]
    assert [call[1] for call in selection_calls] == ["erm_a", "erm_b", "el_z", "cl_x", "cl_y", "hrrl_sel"]
    # HRRL starts from the selected CL arm's values, then the selected EL arm's.
    assert selection_calls[-1][4] == {"lam": 1.0, "step_offset": 300.0, "gamma": 1.0}
    assert selection_calls[1][5] == {"weight_decay": 1e-3}
    log = json.loads((tmp_path / "selection.json").read_text())
    assert log["rule"]["reference_arm"] == "erm_b" and log["rule"]["threshold"] == pytest.approx(0.85)
    assert {family: entry["selected"] for family, entry in log["families"].items()} == {
        "erm": "erm_a",
        "cl": "cl_y",
        "el": "el_z",
        "hrrl": "hrrl_sel",
    }
    assert {family: entry["tried"] for family, entry in log["families"].items()} == {
        "erm": 2,
        "cl": 2,
        "el": 1,
        "hrrl": 1,
    }
    statuses = {entry["name"]: entry["status"] for entry in log["arms"]}
    assert statuses["hrrl_dup"] == "same settings as hrrl_sel"
    assert [e["selectable"] for e in log["arms"] if e["status"] == "trained"] == [True, True, True, False, True, True]
    markdown = (tmp_path / "selection.md").read_text()
    assert "| cl_x | cl | lam=0.3 | 84.00 |" in markdown and "| hrrl_dup | hrrl |" in markdown
    assert "| cl | 2 | cl_y | 75.00 |" in markdown

    # Families in the order they first appear in the arms.
    confirmation_calls = [call[1:4] for call in calls if call[0] == "confirmation"]
    assert confirmation_calls == [(arm, arm, seed) for arm in ("erm_a", "el_z", "cl_y", "hrrl_sel") for seed in (1, 2)]
    assert [record["method"] for record in records] == ["erm*"] * 2 + ["el*"] * 2 + ["cl*"] * 2 + ["hrrl*"] * 2
    report = (tmp_path / "confirmation.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| measure | el* − erm*"))
    assert header.endswith("| hrrl* − el* | hrrl* − cl* |")
    # el − erm on source top-1: differences 1.1 and 1.3 points, mean 1.2, std √2·0.1, t(0.975, 1) = 12.706.
    half_width = 12.7062 * 0.1
    row = next(line for line in report.splitlines() if line.startswith("| source top-1 | +1.20"))
    assert row.startswith(f"| source top-1 | +1.20 [{1.2 - half_width:+.2f}, {1.2 + half_width:+.2f}] |")
    assert "| held_out 1-shot | 50.00 ± 0.00 (2); draws ± 10.00 |" in report
    for name in ("per_concept_accuracy", "transfer_accuracy", "concept_distribution", "few_shot_curves"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000, name


def test_within_concept_tasks_need_a_concept_of_two_classes(tmp_path):
    config = protocol_config()
    config.compare.within_concept_shots = (5,)
    with pytest.raises(ConfigError, match=r"^config.compare.within_concept_shots=\(5,\): no concept of digits"):
        protocol.run_selection(config, str(tmp_path))
    assert not list(tmp_path.iterdir())  # Refused before any run.


def test_a_family_without_a_selectable_arm_is_not_combined_nor_confirmed(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(protocol, "protocol_record", fake_record(calls))
    monkeypatch.setitem(QUALITY, "cl_y", (0.80, 0.75))
    protocol.run_protocol(protocol_config(), str(tmp_path))
    log = json.loads((tmp_path / "selection.json").read_text())
    assert log["families"]["cl"] == {"tried": 2, "selected": None, "settings": None, "score": None}
    assert log["families"]["hrrl"]["tried"] == 0
    statuses = {entry["name"]: entry["status"] for entry in log["arms"]}
    assert statuses["hrrl_sel"] == statuses["hrrl_dup"] == "not trained: cl had no selectable arm"
    assert {call[1] for call in calls if call[0] == "confirmation"} == {"erm_a", "el_z"}
    assert "| cl | 2 | none selectable |" in (tmp_path / "confirmation.md").read_text()


def test_a_stand_in_takes_the_place_of_a_family_without_a_selectable_arm(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(protocol, "protocol_record", fake_record(calls))
    monkeypatch.setitem(QUALITY, "cl_y", (0.80, 0.75))  # Both cl arms now miss the threshold; cl_x scores higher.
    monkeypatch.setitem(QUALITY, "hrrl_dup", (0.855, 0.73))
    config = protocol_config()
    config.compare.stand_in_unselectable = True
    records = protocol.run_protocol(config, str(tmp_path))
    log = json.loads((tmp_path / "selection.json").read_text())
    expected = {"tried": 2, "selected": None, "settings": "lam=0.3", "score": 0.8, "stand_in": "cl_x"}
    assert log["families"]["cl"] == expected
    assert log["families"]["hrrl"]["selected"] == "hrrl_sel" and log["families"]["hrrl"]["stand_in"] is None
    # HRRL combines the stand-in's values: cl_x's λ, el_z's γ (hrrl_dup now differs from hrrl_sel and is trained).
    trained = {call[1]: call[4] for call in calls if call[0] == "selection"}
    assert trained["hrrl_sel"] == {"lam": 0.3, "gamma": 1.0}
    assert trained["hrrl_dup"] == {"lam": 0.3, "step_offset": 300.0, "gamma": 1.0}
    assert [entry.get("stand_in", False) for entry in log["arms"] if entry["family"] == "cl"] == [True, False]
    assert "| cl | 2 | none selectable; stand-in: cl_x | 80.00 |" in (tmp_path / "selection.md").read_text()

    confirmed = [call[1] for call in calls if call[0] == "confirmation"]
    assert confirmed == [arm for arm in ("erm_a", "el_z", "cl_x", "hrrl_sel") for _ in (1, 2)]
    assert [record["method"] for record in records][4:6] == ["cl* (stand-in)"] * 2
    report = (tmp_path / "confirmation.md").read_text()
    assert "Post hoc: cl* (stand-in), not selected by the rule" in report
    header = next(line for line in report.splitlines() if line.startswith("| measure | el* − erm*"))
    assert header.endswith("| hrrl* − el* | hrrl* − cl* (stand-in) |")


def test_post_hoc_arms_are_confirmed_apart_and_compared(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(protocol, "protocol_record", fake_record(calls))
    config = protocol_config()
    config.compare.post_hoc_arms = ("cl_x", "erm_a", "hrrl_sel")  # cl_x unselectable; the other two are selected.
    records = protocol.run_protocol(config, str(tmp_path))
    confirmed = [call[1] for call in calls if call[0] == "confirmation"]
    assert confirmed == [arm for arm in ("erm_a", "el_z", "cl_y", "hrrl_sel", "cl_x") for _ in (1, 2)]
    assert [record["method"] for record in records][-2:] == ["cl_x (post hoc)"] * 2
    assert records[-1]["source"]["test_accuracy"] == 0.84
    report = (tmp_path / "confirmation.md").read_text()
    assert "Post hoc: cl_x (post hoc), not selected by the rule" in report
    header = next(line for line in report.splitlines() if line.startswith("| measure | el* − erm*"))
    assert "| cl_x (post hoc) − erm* |" in header and "| cl_x (post hoc) − el* |" not in header


def test_a_post_hoc_arm_that_was_not_trained_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(protocol, "protocol_record", fake_record([]))
    config = protocol_config()
    config.compare.post_hoc_arms = ("hrrl_dup",)
    with pytest.raises(ConfigError, match=r"hrrl_dup was not trained in the selection \(same settings as hrrl_sel\)"):
        protocol.run_protocol(config, str(tmp_path))


def test_selection_reads_no_test_split_and_confirmation_reads_them(tmp_path, monkeypatch, split_reads):
    evaluated_sizes = []

    def stub_training(config, workdir):
        train, evaluation = load_data(config)  # What training reads, without the training.
        os.makedirs(workdir, exist_ok=True)
        evaluated_sizes.append((config.dataset.test_split, len(train), len(evaluation)))
        return {
            "test_accuracy": 0.5,
            "per_concept_accuracy": {"0": 0.5},
            "worst_concept_accuracy": 0.5,
            "best_concept_accuracy": 0.5,
        }

    def stub_features(trained, split):
        noise = np.random.default_rng(len(split)).normal(size=(len(split), 10))
        return np.eye(10)[split.labels] + 0.3 * noise, split.labels

    monkeypatch.setattr(protocol, "trained_results", stub_training)
    monkeypatch.setattr(protocol, "load_trained_model", lambda workdir: None)
    monkeypatch.setattr(protocol_targets, "extract_features", stub_features)
    arms = ({"name": "erm", "method": "erm"}, {"name": "cl", "method": "cl", "robust": {"lam": 1.0}})
    config = protocol_config(arms)
    selection = protocol.run_selection(config, str(tmp_path))
    assert split_reads and set(split_reads) == {("digits", "train")}
    assert {size[0] for size in evaluated_sizes} == {"holdout"}
    # Digits train holds 1,347 images, 955 of classes 0-6; round(20 %) of each class is the source validation split.
    assert {size[1:] for size in evaluated_sizes} == {(955 - 191, 191)}
    held_out = selection.log["arms"][0]["records"][0]["targets"]["held_out"]
    assert (held_out["num_pool_examples"], held_out["num_evaluation_examples"]) == (300, 78)  # 20 % of 392.

    protocol.run_confirmation(config, str(tmp_path), selection)
    assert ("digits", "test") in split_reads
    assert {size[0] for size in evaluated_sizes[2:]} == {"test"} and {size[1] for size in evaluated_sizes} == {
        evaluated_sizes[0][1]
    }
    confirmed = json.loads((tmp_path / "confirmation.json").read_text())["records"]
    assert confirmed[0]["targets"]["held_out"]["num_evaluation_examples"] == 141  # Classes 7-9 of the 450 tests.
