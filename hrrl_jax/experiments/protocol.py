"""The pre-registered protocol: select each family's arm on validation data, then confirm it on fresh seeds.

    python launch.py --config configs/protocol_fashion_mnist.py --workdir workdirs/protocol

Selection (`run_selection`): every arm of `compare.arms` trains on each of `compare.selection_seeds` with the source
validation rows held out (`dataset.validation_fraction`), is evaluated on them, and its frozen features are scored
on each target's validation rows (hrrl_jax.experiments.protocol_targets); no test split is read. The rule of
hrrl_jax.experiments.selection picks one arm per family (arms that combine other families' selections are resolved
once those are chosen; an arm's family, by default its method, may be another, e.g. a control that trains as `el`
after the el family's selection). Writes WORKDIR/selection.json (every arm, every run's figures) and selection.md.

Confirmation (`run_confirmation`): each family's selected arm (`<family>*`, families in the order they first appear
in `compare.arms`) trains on `compare.confirmation_seeds`, and it and its features are evaluated once on the test
splits. Writes WORKDIR/confirmation.json, confirmation.md (per measure, mean ± std over seeds and the paired
differences of hrrl_jax.evaluate.protocol_report.comparisons with 95 % t-intervals) and the plots: per-concept
accuracy, p over training, few-shot curves, transfer accuracy.

Runs live in WORKDIR/runs/<arm>/seed<k> and are reused once finished; a finished run of other settings under that
name is an error, not reused. A run's target figures are kept in its <phase>_targets.json with the settings that
produced them, and measured again when those change.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
import numpy as np

from hrrl_jax.config_checks import config_from_json
from hrrl_jax.data import describe_dataset
from hrrl_jax.errors import ConfigError
from hrrl_jax.evaluate import plots
from hrrl_jax.evaluate.concepts import concept_groups
from hrrl_jax.evaluate.features import load_trained_model
from hrrl_jax.evaluate.protocol_report import render_confirmation_report, render_selection_log, target_level
from hrrl_jax.evaluate.report import summarise
from hrrl_jax.experiments.arms import Arm, ResolvedArm, arm_run_config, arms_from_config, resolve_arm
from hrrl_jax.experiments.compare import SOURCE_KEYS, concept_distribution_history, trained_results
from hrrl_jax.experiments.protocol_targets import (
    CONFIRMATION,
    SELECTION,
    WITHIN_CONCEPT,
    TargetData,
    evaluate_target,
    evaluate_within_concept,
    load_target,
)
from hrrl_jax.experiments.selection import (
    Candidate,
    highest_score,
    is_selectable,
    level_means,
    score_formula,
    select,
    selection_score,
    top1_threshold,
)
from hrrl_jax.schema import HOLDOUT_SPLIT, REFERENCE_FAMILY, default_compare_config
from hrrl_jax.workdir import WorkDir
from hrrl_jax.workdir.layout import config_changes

# The config values a run's target figures depend on (besides the run itself): a change measures them again.
_MEASUREMENT_KEYS = ("targets", "few_shot_targets", "few_shot_shots", "within_concept_shots", "few_shot_draws")
_MEASUREMENT_KEYS += ("draw_seed", "probe_train_examples", "probe_l2_grid")


def _measurement_settings(compare: ml_collections.ConfigDict) -> dict[str, Any]:
    """The values of `_MEASUREMENT_KEYS` in `compare`, as recorded beside the measured figures."""
    values = _as_json(compare)
    return {key: values[key] for key in _MEASUREMENT_KEYS}


def _measured_under(recorded: Mapping[str, Any], settings: Mapping[str, Any]) -> bool:
    """Whether figures recorded under the settings `recorded` hold for `settings`. A key the record lacks was added
    to `_MEASUREMENT_KEYS` after it was written, so the figures were measured at that key's default."""
    return {**_measurement_settings(default_compare_config()), **recorded} == settings


@dataclasses.dataclass
class Selection:
    """The selection's outcome: the log written to selection.json (its `families` in the order they first appear in
    `compare.arms`), each family's selected arm and every trained arm by name."""

    log: dict[str, Any]
    selected: dict[str, ResolvedArm]
    trained: dict[str, ResolvedArm]


def phase_targets(config: ml_collections.ConfigDict, phase: str) -> dict[str, Callable[[], TargetData]]:
    """Target name -> its data in `phase`, each loaded on first use and kept (`within_concept` if it has shots)."""
    shots = config.compare.within_concept_shots
    if shots and not concept_groups(describe_dataset(config.dataset.name).hierarchy):
        raise ConfigError(
            f"config.compare.within_concept_shots={tuple(shots)!r}: no concept of {config.dataset.name} has two "
            "classes, so there is no within-concept task; set it to ()."
        )
    names = list(config.compare.targets) + ([WITHIN_CONCEPT] if shots else [])
    return {name: functools.cache(functools.partial(load_target, config, name, phase)) for name in names}


