"""Families apart from methods: a random-perturbation control that trains as el after the el family's selection and
is selected, confirmed and compared as a family of its own; the three-term score deciding a selection."""

import json

import pytest

from hrrl_jax import schema
from hrrl_jax.config_checks import validate_config
from hrrl_jax.experiments import protocol
from tests.train.helpers import tiny_config

# (source-validation top-1, source-validation worst concept, validation probe of every target) of each arm.
QUALITY = {
    "erm_a": (0.86, 0.70, 0.70),
    "el_robust": (0.86, 0.70, 0.74),  # levels: 0.74; with the worst concept: (0.74 + 0.74 + 0.70) / 3 = 0.7267.
    "el_sharp": (0.86, 0.60, 0.75),  # levels: 0.75; with the worst concept: (0.75 + 0.75 + 0.60) / 3 = 0.70.
    "control_random": (0.86, 0.65, 0.72),
    "cl_a": (0.86, 0.72, 0.73),
    "hrrl_sel": (0.86, 0.72, 0.76),
}
ARMS = (
    {"name": "erm_a", "method": "erm"},
    {"name": "el_robust", "method": "el", "robust": {"example_level": "input", "gamma": 3.0}},
    {"name": "el_sharp", "method": "el", "robust": {"example_level": "input", "gamma": 0.3}},
    {
        "name": "control_random",
        "method": "el",
        "family": "control",
        "combine": ("el",),
        "robust": {"input_direction": "random"},
    },
    {"name": "cl_a", "method": "cl", "robust": {"lam": 1.0}},
    {"name": "hrrl_sel", "method": "hrrl", "combine": ("cl", "el")},
)


def fake_record(calls, quality):
    def record(config, workdir, arm, seed, phase, targets):
        calls.append((phase, arm.name, arm.method, dict(arm.robust)))
        top1, worst, probe = quality[arm.name]
        target = {
            "probe": probe,
            "probe_per_concept": {"a": probe, "b": probe},
            "probe_worst_concept": probe,
            "recall_at_1": probe,
            "recall_at_1_centred": probe,
            "few_shot": {},
        }
        return {
            "arm": arm.name,
            "method": arm.method,
            "seed": seed,
            "phase": phase,
            "source": {
                "test_accuracy": top1 + 0.001 * seed,
                "per_concept_accuracy": {"a": worst, "b": 2 * top1 - worst},
                "worst_concept_accuracy": worst,
                "best_concept_accuracy": 2 * top1 - worst,
            },
            "targets": {"shift/blur": target, "held_out": target},
            "within_concept": {},
            "concept_distribution": [],
        }

    return record


def protocol_config(**compare_values):
    config = tiny_config(total_steps=3, log_every_steps=1)
    config.dataset.exclude_classes = (7, 8, 9)
    config.dataset.validation_fraction = 0.2
    config.compare = schema.default_compare_config()
    config.compare.arms = ARMS
    config.compare.targets = ("shift/blur", "held_out")
    config.compare.few_shot_targets = ()
    config.compare.within_concept_shots = ()
    config.compare.confirmation_seeds = (1, 2, 3)
    for key, value in compare_values.items():
        config.compare[key] = value
    validate_config(config)
    return config


@pytest.fixture
def stubbed(monkeypatch):
    """The calls of the stubbed runs (no training, no plots)."""
    calls = []
    monkeypatch.setattr(protocol, "protocol_record", fake_record(calls, QUALITY))
    monkeypatch.setattr(protocol, "write_plots", lambda records, workdir, labels: None)
    return calls


