"""PNG figures of a comparison: per-concept accuracy bars, the concept distribution p over training,
transfer accuracy per target, few-shot accuracy against shots.

Figures are drawn on ``matplotlib.figure.Figure`` objects rendered by the Agg canvas: no pyplot, no
display and no global backend switch, so importing this module changes nothing for the caller. Each
method keeps one colour across all figures. Values come from ``report.aggregate``: bars are means over
seeds in percent, error bars the sample std (none with one seed).
"""

from __future__ import annotations

import math
import pathlib
from typing import Iterable, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from hrrl_jax.evaluate import report

_COLOURS = ("tab:blue", "tab:red", "tab:green", "tab:olive", "tab:purple", "tab:orange", "tab:cyan", "tab:brown")


def _colour(position: int) -> str:
    return _COLOURS[position % len(_COLOURS)]


def _save(figure: Figure, path: str | pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def _grouped_bars(axes, groups: Sequence[str], methods: Sequence[str], summary_of) -> None:
    """One group of bars per entry of ``groups``, one bar per method; ``summary_of(method, group)`` gives
    a ``report.summarise`` dict or None (no bar)."""
    width = 0.8 / len(methods)
    positions = np.arange(len(groups))
    for index, method in enumerate(methods):
        summaries = [summary_of(method, group) for group in groups]
        means = [100 * s["mean"] if s else math.nan for s in summaries]
        errors = [100 * s["std"] if s and not math.isnan(s["std"]) else 0.0 for s in summaries]
        axes.bar(
            positions + (index - (len(methods) - 1) / 2) * width,
            means,
            width,
            yerr=errors,
            capsize=2,
            color=_colour(index),
            label=method,
        )
    axes.set_xticks(positions)
    long_names = max(len(group) for group in groups) > 6
    axes.set_xticklabels(groups, rotation=30 if long_names else 0, ha="right" if long_names else "center")
    axes.set_ylim(0, 100)
    axes.grid(axis="y", alpha=0.3)


def plot_per_concept_accuracy(
    records: Iterable[Mapping],
    path: str | pathlib.Path,
    *,
    method_order: Sequence[str] | None = None,
    sort_by_method: str | None = None,
    title: str = "Source test accuracy per concept",
) -> pathlib.Path:
    """Grouped bars of per-concept source accuracy, one bar per method (mean ± std over seeds).

    Concepts keep their order of appearance, or with ``sort_by_method`` are sorted by that method's
    mean accuracy, ascending, as in the paper's figure.
    """
    aggregated = report.aggregate(records)
    methods = report.ordered_methods(aggregated, method_order)
    concepts = report.concept_names(aggregated)
    if not concepts:
        raise ValueError("no record has source.per_concept_accuracy; nothing to plot per concept.")
    if sort_by_method is not None:
        if sort_by_method not in aggregated:
            raise ValueError(f"sort_by_method={sort_by_method!r} has no records; methods present: {methods}.")
        per_concept = aggregated[sort_by_method]["per_concept_accuracy"]
        concepts.sort(key=lambda concept: per_concept[concept]["mean"] if concept in per_concept else math.inf)

    width = max(6.0, 0.9 * len(concepts) * max(1.0, len(methods) / 3)) + 1.5  # + room for the legend
    figure = Figure(figsize=(width, 4.5), layout="constrained")
    axes = figure.add_subplot()
    _grouped_bars(axes, concepts, methods, lambda m, c: aggregated[m]["per_concept_accuracy"].get(c))
    axes.set_xlabel("Concept")
    axes.set_ylabel("Test accuracy (%)")
    axes.set_title(title)
    figure.legend(*axes.get_legend_handles_labels(), loc="outside right upper", fontsize="small", title="method")
    return _save(figure, path)


def plot_transfer_accuracy(
    records: Iterable[Mapping],
    path: str | pathlib.Path,
    *,
    method_order: Sequence[str] | None = None,
    title: str = "Transfer accuracy of frozen features",
) -> pathlib.Path:
    """Grouped bars per target, one bar per method (mean ± std over seeds): one panel for the linear
    probe and, where any target has it, one for retrieval Recall@1."""
    aggregated = report.aggregate(records)
    methods = report.ordered_methods(aggregated, method_order)
    panels = []
    for key, name in (("probe", "Linear probe accuracy (%)"), ("recall_at_1", "Recall@1 (%)")):
        targets = [
            target
            for target in report.target_names(aggregated)
            if any(key in aggregated[method]["targets"].get(target, {}) for method in methods)
        ]
        if targets:
            panels.append((key, name, targets))
    if not panels:
        raise ValueError("no record has target results (targets.<name>.probe or recall_at_1); nothing to plot.")

    widths = [len(targets) for _, _, targets in panels]
    figure = Figure(figsize=(max(6.0, 1.1 * sum(widths) + 2) + 1.5, 4.8), layout="constrained")  # + legend
    all_axes = figure.subplots(1, len(panels), squeeze=False, width_ratios=widths)[0]
    for axes, (key, name, targets) in zip(all_axes, panels):
        _grouped_bars(axes, targets, methods, lambda m, t, key=key: aggregated[m]["targets"].get(t, {}).get(key))
        axes.set_xlabel("Target")
        axes.set_ylabel(name)
    figure.legend(*all_axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize="small", title="method")
    figure.suptitle(title)
    return _save(figure, path)


def plot_concept_distribution(
    histories: Mapping[str, Sequence[tuple[int, Sequence[float]]]],
    path: str | pathlib.Path,
    *,
    concept_names: Sequence[str],
    title: str = "Concept distribution p over training",
) -> pathlib.Path:
    """One panel per method: each concept's weight p_k against the training step.

    Args:
      histories: method -> [(step, p vector of length K), ...], e.g. from the training metrics log.
      concept_names: the K concept names, in the order of the p vectors.
    """
    if not histories:
        raise ValueError("histories is empty; pass method -> [(step, p), ...] for at least one method.")
    figure = Figure(figsize=(4.0 * len(histories) + 1.5, 3.8), layout="constrained")
    all_axes = figure.subplots(1, len(histories), squeeze=False, sharey=True)[0]
    for axes, (method, history) in zip(all_axes, histories.items()):
        steps = np.asarray([step for step, _ in history])
        weights = np.asarray([np.asarray(p, dtype=float) for _, p in history])
        if weights.ndim != 2 or weights.shape[1] != len(concept_names):
            raise ValueError(
                f"{method}: every p must have one entry per concept ({len(concept_names)}); "
                f"got an array of shape {weights.shape}."
            )
        for concept_index, concept in enumerate(concept_names):
            axes.plot(steps, weights[:, concept_index], color=_colour(concept_index), label=concept)
        axes.axhline(1.0 / len(concept_names), color="grey", linestyle=":", linewidth=1, label="uniform 1/K")
        axes.set_title(method)
        axes.set_xlabel("Training step")
        axes.set_ylim(0, 1)
        axes.grid(alpha=0.3)
    all_axes[0].set_ylabel("Concept weight p")
    figure.legend(
        *all_axes[0].get_legend_handles_labels(), loc="outside right center", fontsize="small", title="concept"
    )
    figure.suptitle(title)
    return _save(figure, path)


def plot_few_shot_curves(
    curves: Mapping[str, Mapping[str, Sequence[tuple[int, Mapping]]]],
    path: str | pathlib.Path,
    *,
    title: str = "Few-shot accuracy of frozen features (nearest class mean)",
) -> pathlib.Path:
    """One panel per task: accuracy against shots per class (log axis), one line per method.

    Args:
      curves: task -> method -> [(shots, summary), ...], each summary a ``report.summarise`` dict of
        accuracies over seeds (the line is the mean, the error bar the std over seeds).
    """
    if not curves:
        raise ValueError("curves is empty; pass task -> method -> [(shots, summary), ...] for at least one task.")
    methods = list(dict.fromkeys(method for by_method in curves.values() for method in by_method))
    figure = Figure(figsize=(3.6 * len(curves) + 1.5, 3.6), layout="constrained")
    all_axes = figure.subplots(1, len(curves), squeeze=False)[0]
    for axes, (task, by_method) in zip(all_axes, curves.items()):
        for method, points in by_method.items():
            points = sorted(points, key=lambda point: point[0])
            shots = [k for k, _ in points]
            means = [100 * summary["mean"] for _, summary in points]
            errors = [0.0 if math.isnan(summary["std"]) else 100 * summary["std"] for _, summary in points]
            axes.errorbar(
                shots, means, yerr=errors, marker="o", capsize=2, color=_colour(methods.index(method)), label=method
            )
        axes.set_xscale("log")
        axes.set_xticks(sorted({k for points in by_method.values() for k, _ in points}))
        axes.set_xticks([], minor=True)  # Within one decade the log scale would label minor ticks (6x10^0).
        axes.get_xaxis().set_major_formatter("{x:g}")
        axes.set_title(task, fontsize="medium")
        axes.set_xlabel("Shots per class")
        axes.grid(alpha=0.3)
    all_axes[0].set_ylabel("Accuracy (%)")
    handles, labels = all_axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", fontsize="small", title="method")
    figure.suptitle(title)
    return _save(figure, path)
