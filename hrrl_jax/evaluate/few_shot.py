"""Few-shot classification of frozen features: nearest class mean over fixed support draws (SimpleShot).

A k-shot task draws k support examples of every class from a pool (a target's training features) and classifies
the queries (its evaluation features) by the nearest class mean, after centring every feature on the support set's
mean and L2-normalising it (SimpleShot, Wang et al. 2019). Nothing is fitted or tuned, so 1 shot is as
deterministic as 20. Draw d takes its support from default_rng([seed_base, d]) and the pool's labels alone: every
method, given the same pool, is scored on the same images. Accuracies are fractions; the spread is the sample
standard deviation over draws.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hrrl_jax.data import ConceptHierarchy
from hrrl_jax.evaluate.concepts import concept_groups

# Norms below this count as this, so a feature equal to the centre stays finite (zero) instead of NaN.
_MIN_NORM = 1e-12


def support_draws(labels, *, shots: int, num_draws: int, seed_base: int) -> list[np.ndarray]:
    """Row indices of each draw's support set: `shots` distinct rows of every class of `labels`, classes ascending.

    Draw d uses default_rng([seed_base, d]) only, so the same labels give the same rows on every call.
    """
    labels = np.asarray(labels)
    if shots < 1 or num_draws < 1:
        raise ValueError(f"shots and num_draws must be positive; got shots={shots}, num_draws={num_draws}.")
    members = {int(label): np.flatnonzero(labels == label) for label in np.unique(labels)}
    short = {label: rows.size for label, rows in members.items() if rows.size < shots}
    if short:
        raise ValueError(
            f"{shots} shots per class need at least {shots} pool examples of every class; classes (label: count) "
            f"{short} have fewer. Use fewer shots or a larger pool."
        )
    draws = []
    for draw in range(num_draws):
        rng = np.random.default_rng([seed_base, draw])
        draws.append(np.concatenate([rng.choice(rows, shots, replace=False) for rows in members.values()]))
    return draws


def _normalised(features: np.ndarray) -> np.ndarray:
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), _MIN_NORM)


def nearest_class_mean_predictions(support_features, support_labels, query_features) -> np.ndarray:
    """Each query's class: the support class whose mean is nearest, on features centred on the support mean and
    L2-normalised (the class means are of the normalised support features; ties go to the lower label)."""
    support = np.asarray(support_features, np.float64)
    queries = np.asarray(query_features, np.float64)
    support_labels = np.asarray(support_labels)
    if support.ndim != 2 or queries.ndim != 2 or support.shape[1] != queries.shape[1]:
        raise ValueError(f"support {support.shape} and query {queries.shape} features must be (N, d) with one d.")
    if support_labels.shape != (support.shape[0],):
        raise ValueError(f"support labels must have shape ({support.shape[0]},); got {support_labels.shape}.")
    centre = support.mean(axis=0)
    support, queries = _normalised(support - centre), _normalised(queries - centre)
    classes = np.unique(support_labels)
    means = np.stack([support[support_labels == label].mean(axis=0) for label in classes])
    squared_distances = (
        np.sum(queries**2, axis=1, keepdims=True) - 2 * queries @ means.T + np.sum(means**2, axis=1)[None, :]
    )
    return classes[np.argmin(squared_distances, axis=1)]


def few_shot_accuracy(
    pool_features,
    pool_labels,
    query_features,
    query_labels,
    *,
    shots: int,
    num_draws: int = 20,
    seed_base: int = 0,
) -> dict[str, Any]:
    """Nearest-class-mean accuracy of `shots`-shot support sets drawn from the pool, on every query, per draw.

    Returns:
      {"shots", "mean", "std" (sample std over draws; NaN for one draw), "accuracies": one per draw}.
    """
    pool_features, pool_labels = np.asarray(pool_features), np.asarray(pool_labels)
    query_labels = np.asarray(query_labels)
    if query_labels.size == 0:
        raise ValueError("no query examples: a few-shot accuracy needs at least one query.")
    unknown = sorted(set(np.unique(query_labels).tolist()) - set(np.unique(pool_labels).tolist()))
    if unknown:
        raise ValueError(f"query labels {unknown} have no pool example to draw a support set from.")
    accuracies = [
        float(
            np.mean(
                nearest_class_mean_predictions(pool_features[rows], pool_labels[rows], query_features) == query_labels
            )
        )
        for rows in support_draws(pool_labels, shots=shots, num_draws=num_draws, seed_base=seed_base)
    ]
    return {"shots": shots, **_spread(accuracies)}


def _spread(accuracies: list[float]) -> dict[str, Any]:
    std = float(np.std(accuracies, ddof=1)) if len(accuracies) >= 2 else float("nan")
    return {"mean": float(np.mean(accuracies)), "std": std, "accuracies": accuracies}


def within_concept_few_shot(
    pool_features,
    pool_labels,
    query_features,
    query_labels,
    hierarchy: ConceptHierarchy,
    *,
    shots: int,
    num_draws: int = 20,
    seed_base: int = 0,
) -> dict[str, Any]:
    """`few_shot_accuracy` of each concept's task (its classes only, `concept_groups`), their mean, the worst.

    Returns:
      {"shots", "per_concept": {concept: few_shot_accuracy dict}, "mean": the per-draw mean over the concepts as
      {"mean", "std", "accuracies"}, "worst_concept": the concept of lowest mean accuracy (ties: the first),
      "worst": that concept's {"mean", "std", "accuracies"}}.
    """
    pool_features, pool_labels = np.asarray(pool_features), np.asarray(pool_labels)
    query_features, query_labels = np.asarray(query_features), np.asarray(query_labels)
    groups = concept_groups(hierarchy)
    if not groups:
        raise ValueError(f"no concept of {hierarchy.concept_names} has two classes: there is no within-concept task.")
    per_concept = {}
    for name, classes in groups.items():
        in_pool, in_queries = np.isin(pool_labels, classes), np.isin(query_labels, classes)
        per_concept[name] = few_shot_accuracy(
            pool_features[in_pool],
            pool_labels[in_pool],
            query_features[in_queries],
            query_labels[in_queries],
            shots=shots,
            num_draws=num_draws,
            seed_base=seed_base,
        )
    mean_by_draw = np.mean([result["accuracies"] for result in per_concept.values()], axis=0)
    worst = min(per_concept, key=lambda name: per_concept[name]["mean"])
    return {
        "shots": shots,
        "per_concept": per_concept,
        "mean": _spread([float(value) for value in mean_by_draw]),
        "worst_concept": worst,
        "worst": {key: per_concept[worst][key] for key in ("mean", "std", "accuracies")},
    }