def _as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort(sort_keys=True))


def _check_reusable(run_directory: WorkDir, config: ml_collections.ConfigDict) -> None:
    """A finished run under this name must have trained exactly `config`."""
    if run_directory.read_results() is None:
        return
    recorded = _as_json(config_from_json(run_directory.read_config_dict()))
    changed = config_changes(recorded, _as_json(config))
    if changed:
        key, (old, new) = next(iter(changed.items()))
        raise ConfigError(
            f"{run_directory.path} is a finished run of other settings ({key}: {old!r} there, {new!r} now); "
            "rename the arm or move that directory away."
        )


def protocol_record(
    config: ml_collections.ConfigDict,
    workdir: str,
    arm: ResolvedArm,
    seed: int,
    phase: str,
    targets: Mapping[str, Callable[[], TargetData]],
) -> dict[str, Any]:
    """Trains (or reuses) one run of `arm` and measures (or reuses) its figures in `phase`."""
    compare = config.compare
    test_split = HOLDOUT_SPLIT if phase == SELECTION else config.dataset.test_split
    single = arm_run_config(config, arm, seed, test_split=test_split)
    run_directory = WorkDir(os.path.join(workdir, "runs", arm.run_name, f"seed{seed}"))
    _check_reusable(run_directory, single)
    results = trained_results(single, run_directory.path)
    settings = _measurement_settings(compare)
    path = run_directory.file(f"{phase}_targets.json")
    measured = None
    if os.path.exists(path):
        with open(path) as file:
            measured = json.load(file)
        measured = measured if _measured_under(measured["settings"], settings) else None
    if measured is None:
        trained = load_trained_model(run_directory.path)
        options = dict(num_draws=compare.few_shot_draws, draw_seed=compare.draw_seed)
        measured = {
            "settings": settings,
            "targets": {
                name: evaluate_target(
                    trained,
                    targets[name](),
                    few_shot_shots=tuple(compare.few_shot_shots) if name in compare.few_shot_targets else (),
                    probe_l2_grid=tuple(compare.probe_l2_grid),
                    **options,
                )
                for name in compare.targets
            },
            "within_concept": (
                evaluate_within_concept(
                    trained, targets[WITHIN_CONCEPT](), shots=tuple(compare.within_concept_shots), **options
                )
                if compare.within_concept_shots
                else {}
            ),
        }
        with open(path, "w") as file:
            json.dump(measured, file, indent=2)
    return {
        "arm": arm.name,
        "method": arm.method,
        "seed": seed,
        "phase": phase,
        "source": {key: results[key] for key in SOURCE_KEYS},
        "targets": measured["targets"],
        "within_concept": measured["within_concept"],
        "concept_distribution": concept_distribution_history(run_directory),
    }


def _arm_entry(arm: ResolvedArm | Arm, status: str) -> dict[str, Any]:
    resolved = arm if isinstance(arm, ResolvedArm) else None
    return {
        "name": arm.name,
        "method": arm.method,
        "family": arm.family,
        "combine": list(arm.combine),
        "robust": dict(arm.robust),
        "optimizer": dict(arm.optimizer),
        "settings": resolved.describe() if resolved else "",
        "same_as": resolved.same_as if resolved else None,
        "status": status,
        "selected": False,
    }


def _scored_entry(arm: ResolvedArm, records: list[dict[str, Any]], config: ml_collections.ConfigDict) -> dict:
    """A trained arm's log entry: means over the selection seeds of its source and validation target figures."""
    compare = config.compare
    targets = list(compare.targets)

    def mean(values: list[float]) -> float:
        return float(np.mean(values))

    metrics = ("probe", "recall_at_1", "recall_at_1_centred", "probe_worst_concept")
    return {
        **_arm_entry(arm, "trained"),
        "seeds": [record["seed"] for record in records],
        "source_top1": mean([r["source"]["test_accuracy"] for r in records]),
        "source_worst_concept": mean([r["source"]["worst_concept_accuracy"] for r in records]),
        "targets": {
            target: {metric: mean([r["targets"][target][metric] for r in records]) for metric in metrics}
            for target in targets
        },
        "level_means": {
            level: mean([level_means(r["targets"], targets, compare.selection_metric)[level] for r in records])
            for level in level_means(records[0]["targets"], targets, compare.selection_metric)
        },
        "score": mean(
            [
                selection_score(
                    r["targets"],
                    targets,
                    compare.selection_metric,
                    score=compare.selection_score,
                    source_worst_concept=r["source"]["worst_concept_accuracy"],
                )
                for r in records
            ]
        ),
        "records": records,
    }