@pytest.mark.parametrize("score, selected_el", [("levels", "el_sharp"), ("levels_and_worst_concept", "el_robust")])
def test_a_control_family_waits_for_el_and_is_selected_apart(tmp_path, stubbed, score, selected_el):
    selection = protocol.run_selection(protocol_config(selection_score=score), str(tmp_path))
    log = json.loads((tmp_path / "selection.json").read_text())
    assert {family: entry["selected"] for family, entry in log["families"].items()} == {
        "erm": "erm_a",
        "el": selected_el,
        "control": "control_random",
        "cl": "cl_a",
        "hrrl": "hrrl_sel",
    }
    assert list(log["families"]) == ["erm", "el", "control", "cl", "hrrl"]  # As they first appear in the arms.
    assert log["families"]["el"]["tried"] == 2 and log["families"]["control"]["tried"] == 1
    # The control starts from the selected el arm's values and trains as el, in round two.
    assert [call[1] for call in stubbed] == ["erm_a", "el_robust", "el_sharp", "cl_a", "control_random", "hrrl_sel"]
    gamma = ARMS[1 if selected_el == "el_robust" else 2]["robust"]["gamma"]
    control_call = stubbed[4]
    assert control_call[2:] == ("el", {"example_level": "input", "gamma": gamma, "input_direction": "random"})
    entries = {entry["name"]: entry for entry in log["arms"]}
    assert (entries["control_random"]["method"], entries["control_random"]["family"]) == ("el", "control")
    assert selection.selected["control"].family == "control" and selection.selected["el"].name == selected_el
    # The scores by hand.
    if score == "levels":
        assert entries["el_sharp"]["score"] == pytest.approx(0.75)
        assert entries["el_robust"]["score"] == pytest.approx(0.74)
    else:
        assert entries["el_sharp"]["score"] == pytest.approx((0.75 + 0.75 + 0.60) / 3)
        assert entries["el_robust"]["score"] == pytest.approx((0.74 + 0.74 + 0.70) / 3)
    assert log["rule"]["score"] == score
    markdown = (tmp_path / "selection.md").read_text()
    assert f"Score: {log['rule']['score_formula']}. Selectable" in markdown
    assert "| control_random | control (el) | example_level=input" in markdown and "| el_sharp | el |" in markdown


def test_the_control_is_confirmed_after_el_and_compared_with_it(tmp_path, stubbed):
    config = protocol_config(selection_score="levels_and_worst_concept", post_hoc_arms=("control_random", "el_sharp"))
    records = protocol.run_protocol(config, str(tmp_path))
    labels = list(dict.fromkeys(record["method"] for record in records))
    # control_random is selected (so not post hoc); el_sharp is not.
    assert labels == ["erm*", "el*", "control*", "cl*", "hrrl*", "el_sharp (post hoc)"]
    assert [record["arm"] for record in records if record["method"] == "control*"] == ["control_random"] * 3
    confirmed = json.loads((tmp_path / "confirmation.json").read_text())
    assert set(confirmed) == {"families", "records"}
    assert list(confirmed["families"]) == ["erm", "el", "control", "cl", "hrrl"]
    assert {"method", "seed", "source", "targets"} <= set(confirmed["records"][0])
    report = (tmp_path / "confirmation.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| measure | el* − erm*"))
    assert header.endswith("| hrrl* − el* | hrrl* − cl* | el* − control* |")
    # el* − control* on the worst concept: 0.70 − 0.65 on every seed (no spread: the interval excludes 0).
    row = next(line for line in report.splitlines() if line.startswith("| source worst concept | +0.00"))
    assert row.endswith("| **+5.00 [+5.00, +5.00]** |")


def test_an_unselectable_control_is_confirmed_post_hoc_and_still_compared_with_el(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        protocol, "protocol_record", fake_record(calls, {**QUALITY, "control_random": (0.80, 0.6, 0.9)})
    )
    monkeypatch.setattr(protocol, "write_plots", lambda records, workdir, labels: None)
    records = protocol.run_protocol(protocol_config(post_hoc_arms=("control_random",)), str(tmp_path))
    labels = list(dict.fromkeys(record["method"] for record in records))
    assert labels == ["erm*", "el*", "cl*", "hrrl*", "control_random (post hoc)"]
    report = (tmp_path / "confirmation.md").read_text()
    # The verdict's EL* − control needs the control however it was confirmed.
    assert "| control | 1 | none selectable |" in report and "| el* − control_random (post hoc) |" in report
    assert "| control_random (post hoc) − erm* |" in report
