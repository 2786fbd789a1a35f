"""scripts/fine_tuning_report.py: the four arms' results.json files become one report with the right figures."""

import importlib.util
import json
import os

from tests.train.helpers import REPO_ROOT

SCRIPT = os.path.join(REPO_ROOT, "scripts", "fine_tuning_report.py")
spec = importlib.util.spec_from_file_location("fine_tuning_report", SCRIPT)
fine_tuning_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fine_tuning_report)

# Per arm: top-1 of seeds 0 and 1; worst concept "a" = top-1 − 0.1, best "b" = top-1 + 0.05.
TOP1 = {"erm400": (0.80, 0.82), "erm400_hrrl100": (0.79, 0.80), "erm500": (0.84, 0.86), "hrrl500": (0.81, 0.83)}


def write_runs(directory, status="finished"):
    for prefix, values in TOP1.items():
        for seed, top1 in enumerate(values):
            run = directory / f"{prefix}_s{seed}"
            run.mkdir()
            results = {
                "status": status,
                "test_accuracy": top1,
                "per_concept_accuracy": {"a": top1 - 0.1, "b": top1 + 0.05},
                "worst_concept_accuracy": top1 - 0.1,
                "best_concept_accuracy": top1 + 0.05,
            }
            (run / "results.json").write_text(json.dumps(results))


def test_the_report_has_each_arm_over_seeds_and_its_difference_from_erm_500(tmp_path, capsys):
    write_runs(tmp_path)
    assert fine_tuning_report.main([str(tmp_path), "--seeds", "0", "1"]) == 0
    report = capsys.readouterr().out
    row = "| ERM 400 → HRRL 100 | 79.50 ± 0.71 (2) | 69.50 ± 0.71 (2) | 84.50 ± 0.71 (2) | 15.00 ± 0.00 (2) |"
    assert row in report
    assert "## Difference vs ERM 500" in report
    # HRRL 500 − ERM 500 per seed: 0.81 − 0.84 and 0.83 − 0.86, paired.
    assert "| HRRL 500 | -3.00 ± 0.00 (2 paired) |" in report


def test_a_missing_or_unfinished_run_is_named(tmp_path, capsys):
    write_runs(tmp_path, status="interrupted")
    assert fine_tuning_report.main([str(tmp_path), "--seeds", "0"]) == 1
    assert "erm400_s0/results.json: the run is 'interrupted', not finished" in capsys.readouterr().err
    assert fine_tuning_report.main([str(tmp_path), "--seeds", "5"]) == 1
    assert "erm400_s5/results.json is missing" in capsys.readouterr().err
