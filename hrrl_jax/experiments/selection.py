"""The protocol's selection rule, fixed before any run: a validation score under a source-accuracy constraint.

Score of an arm on one seed (`compare.selection_score`, `selection_score` gives each): by default the mean over
levels (example level: the shifted source classes; concept level: new classes and data sets) of the mean
`compare.selection_metric` over that level's targets, on validation data; or the mean of those level means and the
arm's source-validation worst-concept accuracy, three equal terms. Over several selection seeds, the mean of the
per-seed scores. An arm is selectable when its source-validation top-1 (mean over the selection seeds) is at least the
best ERM arm's minus `compare.top1_tolerance`. In each family the selectable arm of the highest score is selected;
scores within `compare.tie_tolerance` of the highest tie, and the tie goes to the arm listed first. A family without a
selectable arm has no selection (and is not confirmed), unless `compare.stand_in_unselectable`: then its arm of the
highest score (the same tie rule) stands in for it, is combined and confirmed in its place, and is reported as a
stand-in outside the verdict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hrrl_jax.evaluate.protocol_report import target_level
from hrrl_jax.schema import SELECTION_SCORES

# Comparisons of accuracies allow their float32 rounding: an accuracy is count / N stored in float32 (relative error
# at most eps/2), so two equal fractions may differ by up to eps; distinct counts over N <= 10^6 examples differ by
# at least 1e-6, far more.
_ROUNDING = float(np.finfo(np.float32).eps)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """An arm as the rule sees it: its score and source-validation top-1, in the order the arms are listed."""

    name: str
    score: float
    top1: float


def level_means(targets: Mapping[str, Mapping[str, Any]], target_names: Sequence[str], metric: str) -> dict:
    """{level: mean of `metric` over the level's targets} for the levels that have targets, example level first."""
    by_level: dict[str, list[float]] = {"example": [], "concept": []}
    for name in target_names:
        by_level[target_level(name)].append(float(targets[name][metric]))
    return {level: float(np.mean(values)) for level, values in by_level.items() if values}


def selection_score(
    targets: Mapping[str, Mapping[str, Any]],
    target_names: Sequence[str],
    metric: str,
    *,
    score: str = "levels",
    source_worst_concept: float | None = None,
) -> float:
    """One seed's validation score of an arm under the rule `score` (one of hrrl_jax.schema.SELECTION_SCORES).

    With m_example and m_concept the means of `metric` over the example-level and concept-level targets:

      levels:                    (m_example + m_concept) / 2
      levels_and_worst_concept:  (m_example + m_concept + w) / 3, w the source-validation worst-concept accuracy

    A level without targets drops out (its term is not counted): `levels` is then the one level mean, and
    `levels_and_worst_concept` (m + w) / 2.

    Raises:
      ValueError: no target, an unknown rule, or `levels_and_worst_concept` without `source_worst_concept`.
    """
    if not target_names:
        raise ValueError("the selection score needs at least one target.")
    terms = list(level_means(targets, target_names, metric).values())
    if score == "levels_and_worst_concept":
        if source_worst_concept is None:
            raise ValueError("the levels_and_worst_concept score needs the source-validation worst-concept accuracy.")
        terms.append(float(source_worst_concept))
    elif score != "levels":
        raise ValueError(f"selection score {score!r} is not known; choose one of {SELECTION_SCORES}.")
    return float(np.mean(terms))


def score_formula(score: str, targets_by_level: Mapping[str, Sequence[str]], metric: str) -> str:
    """The rule `score` in words, as selection.json records it and selection.md states it."""
    levels_text = "; ".join(f"{level}: {', '.join(names)}" for level, names in targets_by_level.items())
    if score == "levels":
        return f"the mean over levels ({levels_text}) of the mean validation `{metric}` of the level's targets"
    if score == "levels_and_worst_concept":
        level_terms = " + ".join(f"{level} mean" for level in targets_by_level)
        return (
            f"the mean of {len(targets_by_level) + 1} equal terms, ({level_terms} + worst concept) / "
            f"{len(targets_by_level) + 1}: each level's mean validation `{metric}` over its targets ({levels_text}) "
            "and the arm's source-validation worst-concept accuracy"
        )
    raise ValueError(f"selection score {score!r} is not known; choose one of {SELECTION_SCORES}.")


def top1_threshold(erm_top1: Sequence[float], tolerance: float) -> float:
    """The least source-validation top-1 a selectable arm may have: the best ERM arm's minus `tolerance`."""
    if not erm_top1:
        raise ValueError("the constraint needs the source-validation top-1 of at least one ERM arm.")
    return max(erm_top1) - tolerance


def is_selectable(top1: float, threshold: float) -> bool:
    """Whether a source-validation top-1 meets the constraint (up to float rounding)."""
    return top1 >= threshold - _ROUNDING


def select(candidates: Sequence[Candidate], *, threshold: float, tie_tolerance: float) -> str | None:
    """The name of the selected candidate of one family, or None if none is selectable."""
    selectable = [candidate for candidate in candidates if is_selectable(candidate.top1, threshold)]
    if not selectable:
        return None
    best = max(candidate.score for candidate in selectable)
    return next(c.name for c in selectable if c.score >= best - tie_tolerance - _ROUNDING)


def highest_score(candidates: Sequence[Candidate], *, tie_tolerance: float) -> str | None:
    """The name of the candidate of the highest score, constraint or not (ties as in `select`); None if none."""
    return select(candidates, threshold=-np.inf, tie_tolerance=tie_tolerance)
