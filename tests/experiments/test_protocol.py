"""The protocol end to end on tiny budgets: Fashion-MNIST (real training, 3 arms), and the CIFAR-100 and ImageNet
configs on mock and fixture data; selection reads no test split, confirmation does, finished runs are reused."""

import json
import os
import subprocess
import sys

import pytest

from configs import protocol_cifar100, protocol_fashion_mnist, protocol_imagenet
from hrrl_jax.config_checks import validate_config
from hrrl_jax.data import loaders
from hrrl_jax.experiments import compare, protocol
from tests.conftest import TEST_XLA_FLAGS
from tests.train.helpers import REPO_ROOT

FASHION_MNIST_FILES = "/usr/share/datasets/fashion-mnist"
TINY_BUDGET = {"total_steps": 3, "batch_size": 16, "log_every_steps": 1, "checkpoint_every_steps": 100}
# Evaluation and feature extraction (every image of the test splits, once per run) cost most of a protocol test: at
# 8 px the forward pass costs a fifth of 28 px, and evaluating in batches of 512 saves the per-batch overhead.
TINY_IMAGE_SIZE = 8
TINY_EVAL_BATCH_SIZE = 512
# Every probe fits each strength and refits the chosen one (L-BFGS, up to 100 steps): two strengths exercise the
# choice; the configs' six decades would triple the probes' cost.
TINY_PROBE_L2_GRID = (1e-4, 1e-2)


def tiny(config, *, arms, **compare_values):
    """`config` with a tiny model, images and budget, the named arms of its own and small probes."""
    for key, value in TINY_BUDGET.items():
        config[key] = value
    config.eval_batch_size = TINY_EVAL_BATCH_SIZE
    config.dataset.image_size = TINY_IMAGE_SIZE
    config.model.name = "resnet10"
    config.model.width = 4
    config.precision = "float32"
    config.optimizer.warmup_steps = 0
    by_name = {arm["name"]: arm for arm in config.compare.arms}
    config.compare.arms = tuple(by_name[name] if isinstance(name, str) else name for name in arms)
    config.compare.post_hoc_arms = ()
    config.compare.few_shot_draws = 2
    config.compare.confirmation_seeds = (1, 2)
    config.compare.probe_l2_grid = TINY_PROBE_L2_GRID
    for key, value in compare_values.items():
        config.compare[key] = value
    validate_config(config)
    return config


def run_phases(config, workdir, split_reads):
    """Selection (asserting it reads no test split), then confirmation; returns (selection, confirmation records)."""
    selection = protocol.run_selection(config, str(workdir))
    assert split_reads and not [read for read in split_reads if read[1] != "train"], split_reads
    records = protocol.run_confirmation(config, str(workdir), selection)
    assert any(split != "train" for _, split in split_reads)
    for name in ("selection.json", "selection.md", "confirmation.json", "confirmation.md"):
        assert (workdir / name).stat().st_size > 500, name
    return selection, records


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_FILES), reason="needs Debian's dataset-fashion-mnist files")
@pytest.mark.slow
def test_fashion_mnist_protocol_end_to_end_and_reuse(tmp_path, split_reads, monkeypatch):
    own_hrrl = {"name": "hrrl_on_cl", "method": "hrrl", "combine": ("cl",), "robust": {"gamma": 1.0}}
    config = tiny(
        protocol_fashion_mnist.get_config(),
        arms=("erm_wd5e-4", "cl_l2_lam1", own_hrrl),
        targets=("shift/lowres4", "held_out", "digits"),
        few_shot_shots=(1, 5),
        within_concept_shots=(5,),
        probe_train_examples=400,
        confirmation_seeds=(1,),  # Every selected family on a confirmation seed: 3 runs; each further seed, 3 more.
    )
    config.dataset.validation_fraction = 0.02
    selection, records = run_phases(config, tmp_path, split_reads)

    log = selection.log
    assert [entry["status"] for entry in log["arms"]] == ["trained"] * 3
    assert log["arms"][2]["robust"] == {
        "divergence": "l2",
        "lam": 1.0,
        "prior": "empirical",
        "step_offset": 300.0,
        "gamma": 1.0,
    }
    assert {family: entry["tried"] for family, entry in log["families"].items()} == {"erm": 1, "cl": 1, "hrrl": 1}
    source_validation = log["arms"][0]["records"][0]["targets"]
    assert source_validation["held_out"]["num_evaluation_examples"] == 3 * 120  # 2 % of each held-out class's 6,000.
    within = log["arms"][0]["records"][0]["within_concept"]["5"]
    assert set(within["per_concept"]) == {"tops", "trousers & dresses", "footwear"}
    selected_families = [family for family, entry in log["families"].items() if entry["selected"]]
    assert "erm" in selected_families
    assert sorted({(r["method"], r["seed"]) for r in records}) == sorted(
        (f"{family}*", 1) for family in selected_families
    )
    for record in records:
        assert record["targets"]["held_out"]["num_evaluation_examples"] == 3000  # The test images of 3 classes.
        assert record["targets"]["digits"]["few_shot"]["5"]["accuracies"] and 0 <= record["source"]["test_accuracy"]
        assert {target["probe_l2"] for target in record["targets"].values()} <= set(TINY_PROBE_L2_GRID)
    # The same pool, hence the same support images, for every method.
    assert len({r["targets"]["digits"]["num_pool_examples"] for r in records}) == 1
    report = (tmp_path / "confirmation.md").read_text()
    assert "| source top-1 |" in report and "| 5-shot worst concept |" in report
    for name in ("per_concept_accuracy", "transfer_accuracy", "few_shot_curves"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000, name

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(compare, "train_and_evaluate", no_training)
    monkeypatch.setattr(protocol, "load_trained_model", no_training)  # Measured figures are reused too.
    again = protocol.run_protocol(config, str(tmp_path))
    assert json.dumps(again, sort_keys=True) == json.dumps(records, sort_keys=True)


@pytest.mark.slow
def test_cifar100_protocol_config_end_to_end_on_mock_data(tmp_path, split_reads):
    import tensorflow_datasets as tfds

    config = tiny(
        protocol_cifar100.get_config(),
        arms=("erm_wd5e-4",),  # One arm of the config's own runs every phase; the arms' logic is the Fashion test's.
        targets=("shift/blur", "held_out", "cifar10"),
        few_shot_shots=(1,),
        within_concept_shots=(1,),
        probe_train_examples=1_500,
        probe_l2_grid=(1e-3,),  # 100 classes: one strength, one fit and its refit per probe.
        confirmation_seeds=(1,),
    )
    loaders._tfds_arrays.cache_clear()  # Arrays an earlier test read under another mock size.
    try:
        # 1,500 random examples a split: every one of the 100 classes has some in each pool and validation split.
        with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, num_examples=1_500):
            _, records = run_phases(config, tmp_path, split_reads)
    finally:
        loaders._tfds_arrays.cache_clear()
    assert {read[0] for read in split_reads} == {"cifar100", "cifar10"}
    within = records[0]["within_concept"]["1"]["per_concept"]
    assert len(within) == 20  # Every superclass: its 4 source classes and its held-out one.


