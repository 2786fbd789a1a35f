"""Results over methods and seeds -> summary statistics and one markdown report.

A record is one (method, seed) run:
    {"method": "hrrl", "seed": 0,
     "source": {"test_accuracy": .., "per_concept_accuracy": {name: acc},
                "worst_concept_accuracy": .., "best_concept_accuracy": ..},
     "targets": {"fashion_mnist_shift/lowres4": {"probe": .., "recall_at_1": ..}, ...}}
Accuracies are fractions in [0, 1]; the report prints them as percentages. Every cell is
"mean ± std (n)": the mean over seeds, the sample standard deviation (ddof = 1, shown when n >= 2) and
the number of seeds n.
"""

from __future__ import annotations

import math
import pathlib
from typing import Iterable, Mapping, Sequence

# (key in aggregate()["source"], column title); the gap is best - worst, computed per seed.
SOURCE_METRICS: tuple[tuple[str, str], ...] = (
    ("test_accuracy", "source top-1"),
    ("worst_concept_accuracy", "worst concept"),
    ("best_concept_accuracy", "best concept"),
    ("concept_gap", "gap (best − worst)"),
)
# (key in a record's target entry, column suffix).
TARGET_METRICS: tuple[tuple[str, str], ...] = (("probe", "probe"), ("recall_at_1", "R@1"))


def summarise(values_by_seed: Mapping[int, float]) -> dict:
    """{"mean", "std" (sample std, NaN when n < 2), "n", "by_seed"} of per-seed values."""
    values = list(values_by_seed.values())
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((value - mean) ** 2 for value in values) / (n - 1)) if n >= 2 else math.nan
    return {"mean": mean, "std": std, "n": n, "by_seed": dict(values_by_seed)}


