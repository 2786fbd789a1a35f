"""The comparison experiment: pre-train every method over seeds, probe the frozen features on shifted targets.

Runs `config.compare.methods` x `config.compare.seeds` with the same budget (plus a λ sweep), each in
`WORKDIR/runs/<name>/seed<k>` and reused once finished, then measures each run's deep features on every
target: the source classes under appearance shifts (example level), the held-out classes and the digits
data set (concept level), with a linear probe (regularisation chosen on a validation split of the target's
training examples) and kNN Recall@1. Writes `WORKDIR/report.md`, `records.json` and the PNG plots.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
import numpy as np

from hrrl_jax.data import SplitData, load_split
from hrrl_jax.evaluate import plots, report
from hrrl_jax.evaluate.features import TrainedModel, extract_features, load_trained_model
from hrrl_jax.evaluate.probe import evaluate_linear_probe
from hrrl_jax.evaluate.retrieval import recall_at_k
from hrrl_jax.schema import OTHER_DATASET_TARGETS, PROBE_L2_GRID
from hrrl_jax.train.loop import train_and_evaluate
from hrrl_jax.workdir import WorkDir

SOURCE_KEYS = ("test_accuracy", "per_concept_accuracy", "worst_concept_accuracy", "best_concept_accuracy")


class ComparisonInterrupted(RuntimeError):
    """A run of the comparison was stopped (SIGTERM/SIGINT) after saving a checkpoint."""


def run_config(
    config: ml_collections.ConfigDict, method: str, seed: int, overrides: dict[str, Any]
) -> ml_collections.ConfigDict:
    """One training run's config: the shared budget, the method, the seed and its robust hyperparameters."""
    single = copy.deepcopy(config)
    with single.unlocked():
        del single["compare"]
    single.seed = seed
    single.robust.method = method
    for key, value in overrides.items():
        single.robust[key] = value
    return single


def target_splits(config: ml_collections.ConfigDict, name: str) -> tuple[SplitData, SplitData]:
    """(train, test) splits of a target: `shift/<s>`, `held_out`, or another data set (`digits`, `cifar10`)."""
    dataset = config.dataset
    if name.startswith("shift/"):
        full = f"{dataset.name}_shift/{name.split('/', 1)[1]}"
        kwargs = dict(exclude_classes=tuple(dataset.exclude_classes))
    elif name == "held_out":
        full, kwargs = dataset.name, dict(only_classes=tuple(dataset.exclude_classes))
    elif name in OTHER_DATASET_TARGETS:
        full, kwargs = name, {}
    else:
        raise ValueError(f"Unknown comparison target {name!r}; use shift/<shift>, held_out or {OTHER_DATASET_TARGETS}.")
    data_dir = dataset.data_dir
    return (
        load_split(full, "train", data_dir=data_dir, **kwargs),
        load_split(full, "test", data_dir=data_dir, **kwargs),
    )


def evaluate_target(
    trained: TrainedModel,
    splits: tuple[SplitData, SplitData],
    *,
    probe_train_examples: int,
    seed: int,
    probe_l2_grid: tuple[float, ...] = PROBE_L2_GRID,
) -> dict[str, float]:
    """Linear-probe test accuracy (its L2 chosen from `probe_l2_grid`) and Recall@1 of the frozen features on one
    target."""
    train_split, test_split = splits
    if len(train_split) > probe_train_examples:
        rows = np.sort(np.random.default_rng(seed).choice(len(train_split), probe_train_examples, replace=False))
        train_split = train_split.select(rows)
    train_features, train_labels = extract_features(trained, train_split)
    test_features, test_labels = extract_features(trained, test_split)
    probe = evaluate_linear_probe(
        train_features,
        train_labels,
        test_features,
        test_labels,
        num_classes=test_split.info.num_classes,
        l2_grid=probe_l2_grid,
        seed=seed,
    )
    return {"probe": probe["test_accuracy"], "recall_at_1": recall_at_k(test_features, test_labels, k=1)}


def run_record(
    config: ml_collections.ConfigDict,
    workdir: str,
    label: str,
    *,
    targets: Mapping[str, Callable[[], Any]],
    probe_train_examples: int,
    probe_l2_grid: tuple[float, ...] = PROBE_L2_GRID,
) -> dict[str, Any]:
    """Trains (or reuses) one run and evaluates (or reuses) its transfer results.

    `targets` maps each target's name to a function returning its (train, test) splits.
    """
    run_directory = WorkDir(workdir)
    results = trained_results(config, workdir)
    transfer_path = run_directory.file("transfer.json")
    if os.path.exists(transfer_path):
        with open(transfer_path) as file:
            transfer = json.load(file)
    else:
        trained = load_trained_model(workdir)
        transfer = {
            name: evaluate_target(
                trained,
                splits(),
                probe_train_examples=probe_train_examples,
                seed=config.seed,
                probe_l2_grid=probe_l2_grid,
            )
            for name, splits in targets.items()
        }
        with open(transfer_path, "w") as file:
            json.dump(transfer, file, indent=2)
    return {
        "method": label,
        "seed": config.seed,
        "source": {key: results[key] for key in SOURCE_KEYS},
        "targets": transfer,
        "concept_distribution": concept_distribution_history(run_directory),
    }


