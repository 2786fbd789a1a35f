"""Tests of the results report: exact cells (mean ± std (n)), derived gap, paired differences, errors."""

import math

import pytest

from hrrl_jax.evaluate import report


def _record(method, seed, test, tops, bags, targets=None):
    return {
        "method": method,
        "seed": seed,
        "source": {
            "test_accuracy": test,
            "per_concept_accuracy": {"tops": tops, "bags": bags},
            "worst_concept_accuracy": tops,
            "best_concept_accuracy": bags,
        },
        "targets": targets or {},
    }


RECORDS = [
    _record(
        "erm", 0, 0.90, 0.80, 0.99, {"shift/lowres4": {"probe": 0.70}, "heldout": {"probe": 0.5, "recall_at_1": 0.5}}
    ),
    _record(
        "erm", 1, 0.92, 0.82, 0.99, {"shift/lowres4": {"probe": 0.72}, "heldout": {"probe": 0.5, "recall_at_1": 0.6}}
    ),
    _record(
        "erm", 2, 0.94, 0.84, 0.99, {"shift/lowres4": {"probe": 0.74}, "heldout": {"probe": 0.5, "recall_at_1": 0.7}}
    ),
    _record("hrrl", 0, 0.91, 0.83, 0.95, {"shift/lowres4": {"probe": 0.75}}),
    _record("hrrl", 1, 0.91, 0.86, 0.95, {"shift/lowres4": {"probe": 0.77}}),
    _record("hrrl", 2, 0.91, 0.86, 0.95),
    _record("group_dro", 5, 0.88, 0.85, 0.90),
]


def _row(markdown: str, first_cell: str) -> list[str]:
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row starting with {first_cell!r} in:\n{markdown}")


def test_aggregate_means_sample_stds_and_gap():
    aggregated = report.aggregate(RECORDS)
    assert list(aggregated) == ["erm", "hrrl", "group_dro"]
    worst = aggregated["hrrl"]["source"]["worst_concept_accuracy"]
    assert worst["mean"] == pytest.approx(0.85) and worst["n"] == 3
    assert worst["std"] == pytest.approx(math.sqrt(3e-4))  # deviations -2, 1, 1 points, ddof 1
    gap = aggregated["erm"]["source"]["concept_gap"]
    assert gap["by_seed"] == pytest.approx({0: 0.19, 1: 0.17, 2: 0.15})
    assert math.isnan(aggregated["group_dro"]["source"]["test_accuracy"]["std"])
    assert aggregated["hrrl"]["targets"]["shift/lowres4"]["probe"]["n"] == 2


def test_main_table_cells():
    markdown = report.render_report(RECORDS, title="Fashion-MNIST", method_order=["erm", "hrrl"])
    header = _row(markdown, "method")
    assert header == [
        "method",
        "source top-1",
        "worst concept",
        "best concept",
        "gap (best − worst)",
        "shift/lowres4 probe",
        "heldout probe",
        "heldout R@1",
    ]
    assert _row(markdown, "erm") == [
        "erm",
        "92.00 ± 2.00 (3)",
        "82.00 ± 2.00 (3)",
        "99.00 ± 0.00 (3)",
        "17.00 ± 2.00 (3)",
        "72.00 ± 2.00 (3)",
        "50.00 ± 0.00 (3)",
        "60.00 ± 10.00 (3)",
    ]
    assert _row(markdown, "hrrl")[1:3] == ["91.00 ± 0.00 (3)", "85.00 ± 1.73 (3)"]
    assert _row(markdown, "hrrl")[5:] == ["76.00 ± 1.41 (2)", "–", "–"]
    assert _row(markdown, "group_dro")[1:3] == ["88.00 (1)", "85.00 (1)"]
    # Rows follow method_order, then the rest in order of appearance.
    assert markdown.index("| erm |") < markdown.index("| hrrl |") < markdown.index("| group_dro |")


def test_per_concept_table():
    markdown = report.render_report(RECORDS, title="t")
    section = markdown.split("## Source accuracy per concept")[1]
    assert _row(section, "method") == ["method", "tops", "bags"]
    assert _row(section, "erm") == ["erm", "82.00 ± 2.00 (3)", "99.00 ± 0.00 (3)"]


def test_difference_tables_are_paired_where_seeds_match():
    markdown = report.render_report(RECORDS, title="t", reference_methods=("erm", "group_dro"))
    versus_erm = markdown.split("## Difference vs erm")[1].split("## Difference vs group_dro")[0]
    assert _row(versus_erm, "method − erm")[2] == "Δ worst concept"
    # Per-seed worst-concept differences +3, +4, +2 points.
    assert _row(versus_erm, "hrrl")[2] == "+3.00 ± 1.00 (3 paired)"
    assert _row(versus_erm, "hrrl")[1] == "-1.00 ± 2.00 (3 paired)"
    # One seed of group_dro, none shared: difference of means, no spread from a single run.
    assert _row(versus_erm, "group_dro")[2] == "+3.00 (1 vs 3)"
    versus_group_dro = markdown.split("## Difference vs group_dro")[1]
    assert _row(versus_group_dro, "hrrl")[2] == "+0.00 (3 vs 1)"


def test_unpaired_difference_uses_the_combined_std():
    method = report.summarise({0: 0.5, 1: 0.7})
    reference = report.summarise({10: 0.4, 11: 0.4, 12: 0.4})
    difference = report.paired_difference(method, reference)
    assert not difference["paired"]
    assert difference["mean"] == pytest.approx(0.2)
    assert difference["std"] == pytest.approx(math.sqrt(0.02))
    assert report.format_difference(difference) == "+20.00 ± 14.14 (2 vs 3)"


def test_write_report_writes_the_file_with_notes(tmp_path):
    path = tmp_path / "results" / "report.md"
    markdown = report.write_report(RECORDS, path, title="Comparison", notes="HRRL does not beat ERM on top-1.")
    assert path.read_text(encoding="utf-8") == markdown
    assert markdown.startswith("# Comparison\n")
    assert markdown.rstrip().endswith("## Notes\n\nHRRL does not beat ERM on top-1.")
    assert report.format_cell(None) == "–"
    assert report.format_cell(report.summarise({0: 0.5, 1: 0.6}), decimals=1) == "55.0 ± 7.1 (2)"


def test_errors_say_what_was_wrong():
    with pytest.raises(ValueError, match="not a fraction in \\[0, 1\\].*not percent"):
        report.aggregate([_record("erm", 0, 92.0, 0.8, 0.9)])
    with pytest.raises(ValueError, match="repeats a \\(method, seed\\) pair"):
        report.aggregate([_record("erm", 0, 0.9, 0.8, 0.9), _record("erm", 0, 0.9, 0.8, 0.9)])
    with pytest.raises(ValueError, match="reference methods \\['cl'\\] have no records"):
        report.render_report(RECORDS, title="t", reference_methods=("cl",))
    with pytest.raises(ValueError, match="method_order names \\['el'\\]"):
        report.render_report(RECORDS, title="t", method_order=["el"])