def _checked_fraction(value, where: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{where} = {value} is not a fraction in [0, 1]; pass accuracies as fractions, not percent.")
    return value


def _source_values(record: Mapping, where: str) -> tuple[dict[str, float], dict[str, float]]:
    """(source metrics, per-concept accuracies) of one record; worst/best/gap derived where missing."""
    source = record.get("source")
    if not isinstance(source, Mapping):
        raise ValueError(f"{where} has no 'source' mapping; every record needs the source test results.")
    per_concept = {
        str(name): _checked_fraction(value, f"{where} per_concept_accuracy[{name!r}]")
        for name, value in source.get("per_concept_accuracy", {}).items()
    }
    metrics = {
        key: _checked_fraction(source[key], f"{where} source[{key!r}]")
        for key in ("test_accuracy", "worst_concept_accuracy", "best_concept_accuracy")
        if source.get(key) is not None
    }
    if per_concept:
        metrics.setdefault("worst_concept_accuracy", min(per_concept.values()))
        metrics.setdefault("best_concept_accuracy", max(per_concept.values()))
    if "worst_concept_accuracy" in metrics and "best_concept_accuracy" in metrics:
        metrics["concept_gap"] = metrics["best_concept_accuracy"] - metrics["worst_concept_accuracy"]
    return metrics, per_concept


def aggregate(records: Iterable[Mapping]) -> dict:
    """Summaries per method, in order of first appearance:

        {method: {"seeds": [...],
                  "source": {metric: summary},             # SOURCE_METRICS keys
                  "per_concept_accuracy": {concept: summary},
                  "targets": {target: {metric: summary}}}}   # TARGET_METRICS keys present in records

    where each summary is ``summarise``'s dict. A (method, seed) pair may appear only once.
    """
    collected: dict[str, dict] = {}
    for position, record in enumerate(records):
        where = f"record {position}"
        if "method" not in record or "seed" not in record:
            raise ValueError(f"{where} needs 'method' and 'seed' keys; it has {sorted(record)}.")
        method, seed = str(record["method"]), record["seed"]
        where = f"record {position} ({method}, seed {seed})"
        entry = collected.setdefault(method, {"seeds": [], "source": {}, "per_concept_accuracy": {}, "targets": {}})
        if seed in entry["seeds"]:
            raise ValueError(f"{where} repeats a (method, seed) pair; give each run of a method its own seed.")
        entry["seeds"].append(seed)
        metrics, per_concept = _source_values(record, where)
        for key, value in metrics.items():
            entry["source"].setdefault(key, {})[seed] = value
        for concept, value in per_concept.items():
            entry["per_concept_accuracy"].setdefault(concept, {})[seed] = value
        for target, results in record.get("targets", {}).items():
            for key, _ in TARGET_METRICS:
                if results.get(key) is not None:
                    value = _checked_fraction(results[key], f"{where} targets[{target!r}][{key!r}]")
                    entry["targets"].setdefault(target, {}).setdefault(key, {})[seed] = value

    def summarise_tree(tree):
        if tree and all(isinstance(value, float) for value in tree.values()):
            return summarise(tree)
        return {key: summarise_tree(value) for key, value in tree.items()}

    return {
        method: {"seeds": entry["seeds"], **{part: summarise_tree(entry[part]) for part in entry if part != "seeds"}}
        for method, entry in collected.items()
    }


def concept_names(aggregated: Mapping) -> list[str]:
    """Concepts of all methods, in order of first appearance."""
    return list(dict.fromkeys(concept for entry in aggregated.values() for concept in entry["per_concept_accuracy"]))


def target_names(aggregated: Mapping) -> list[str]:
    """Targets of all methods, in order of first appearance."""
    return list(dict.fromkeys(target for entry in aggregated.values() for target in entry["targets"]))


def ordered_methods(aggregated: Mapping, method_order: Sequence[str] | None = None) -> list[str]:
    """``method_order`` first, then the other methods in order of first appearance."""
    method_order = list(method_order or ())
    unknown = [method for method in method_order if method not in aggregated]
    if unknown:
        raise ValueError(f"method_order names {unknown}, which have no records; methods present: {list(aggregated)}.")
    return method_order + [method for method in aggregated if method not in method_order]


def paired_difference(method_summary: Mapping, reference_summary: Mapping) -> dict:
    """Difference method − reference of one metric, with its spread.

    Paired when the two share at least two seeds: mean and sample std of the per-seed differences over
    the shared seeds, n = shared seeds. Otherwise unpaired: difference of the means, with the combined
    std sqrt(s_method² + s_reference²) (the spread of one run's difference, comparable to the paired
    std; NaN unless both have n >= 2).

    Returns:
      {"mean", "std", "n" (shared seeds), "paired", "n_method", "n_reference"}.
    """
    shared = [seed for seed in method_summary["by_seed"] if seed in reference_summary["by_seed"]]
    if len(shared) >= 2:
        differences = summarise(
            {seed: method_summary["by_seed"][seed] - reference_summary["by_seed"][seed] for seed in shared}
        )
        mean, std, paired = differences["mean"], differences["std"], True
    else:
        mean = method_summary["mean"] - reference_summary["mean"]
        std = math.sqrt(method_summary["std"] ** 2 + reference_summary["std"] ** 2)
        paired = False
    return {
        "mean": mean,
        "std": std,
        "n": len(shared),
        "paired": paired,
        "n_method": method_summary["n"],
        "n_reference": reference_summary["n"],
    }


def format_cell(summary: Mapping | None, decimals: int = 2) -> str:
    """'mean ± std (n)' in percent, e.g. '92.53 ± 0.41 (3)'; 'mean (1)' for one seed; '–' when missing."""
    if summary is None:
        return "–"
    mean = f"{100 * summary['mean']:.{decimals}f}"
    if math.isnan(summary["std"]):
        return f"{mean} ({summary['n']})"
    return f"{mean} ± {100 * summary['std']:.{decimals}f} ({summary['n']})"


def format_difference(difference: Mapping, decimals: int = 2) -> str:
    """'+2.90 ± 0.50 (3 paired)' or '+2.90 ± 0.71 (3 vs 2)' in percentage points."""
    mean = f"{100 * difference['mean']:+.{decimals}f}"
    spread = "" if math.isnan(difference["std"]) else f" ± {100 * difference['std']:.{decimals}f}"
    count = (
        f"{difference['n']} paired"
        if difference["paired"]
        else f"{difference['n_method']} vs {difference['n_reference']}"
    )
    return f"{mean}{spread} ({count})"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a markdown table (a `|` inside a cell escaped)."""

    def line(cells):
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return [line(header), "|" + "|".join(" --- " for _ in header) + "|", *(line(row) for row in rows)]


def _main_table(aggregated: Mapping, methods: Sequence[str], decimals: int) -> list[str]:
    target_columns = [
        (target, key, f"{target} {title}")
        for target in target_names(aggregated)
        for key, title in TARGET_METRICS
        if any(key in aggregated[method]["targets"].get(target, {}) for method in methods)
    ]
    header = ["method", *(title for _, title in SOURCE_METRICS), *(title for _, _, title in target_columns)]
    rows = [
        [
            method,
            *(format_cell(aggregated[method]["source"].get(key), decimals) for key, _ in SOURCE_METRICS),
            *(
                format_cell(aggregated[method]["targets"].get(target, {}).get(key), decimals)
                for target, key, _ in target_columns
            ),
        ]
        for method in methods
    ]
    return markdown_table(header, rows)


def _per_concept_table(aggregated: Mapping, methods: Sequence[str], decimals: int) -> list[str]:
    concepts = concept_names(aggregated)
    rows = [
        [method, *(format_cell(aggregated[method]["per_concept_accuracy"].get(c), decimals) for c in concepts)]
        for method in methods
    ]
    return markdown_table(["method", *concepts], rows)


def _difference_table(aggregated: Mapping, methods: Sequence[str], reference: str, decimals: int) -> list[str]:
    rows = []
    for method in methods:
        if method == reference:
            continue
        cells = []
        for key, _ in SOURCE_METRICS:
            method_summary = aggregated[method]["source"].get(key)
            reference_summary = aggregated[reference]["source"].get(key)
            missing = method_summary is None or reference_summary is None
            cells.append(
                "–" if missing else format_difference(paired_difference(method_summary, reference_summary), decimals)
            )
        rows.append([method, *cells])
    return markdown_table([f"method − {reference}", *(f"Δ {title}" for _, title in SOURCE_METRICS)], rows)


def render_report(
    records: Iterable[Mapping],
    *,
    title: str,
    notes: str = "",
    method_order: Sequence[str] | None = None,
    reference_methods: Sequence[str] = ("erm",),
    decimals: int = 2,
) -> str:
    """The markdown report: main table, per-concept table, differences vs each reference method, notes."""
    aggregated = aggregate(records)
    if not aggregated:
        raise ValueError("no records to report; pass at least one (method, seed) result.")
    methods = ordered_methods(aggregated, method_order)
    missing_references = [reference for reference in reference_methods if reference not in aggregated]
    if missing_references:
        raise ValueError(
            f"reference methods {missing_references} have no records; methods present: {methods}. "
            "Pass reference_methods naming methods that were run."
        )
    lines = [
        f"# {title}",
        "",
        "Accuracies in percent. Each cell: mean ± sample std over seeds (number of seeds); the std is shown "
        "when there are at least two seeds. The gap is best − worst concept accuracy, per seed.",
        "",
        "## Source and transfer accuracy",
        "",
        *_main_table(aggregated, methods, decimals),
    ]
    if concept_names(aggregated):
        lines += ["", "## Source accuracy per concept", "", *_per_concept_table(aggregated, methods, decimals)]
    for reference in reference_methods:
        lines += [
            "",
            f"## Difference vs {reference}",
            "",
            f"Percentage points, method − {reference}. Paired over shared seeds (mean ± std of the per-seed "
            "differences) where at least two seeds match, else difference of the means ± the combined std "
            "sqrt(s₁² + s₂²), marked 'n₁ vs n₂'.",
            "",
            *_difference_table(aggregated, methods, reference, decimals),
        ]
    if notes:
        lines += ["", "## Notes", "", notes.strip()]
    return "\n".join(lines) + "\n"


def write_report(
    records: Iterable[Mapping],
    path: str | pathlib.Path,
    *,
    title: str,
    notes: str = "",
    method_order: Sequence[str] | None = None,
    reference_methods: Sequence[str] = ("erm",),
    decimals: int = 2,
) -> str:
    """Writes ``render_report``'s markdown to ``path`` (parent folders created) and returns it."""
    markdown = render_report(
        records,
        title=title,
        notes=notes,
        method_order=method_order,
        reference_methods=reference_methods,
        decimals=decimals,
    )
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown, encoding="utf-8")
    return markdown