def run_selection(config: ml_collections.ConfigDict, workdir: str) -> Selection:
    """Trains and scores every arm on the selection seeds (validation data only) and selects one per family."""
    compare = config.compare
    os.makedirs(workdir, exist_ok=True)
    targets = phase_targets(config, SELECTION)
    arms = arms_from_config(compare.arms)
    families = list(dict.fromkeys(arm.family for arm in arms))
    entries: dict[str, dict[str, Any]] = {}
    resolved: list[ResolvedArm] = []
    selected: dict[str, ResolvedArm] = {}
    family_log: dict[str, dict[str, Any]] = {}
    threshold = reference = None
    pending = list(arms)
    while pending:
        ready = [arm for arm in pending if set(arm.combine) <= set(family_log)]
        if not ready:
            raise ConfigError(f"config.compare.arms: {[arm.name for arm in pending]} combine families never decided.")
        for arm in ready:
            unselected = [family for family in arm.combine if family not in selected]
            if unselected:
                entries[arm.name] = _arm_entry(arm, f"not trained: {', '.join(unselected)} had no selectable arm")
                continue
            resolution = resolve_arm(arm, selected, resolved)
            resolved.append(resolution)
            if resolution.same_as is not None:
                entries[arm.name] = _arm_entry(resolution, f"same settings as {resolution.same_as}")
                continue
            records = [
                protocol_record(config, workdir, resolution, seed, SELECTION, targets)
                for seed in compare.selection_seeds
            ]
            entries[arm.name] = _scored_entry(resolution, records, config)
        pending = [arm for arm in pending if arm not in ready]
        if threshold is None:
            erm = [e for e in entries.values() if e["family"] == REFERENCE_FAMILY and e["status"] == "trained"]
            reference = max(erm, key=lambda entry: entry["source_top1"])
            threshold = top1_threshold([entry["source_top1"] for entry in erm], compare.top1_tolerance)
        for family in families:
            if family in family_log or any(arm.family == family for arm in pending):
                continue
            trained = [e for e in entries.values() if e["family"] == family and e["status"] == "trained"]
            candidates = [Candidate(e["name"], e["score"], e["source_top1"]) for e in trained]
            for entry in trained:
                entry["selectable"] = is_selectable(entry["source_top1"], threshold)
            choice = select(candidates, threshold=threshold, tie_tolerance=compare.tie_tolerance)
            stand_in = None
            if choice is None and compare.stand_in_unselectable:
                stand_in = highest_score(candidates, tie_tolerance=compare.tie_tolerance)
            chosen = choice or stand_in  # The arm the family's label stands for in combinations and confirmation.
            if chosen is not None:
                entries[chosen]["selected" if choice else "stand_in"] = True
                selected[family] = next(arm for arm in resolved if arm.name == chosen)
            family_log[family] = {
                "tried": len(trained),
                "selected": choice,
                "settings": entries[chosen]["settings"] if chosen else None,
                "score": entries[chosen]["score"] if chosen else None,
            }
            if compare.stand_in_unselectable:
                family_log[family]["stand_in"] = stand_in
    targets_by_level = {
        level: [t for t in compare.targets if target_level(t) == level]
        for level in ("example", "concept")
        if any(target_level(t) == level for t in compare.targets)
    }
    log = {
        "rule": {
            "selection_seeds": list(compare.selection_seeds),
            "metric": compare.selection_metric,
            "targets_by_level": targets_by_level,
            "score": compare.selection_score,
            "score_formula": score_formula(compare.selection_score, targets_by_level, compare.selection_metric),
            "top1_tolerance": compare.top1_tolerance,
            "tie_tolerance": compare.tie_tolerance,
            "reference_arm": reference["name"],
            "reference_top1": reference["source_top1"],
            "threshold": threshold,
        },
        "arms": [entries[arm.name] for arm in arms],
        "families": {family: family_log[family] for family in families},
    }
    with open(os.path.join(workdir, "selection.json"), "w") as file:
        json.dump(log, file, indent=2)
    with open(os.path.join(workdir, "selection.md"), "w") as file:
        file.write(render_selection_log(log))
    trained = {arm.name: arm for arm in resolved if arm.same_as is None}
    return Selection(log=log, selected=selected, trained=trained)


def confirmation_label(family: str, *, stand_in: bool = False) -> str:
    """`hrrl*`: the family's selected arm, as the confirmation report names it; `hrrl* (stand-in)` for the arm that
    stands in for a family without a selectable arm (`compare.stand_in_unselectable`)."""
    return f"{family}* (stand-in)" if stand_in else f"{family}*"


def post_hoc_label(arm_name: str) -> str:
    """`hrrl_selected (post hoc)`: an arm of `compare.post_hoc_arms`, confirmed although the rule did not select it."""
    return f"{arm_name} (post hoc)"


