"""Test-set evaluation during and after training: top-1 and per-concept accuracy, worst and best concept."""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from hrrl_jax.data import ConceptHierarchy, InputPipeline


def evaluate(
    jitted_eval_step: Callable[..., dict[str, jax.Array]],
    state: Any,
    pipeline: InputPipeline,
    hierarchy: ConceptHierarchy,
    *,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any] | None:
    """One pass over the eval pipeline; every example counted once (padding masked in the step).

    Returns None, unfinished, as soon as `should_stop()` is true between two batches (a stop signal).
    """
    totals: dict[str, np.ndarray] | None = None
    for batch in pipeline.eval_batches():
        if should_stop():
            return None
        counts = jitted_eval_step(state, batch)
        totals = counts if totals is None else jax.tree_util.tree_map(lambda a, b: a + b, totals, counts)
    totals = jax.device_get(totals)
    return accuracy_summary(
        np.asarray(totals["correct_per_class"]),
        np.asarray(totals["count_per_class"]),
        hierarchy,
        loss_sum=float(totals["loss_sum"]),
    )


def accuracy_summary(
    correct_per_class: np.ndarray, count_per_class: np.ndarray, hierarchy: ConceptHierarchy, *, loss_sum: float
) -> dict[str, Any]:
    """Top-1, per-class and per-concept accuracy from per-class counts (concept = pooled over its classes)."""
    concept_of_class = np.asarray(hierarchy.concept_of_class)
    correct_per_concept = np.bincount(concept_of_class, correct_per_class, minlength=hierarchy.num_concepts)
    count_per_concept = np.bincount(concept_of_class, count_per_class, minlength=hierarchy.num_concepts)
    present = count_per_concept > 0
    per_concept = {
        name: float(correct_per_concept[k] / count_per_concept[k])
        for k, name in enumerate(hierarchy.concept_names)
        if present[k]
    }
    per_class = {
        name: float(correct_per_class[c] / count_per_class[c])
        for c, name in enumerate(hierarchy.class_names)
        if count_per_class[c] > 0
    }
    total = float(count_per_class.sum())
    worst = min(per_concept.values())
    best = max(per_concept.values())
    return {
        "test_accuracy": float(correct_per_class.sum() / total),
        "test_loss": loss_sum / total,
        "num_test_examples": int(total),
        "per_concept_accuracy": per_concept,
        "worst_concept_accuracy": worst,
        "worst_concept": min(per_concept, key=per_concept.get),
        "best_concept_accuracy": best,
        "best_concept": max(per_concept, key=per_concept.get),
        "concept_accuracy_gap": best - worst,
        "per_class_accuracy": per_class,
    }


def scalar_summary(results: dict[str, Any]) -> dict[str, float]:
    """The scalar entries of `accuracy_summary` plus one `concept/<name>` entry per concept, for logging."""
    scalars = {name: value for name, value in results.items() if isinstance(value, (int, float))}
    scalars.update({f"concept/{name}": value for name, value in results["per_concept_accuracy"].items()})
    return scalars


def format_results_table(results: dict[str, Any], *, title: str) -> str:
    """A plain-text table of the final results for the console; with an adversary, its final concept distribution
    beside each concept's accuracy and the weight ESS."""
    distribution = results.get("concept_distribution")
    rows = [("top-1", results["test_accuracy"], None)]
    rows += [
        (f"  {name}", value, None if distribution is None else distribution[name])
        for name, value in results["per_concept_accuracy"].items()
    ]
    rows += [
        (f"worst concept ({results['worst_concept']})", results["worst_concept_accuracy"], None),
        (f"best concept ({results['best_concept']})", results["best_concept_accuracy"], None),
        ("best - worst", results["concept_accuracy_gap"], None),
    ]
    width = max(len(name) for name, _, _ in rows) + 2
    lines = [f"Results: {title} (step {results['step']}, {results['num_test_examples']} test examples)"]
    if distribution is not None:
        lines.append(f"{'':<{width}}{'acc':>7}  final p")
    lines += [
        f"{name:<{width}}{100 * value:6.2f}%" + ("" if share is None else f"  {share:.3f}")
        for name, value, share in rows
    ]
    if "weight_ess" in results:
        lines.append(f"weight ESS (last log window): {results['weight_ess']:.3f}")
    return "\n".join(lines)
