"""The protocol's targets: which images each phase reads, and what is measured on a run's frozen features.

Every target splits its training images as the source does (`holdout_rows` with `dataset.validation_fraction` and
`dataset.validation_seed`): the held-out rows are its validation data, the rest its pool (subsampled to
`compare.probe_train_examples` rows by `compare.draw_seed`), where probes are fitted and few-shot support sets
drawn. In the selection phase a target is scored on its validation rows, in the confirmation phase on its test
split, which is read only then. The source's own held-out rows are never trained on, so a target built from the
source images (the shifts, the held-out classes, the within-concept tasks) holds out those same images.

Measured per target: the linear probe's accuracy, per concept and its worst concept; kNN Recall@1 on the features
and on the features centred on the pool's mean; nearest-class-mean few-shot accuracy for `compare.few_shot_shots`
on the `compare.few_shot_targets`. The within-concept tasks (`WITHIN_CONCEPT`: all classes of the source data set,
held-out ones included, each concept of at least two classes a task) get `compare.within_concept_shots`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
import numpy as np

from hrrl_jax.data import SplitData, describe_dataset, load_split
from hrrl_jax.data.registry import load_split_and_holdout
from hrrl_jax.errors import ConfigError
from hrrl_jax.evaluate.concepts import per_concept_accuracy, worst_concept
from hrrl_jax.evaluate.features import TrainedModel, extract_features
from hrrl_jax.evaluate.few_shot import few_shot_accuracy, within_concept_few_shot
from hrrl_jax.evaluate.probe import fit_linear_probe, probe_predictions
from hrrl_jax.evaluate.retrieval import recall_at_k
from hrrl_jax.schema import OTHER_DATASET_TARGETS, PROBE_L2_GRID, SHIFT_MARKER

WITHIN_CONCEPT = "within_concept"
SELECTION, CONFIRMATION = "selection", "confirmation"
PHASES = (SELECTION, CONFIRMATION)


@dataclasses.dataclass(frozen=True)
class TargetData:
    """One target in one phase: the pool (probe fitting, few-shot support) and the split it is scored on."""

    name: str
    pool: SplitData
    evaluation: SplitData


def _target_source(config: ml_collections.ConfigDict, name: str) -> tuple[str, dict[str, tuple[int, ...]], bool]:
    """(data set name, class filters, whether it is built from the source's images) of a target."""
    dataset = config.dataset
    source_filters = dict(exclude_classes=tuple(dataset.exclude_classes), only_classes=tuple(dataset.only_classes))
    if name.startswith("shift/"):
        return f"{dataset.name}{SHIFT_MARKER}{name.split('/', 1)[1]}", source_filters, True
    if name == "held_out":
        if not dataset.exclude_classes:
            raise ConfigError("config.compare.targets has held_out, but config.dataset.exclude_classes holds none out.")
        return dataset.name, dict(only_classes=tuple(dataset.exclude_classes)), True
    if name == WITHIN_CONCEPT:
        return dataset.name, {}, True
    if name in OTHER_DATASET_TARGETS:
        return name, {}, False
    raise ValueError(
        f"unknown target {name!r}; use shift/<shift>, held_out, {WITHIN_CONCEPT} or {OTHER_DATASET_TARGETS}."
    )


def load_target(config: ml_collections.ConfigDict, name: str, phase: str) -> TargetData:
    """The pool and the evaluation split of target `name` in `phase` (`selection`: validation rows, else test)."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}; got {phase!r}.")
    dataset, compare = config.dataset, config.compare
    full_name, filters, from_source = _target_source(config, name)
    source_channels = describe_dataset(dataset.name).image_shape[2]
    channels = describe_dataset(full_name).image_shape[2]
    if channels != source_channels:
        raise ConfigError(
            f"config.compare.targets has {name!r}, whose images have {channels} channel(s) where the source "
            f"{dataset.name!r} has {source_channels}; choose targets with the source's channels."
        )
    train_split, test_split = (dataset.train_split, dataset.test_split) if from_source else ("train", "test")
    fit, validation = load_split_and_holdout(
        full_name,
        train_split,
        fraction=dataset.validation_fraction,
        seed=dataset.validation_seed,
        data_dir=dataset.data_dir,
        **filters,
    )
    if len(fit) > compare.probe_train_examples:
        rows = np.random.default_rng(compare.draw_seed).choice(len(fit), compare.probe_train_examples, replace=False)
        fit = fit.select(np.sort(rows))
    if phase == SELECTION:
        evaluation = validation
    else:
        evaluation = load_split(full_name, test_split, data_dir=dataset.data_dir, **filters)
    if not len(evaluation):
        raise ConfigError(
            f"target {name!r} has no {phase} examples: raise config.dataset.validation_fraction "
            f"({dataset.validation_fraction}) so that every class holds some out."
        )
    return TargetData(name=name, pool=fit, evaluation=evaluation)


def evaluate_target(
    trained: TrainedModel,
    data: TargetData,
    *,
    few_shot_shots: tuple[int, ...],
    num_draws: int,
    draw_seed: int,
    probe_l2_grid: tuple[float, ...] = PROBE_L2_GRID,
) -> dict[str, Any]:
    """Probe (with per-concept accuracy and worst concept; its L2 chosen from `probe_l2_grid`), Recall@1 (plain and
    centred), few-shot accuracies."""
    pool_features, pool_labels = extract_features(trained, data.pool)
    features, labels = extract_features(trained, data.evaluation)
    info = data.evaluation.info
    probe = fit_linear_probe(
        pool_features, pool_labels, num_classes=info.num_classes, l2_grid=probe_l2_grid, seed=draw_seed
    )
    predictions = np.asarray(probe_predictions(probe, features))
    by_concept = per_concept_accuracy(predictions, labels, info.hierarchy)
    worst_name, worst_accuracy = worst_concept(by_concept)
    return {
        "probe": float(np.mean(predictions == labels)),
        "probe_l2": probe.l2,
        "probe_per_concept": by_concept,
        "probe_worst_concept": worst_accuracy,
        "probe_worst_concept_name": worst_name,
        "recall_at_1": recall_at_k(features, labels, k=1),
        "recall_at_1_centred": recall_at_k(features - pool_features.mean(axis=0), labels, k=1),
        "few_shot": {
            str(shots): few_shot_accuracy(
                pool_features, pool_labels, features, labels, shots=shots, num_draws=num_draws, seed_base=draw_seed
            )
            for shots in few_shot_shots
        },
        "num_pool_examples": len(data.pool),
        "num_evaluation_examples": len(data.evaluation),
    }


def evaluate_within_concept(
    trained: TrainedModel, data: TargetData, *, shots: tuple[int, ...], num_draws: int, draw_seed: int
) -> dict[str, Any]:
    """`within_concept_few_shot` for each number of shots, keyed by it (as a string)."""
    pool_features, pool_labels = extract_features(trained, data.pool)
    features, labels = extract_features(trained, data.evaluation)
    hierarchy = data.evaluation.info.hierarchy
    return {
        str(k): within_concept_few_shot(
            pool_features, pool_labels, features, labels, hierarchy, shots=k, num_draws=num_draws, seed_base=draw_seed
        )
        for k in shots
    }
