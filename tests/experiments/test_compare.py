"""The comparison experiment end to end on a tiny budget, through launch.py, and its reuse of finished runs."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import TEST_XLA_FLAGS
from tests.train.helpers import REPO_ROOT

FASHION_MNIST_FILES = "/usr/share/datasets/fashion-mnist"
TINY_COMPARISON = [
    "--config.num_epochs=None",
    "--config.total_steps=4",
    "--config.batch_size=32",
    "--config.model.name=resnet10",
    "--config.model.width=4",
    # Evaluating and embedding every test image of the source and the targets, once per run, costs most of the test:
    # 8 px images cost a fifth of the forward pass at 28 px, batches of 512 the per-batch overhead of 32.
    "--config.dataset.image_size=8",
    "--config.eval_batch_size=512",
    "--config.log_every_steps=2",
    "--config.compare.methods=('erm','hrrl')",
    "--config.compare.seeds=(0,1)",
    "--config.compare.lambda_sweep=(10.0,)",
    "--config.compare.sweep_methods=('cl',)",
    "--config.compare.targets=('shift/lowres4','held_out','digits')",
    "--config.compare.probe_train_examples=200",
    "--config.compare.probe_l2_grid=(1e-4,1e-2)",  # Two strengths exercise the choice at a third of the cost.
]


def compare(workdir):
    environment = {**os.environ, "XLA_FLAGS": TEST_XLA_FLAGS}  # One device: faster.
    command = [sys.executable, "launch.py", "--config", "configs/compare_fashion_mnist.py", "--workdir", str(workdir)]
    return subprocess.run(
        command + TINY_COMPARISON, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=1200
    )


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_FILES), reason="needs Debian's dataset-fashion-mnist files")
@pytest.mark.slow
def test_comparison_runs_end_to_end_and_reuses_finished_runs(tmp_path):
    result = compare(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in (
        "report.md",
        "per_concept_accuracy.png",
        "lambda_sweep_per_concept_accuracy.png",
        "concept_distribution.png",
        "transfer_accuracy.png",
    ):
        assert os.path.getsize(tmp_path / name) > 1000, name
    records = json.load(open(tmp_path / "records.json"))
    assert sorted((r["method"], r["seed"]) for r in records["main"]) == [
        ("erm", 0),
        ("erm", 1),
        ("hrrl", 0),
        ("hrrl", 1),
    ]
    assert [r["method"] for r in records["lambda_sweep"]] == ["cl λ=10"]
    for record in records["main"]:
        assert set(record["targets"]) == {"shift/lowres4", "held_out", "digits"}
        assert set(record["source"]["per_concept_accuracy"]) == {"tops", "trousers & dresses", "footwear", "bags"}
        for target in record["targets"].values():
            assert 0.0 <= target["probe"] <= 1.0 and 0.0 <= target["recall_at_1"] <= 1.0
    hrrl_history = next(r for r in records["main"] if r["method"] == "hrrl")["concept_distribution"]
    assert hrrl_history and abs(sum(hrrl_history[-1][1]) - 1.0) < 1e-5
    report = open(tmp_path / "report.md").read()
    assert "| erm |" in report and "| hrrl |" in report and "(2)" in report
    assert "Difference vs erm" in report and "held_out probe" in report

    finished = tmp_path / "runs" / "erm" / "seed0" / "results.json"
    stamp = os.path.getmtime(finished)
    rerun = compare(tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert os.path.getmtime(finished) == stamp
    assert "Resuming" not in rerun.stdout and "Results:" not in rerun.stdout  # Nothing was trained again.