def post_hoc_arms(config: ml_collections.ConfigDict, selection: Selection) -> list[ResolvedArm]:
    """The arms of `compare.post_hoc_arms` that the rule did not select (a selected one is confirmed as such).

    Raises:
      ConfigError: one of them was not trained in the selection (its combined families had no selectable arm).
    """
    selected = {arm.name for arm in selection.selected.values()}  # Stand-ins included: confirmed as such.
    arms = []
    for name in config.compare.post_hoc_arms:
        if name in selected:
            continue
        if name not in selection.trained:
            status = next(entry["status"] for entry in selection.log["arms"] if entry["name"] == name)
            raise ConfigError(
                f"config.compare.post_hoc_arms: {name} was not trained in the selection ({status}); remove it."
            )
        arms.append(selection.trained[name])
    return arms


def run_confirmation(config: ml_collections.ConfigDict, workdir: str, selection: Selection) -> list[dict[str, Any]]:
    """Trains each selected arm (and each post hoc arm) on the confirmation seeds, evaluates it once on the test
    splits, writes the report."""
    compare = config.compare
    targets = phase_targets(config, CONFIRMATION)
    families = selection.log["families"]
    arms = [
        (confirmation_label(family, stand_in=bool(entry.get("stand_in"))), family, selection.selected[family])
        for family, entry in families.items()
        if family in selection.selected
    ]
    stand_ins = [label for label, family, _ in arms if families[family].get("stand_in")]
    post_hoc = [(post_hoc_label(arm.name), arm.family, arm) for arm in post_hoc_arms(config, selection)]
    arms += post_hoc
    records = []
    for label, _, arm in arms:
        for seed in compare.confirmation_seeds:
            record = protocol_record(config, workdir, arm, seed, CONFIRMATION, targets)
            records.append({**record, "method": label})
    labels = [label for label, _, _ in arms]
    with open(os.path.join(workdir, "confirmation.json"), "w") as file:
        json.dump({"families": selection.log["families"], "records": records}, file, indent=2)
    report = render_confirmation_report(
        records,
        log=selection.log,
        title=f"Protocol confirmation on {config.dataset.name}",
        method_order=labels,
        families={label: family for label, family, _ in arms},
        post_hoc=[label for label, _, _ in post_hoc] + stand_ins,
        notes=compare.notes,
    )
    with open(os.path.join(workdir, "confirmation.md"), "w") as file:
        file.write(report)
    write_plots(records, workdir, labels)
    return records


def few_shot_curves(records: list[dict[str, Any]]) -> dict[str, dict[str, list[tuple[int, dict]]]]:
    """Task -> method -> [(shots, summary over seeds)]: each few-shot target, the within-concept mean and worst."""
    collected: dict[str, dict[str, dict[int, dict[int, float]]]] = {}

    def add(task: str, method: str, shots: str, seed: int, value: float) -> None:
        collected.setdefault(task, {}).setdefault(method, {}).setdefault(int(shots), {})[seed] = value

    for record in records:
        method, seed = record["method"], record["seed"]
        for target, result in record["targets"].items():
            for shots, few_shot in result["few_shot"].items():
                add(target, method, shots, seed, few_shot["mean"])
        for shots, tasks in record["within_concept"].items():
            add("within-concept mean", method, shots, seed, tasks["mean"]["mean"])
            add("within-concept worst", method, shots, seed, tasks["worst"]["mean"])
    return {
        task: {
            method: [(shots, summarise(by_seed)) for shots, by_seed in sorted(by_shots.items())]
            for method, by_shots in by_method.items()
        }
        for task, by_method in collected.items()
    }


def write_plots(records: list[dict[str, Any]], workdir: str, labels: list[str]) -> None:
    """Per-concept accuracy, p over training (first seed), few-shot curves and transfer accuracy, as PNGs."""
    plots.plot_per_concept_accuracy(records, os.path.join(workdir, "per_concept_accuracy.png"), method_order=labels)
    plots.plot_transfer_accuracy(records, os.path.join(workdir, "transfer_accuracy.png"), method_order=labels)
    first_seed = min(record["seed"] for record in records)
    histories = {r["method"]: r["concept_distribution"] for r in records if r["seed"] == first_seed}
    histories = {method: history for method, history in histories.items() if history}
    if histories:
        concept_names = list(records[0]["source"]["per_concept_accuracy"])
        plots.plot_concept_distribution(
            histories, os.path.join(workdir, "concept_distribution.png"), concept_names=concept_names
        )
    curves = few_shot_curves(records)
    if curves:
        plots.plot_few_shot_curves(curves, os.path.join(workdir, "few_shot_curves.png"))


def run_protocol(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
    """Selection, then confirmation; returns the confirmation records."""
    os.makedirs(workdir, exist_ok=True)
    WorkDir(workdir).record_config(config, step=0)
    return run_confirmation(config, workdir, run_selection(config, workdir))