@pytest.mark.slow
def test_imagenet_protocol_config_end_to_end_on_the_jpeg_fixture(tmp_path, split_reads):
    sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
    import imagenet_fixture

    data_dir = str(tmp_path / "data")
    # Labels cycle through the 1000 classes: 4 training images of each (1 held out for validation, 3 for the probes,
    # whose choice of L2 needs a validation split of its own), 1 validation (here: test) image.
    # Small photographs (at ImageNet's sizes, building alone takes ~38 s); the model sees 8 px (tiny).
    imagenet_fixture.build(data_dir, train_examples=4_000, validation_examples=1_000, image_sizes=((64, 48), (48, 64)))
    config = tiny(
        protocol_imagenet.get_config(),
        arms=("erm_wd5e-4",),  # One arm of the config's own runs every phase.
        targets=("shift/lowres4", "held_out"),
        few_shot_targets=("held_out",),
        few_shot_shots=(1,),
        within_concept_shots=(1,),
        probe_train_examples=3_000,
        probe_l2_grid=(1e-3,),  # 1,000 classes: one strength, one fit and its refit per probe.
        confirmation_seeds=(1,),
    )
    config.dataset.data_dir = data_dir
    config.dataset.num_workers = 0  # The config's 12 worker processes, a new pool per pass, on 2 cores.
    config.dataset.validation_fraction = 0.25
    split_reads.clear()  # Building the fixture read nothing through the loaders; this makes sure.
    _, records = run_phases(config, tmp_path / "work", split_reads)
    assert {read[0] for read in split_reads} == {"imagenet2012"}
    held_out = records[0]["targets"]["held_out"]
    assert (held_out["num_pool_examples"], held_out["num_evaluation_examples"]) == (33, 11)
    assert len(records[0]["within_concept"]["1"]["per_concept"]) == 11


def test_launch_runs_the_protocol_for_a_config_with_arms(tmp_path):
    # Digits has no concept of two classes: the protocol (not the v1 comparison) refuses its within-concept tasks
    # before any run, and launch.py reports that in one line.
    command = [sys.executable, "launch.py", "--config", "configs/protocol_fashion_mnist.py", "--workdir", str(tmp_path)]
    flags = ["--config.dataset.name=digits", "--config.dataset.exclude_classes=(7,8,9)"]
    environment = {**os.environ, "XLA_FLAGS": TEST_XLA_FLAGS}  # One device
    result = subprocess.run(
        command + flags, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: config.compare.within_concept_shots=(5, 20): no concept of digits has two classes")
    )
    assert not (tmp_path / "runs").exists()