def trained_results(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """The results of the run in `workdir`: those of a finished run, else of training it (or resuming) now.

    Raises:
      ComparisonInterrupted: the run was stopped before its end (a checkpoint is saved; rerun to continue).
    """
    run_directory = WorkDir(workdir)
    os.makedirs(run_directory.path, exist_ok=True)
    results = run_directory.read_results()
    if results is None:
        results = train_and_evaluate(config, workdir)  # What it writes to results.json, on every process.
        if results.get("interrupted"):
            raise ComparisonInterrupted(
                f"The run in {workdir} stopped at step {results['step']} with a checkpoint; rerun the same "
                "command to continue the comparison (finished runs are reused)."
            )
    return results


def concept_distribution_history(run_directory: WorkDir) -> list[tuple[int, list[float]]]:
    """(step, p) from the run's metrics.jsonl (empty for ERM, which has no adversary)."""
    return [
        (record["step"], record["concept_distribution"])
        for record in run_directory.read_metrics()
        if "concept_distribution" in record
    ]


def run_comparison(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
    """Every method x seed and the λ sweep; writes report.md, records.json and plots into `workdir`.

    With `compare.write_report` off, only the runs are trained and evaluated: several processes can then
    share the work (disjoint methods or seeds each) before one pass with it on writes the report.
    """
    compare = config.compare
    os.makedirs(workdir, exist_ok=True)
    if compare.write_report:
        WorkDir(workdir).record_config(config, step=0)

    targets = {name: functools.cache(functools.partial(target_splits, config, name)) for name in compare.targets}

    def record(method: str, seed: int, overrides: dict[str, Any], run_name: str, label: str) -> dict[str, Any]:
        return run_record(
            run_config(config, method, seed, overrides),
            os.path.join(workdir, "runs", run_name, f"seed{seed}"),
            label,
            targets=targets,
            probe_train_examples=compare.probe_train_examples,
            probe_l2_grid=tuple(compare.probe_l2_grid),
        )

    main_records = [
        record(method, seed, dict(compare.overrides.get(method, {})), method, method)
        for method in compare.methods
        for seed in compare.seeds
    ]
    sweep_records = []
    for method in compare.sweep_methods:
        main_overrides = dict(compare.overrides.get(method, {}))
        for lam in compare.lambda_sweep:
            # A sweep point equal to the main run's setting is that run (same directory, trained once).
            run_name = method if main_overrides.get("lam") == lam else f"{method}_lam{lam:g}"
            for seed in compare.sweep_seeds:
                overrides = {**main_overrides, "lam": lam}
                sweep_records.append(record(method, seed, overrides, run_name, sweep_label(method, lam)))
    if compare.write_report:
        reference = [r for r in main_records if r["method"] == "erm"]
        with open(os.path.join(workdir, "records.json"), "w") as file:
            json.dump({"main": main_records, "lambda_sweep": sweep_records}, file, indent=2)
        write_outputs(config, workdir, main_records, reference + sweep_records)
    return main_records + sweep_records


def sweep_label(method: str, lam: float) -> str:
    return f"{method} λ={lam:g}"


def write_outputs(config, workdir: str, main_records: list[dict], sweep_records: list[dict]) -> None:
    """The report and the plots from the records."""
    methods = list(config.compare.methods)
    sweep_order = ["erm"] + [
        sweep_label(method, lam) for method in config.compare.sweep_methods for lam in config.compare.lambda_sweep
    ]
    main_report = report.render_report(
        main_records,
        title=f"ERM vs EL vs CL vs HRRL vs Group DRO on {config.dataset.name}",
        method_order=methods,
        reference_methods=tuple(method for method in ("erm", "group_dro") if method in methods),
        notes=config.compare.notes,
    )
    sweep_report = report.render_report(
        sweep_records,
        title="λ sweep of the concept level (CL and HRRL) against ERM",
        method_order=sweep_order,
        reference_methods=("erm",),
    )
    with open(os.path.join(workdir, "report.md"), "w") as file:
        file.write(main_report + "\n\n" + sweep_report)
    plots.plot_per_concept_accuracy(
        main_records, os.path.join(workdir, "per_concept_accuracy.png"), method_order=methods
    )
    plots.plot_per_concept_accuracy(
        sweep_records, os.path.join(workdir, "lambda_sweep_per_concept_accuracy.png"), method_order=sweep_order
    )
    histories = {
        r["method"]: r["concept_distribution"]
        for r in main_records
        if r["seed"] == min(config.compare.seeds) and r["concept_distribution"]
    }
    concept_names = list(main_records[0]["source"]["per_concept_accuracy"])
    plots.plot_concept_distribution(
        histories, os.path.join(workdir, "concept_distribution.png"), concept_names=concept_names
    )
    plots.plot_transfer_accuracy(main_records, os.path.join(workdir, "transfer_accuracy.png"), method_order=methods)
