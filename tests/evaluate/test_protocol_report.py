"""The protocol's markdown: measures of a record by section, t-intervals by hand, difference cells, the log."""

import math

import pytest

from hrrl_jax.evaluate import protocol_report
from hrrl_jax.evaluate.report import summarise


def _record(method, seed, top1):
    few_shot = {"5": {"shots": 5, "mean": 0.6, "std": 0.05, "accuracies": [0.55, 0.65]}}
    task = {"mean": 0.7, "std": 0.02, "accuracies": [0.68, 0.72]}
    return {
        "method": method,
        "seed": seed,
        "source": {
            "test_accuracy": top1,
            "per_concept_accuracy": {"tops": top1 - 0.1, "bags": top1 + 0.1},
            "worst_concept_accuracy": top1 - 0.1,
            "best_concept_accuracy": top1 + 0.1,
        },
        "targets": {
            "shift/blur": {
                "probe": 0.8,
                "probe_per_concept": {"tops": 0.7, "bags": 0.9},
                "probe_worst_concept": 0.7,
                "recall_at_1": 0.75,
                "recall_at_1_centred": 0.76,
                "few_shot": {},
            },
            "digits": {
                "probe": 0.9,
                "probe_per_concept": {"0": 0.9},
                "probe_worst_concept": 0.9,
                "recall_at_1": 0.8,
                "recall_at_1_centred": 0.81,
                "few_shot": few_shot,
            },
        },
        "within_concept": {
            "5": {"per_concept": {"tops": task}, "mean": task, "worst_concept": "tops", "worst": task, "shots": 5}
        },
    }


def test_measures_by_section():
    measures = protocol_report.record_measures(_record("erm*", 0, 0.8))
    assert list(measures) == ["Source", "Targets", "Few-shot", "Within-concept few-shot", "Per concept"]
    assert measures["Source"]["source gap (best − worst)"] == pytest.approx(0.2)
    assert list(measures["Targets"]) == [
        "shift/blur probe",
        "shift/blur probe worst concept",  # Only a shift's probe is read out per concept.
        "shift/blur R@1",
        "shift/blur R@1 centred",
        "digits probe",
        "digits R@1",
        "digits R@1 centred",
    ]
    assert measures["Few-shot"] == {"digits 5-shot": 0.6}
    assert measures["Per concept"]["shift/blur probe: bags"] == 0.9
    assert "digits probe: 0" not in measures["Per concept"]
    assert (
        protocol_report.target_level("shift/blur") == "example" and protocol_report.target_level("digits") == "concept"
    )
    assert protocol_report.draw_spreads(_record("erm*", 0, 0.8))["digits 5-shot"] == 0.05


def test_t_interval_by_hand():
    # n = 5, std 1: t(0.975, 4) = 2.7764, half-width 2.7764 / √5 = 1.2417.
    low, high = protocol_report.t_interval(0.5, 1.0, 5)
    assert (low, high) == (pytest.approx(0.5 - 1.24166, abs=1e-4), pytest.approx(0.5 + 1.24166, abs=1e-4))
    assert all(math.isnan(bound) for bound in protocol_report.t_interval(0.5, 1.0, 1))


def test_confirmation_report_cells_and_bold_intervals():
    records = [_record("erm*", seed, 0.80 + 0.01 * seed) for seed in (1, 2, 3)]
    records += [_record("hrrl*", seed, 0.83 + 0.01 * seed + 0.001 * seed**2) for seed in (1, 2, 3)]
    log = {"rule": {"selection_seeds": [0]}, "families": {}}
    markdown = protocol_report.render_confirmation_report(
        records, log=log, title="t", method_order=["erm*", "el*", "hrrl*"]
    )
    assert "| source top-1 | 82.00 ± 1.00 (3) | 85.47 ± 1.40 (3) |" in markdown
    assert "| digits 5-shot | 60.00 ± 0.00 (3); draws ± 5.00 | 60.00 ± 0.00 (3); draws ± 5.00 |" in markdown
    # Differences 3.1, 3.4, 3.9 points: mean 3.4667, std 0.4041, half-width 4.3027 · 0.4041 / √3 = 1.0039.
    assert "| source top-1 | **+3.47 [+2.46, +4.47]** |" in markdown
    assert "| digits probe | +0.00 [+0.00, +0.00] |" in markdown


def test_difference_of_unpaired_seeds_has_no_interval():
    method, reference = summarise({1: 0.8, 2: 0.9}), summarise({3: 0.7, 4: 0.7})
    assert protocol_report._difference_cell(method, reference) == "+15.00 (unpaired)"
    assert protocol_report.comparisons(["erm*", "el*", "hrrl*", "group_dro*"]) == [
        ("el*", "erm*"),
        ("hrrl*", "erm*"),
        ("group_dro*", "erm*"),
        ("el*", "group_dro*"),
        ("hrrl*", "group_dro*"),
        ("hrrl*", "el*"),
    ]
    families = {"hrrl_b (post hoc)": "hrrl", "cl_b (post hoc)": "cl"}
    assert protocol_report.comparisons(["erm*", "el*", "hrrl_b (post hoc)", "cl_b (post hoc)"], families) == [
        ("el*", "erm*"),
        ("hrrl_b (post hoc)", "erm*"),
        ("cl_b (post hoc)", "erm*"),
        ("hrrl_b (post hoc)", "el*"),
    ]


def test_comparisons_add_each_hrrl_arm_minus_cl_and_el_minus_the_control():
    methods = ["erm*", "el*", "control*", "cl*", "hrrl*", "hrrl_b (post hoc)", "control_hrrl*"]
    families = {"hrrl_b (post hoc)": "hrrl"}
    assert protocol_report.comparisons(methods, families) == [
        ("el*", "erm*"),
        ("control*", "erm*"),
        ("cl*", "erm*"),
        ("hrrl*", "erm*"),
        ("hrrl_b (post hoc)", "erm*"),
        ("control_hrrl*", "erm*"),
        ("hrrl*", "el*"),
        ("hrrl_b (post hoc)", "el*"),
        ("hrrl*", "cl*"),
        ("hrrl_b (post hoc)", "cl*"),
        ("el*", "control*"),
        ("hrrl*", "control_hrrl*"),
    ]
    # Each pair needs both labels: no el* − control without a control; a control confirmed post hoc still counts.
    assert protocol_report.comparisons(["erm*", "cl*", "hrrl*"]) == [
        ("cl*", "erm*"),
        ("hrrl*", "erm*"),
        ("hrrl*", "cl*"),
    ]
    post_hoc_control = ["erm*", "el*", "control_random (post hoc)"]
    assert protocol_report.comparisons(post_hoc_control, {"control_random (post hoc)": "control"}) == [
        ("el*", "erm*"),
        ("control_random (post hoc)", "erm*"),
        ("el*", "control_random (post hoc)"),
    ]
