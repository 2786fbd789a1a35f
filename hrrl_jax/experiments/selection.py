"""The protocol's selection rule, fixed before any run: a validation score under a source-accuracy constraint.

Score of an arm on one seed: the mean over levels (example level: the shifted source classes; concept level: new
classes and data sets) of the mean `compare.selection_metric` over that level's targets, on validation data; over
several selection seeds, the mean of the per-seed scores. An arm is selectable when its source-validation top-1
(mean over the selection seeds) is at least the best ERM arm's minus `compare.top1_tolerance`. In each family the
selectable arm of the highest score is selected; scores within `compare.tie_tolerance` of the highest tie, and the
tie goes to the arm listed first. A family without a selectable arm has no selection (and is not confirmed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hrrl_jax.evaluate.protocol_report import target_level

# Comparisons of accuracies allow this much float rounding (an accuracy is a count over thousands of examples).
_ROUNDING = 1e-9


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


def selection_score(targets: Mapping[str, Mapping[str, Any]], target_names: Sequence[str], metric: str) -> float:
    """The mean over levels of the level means of `metric` (one seed's validation results)."""
    if not target_names:
        raise ValueError("the selection score needs at least one target.")
    return float(np.mean(list(level_means(targets, target_names, metric).values())))


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
