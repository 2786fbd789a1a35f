"""Markdown of the selection protocol: the selection log (every arm on validation data) and the confirmation report.

A protocol record is one run: {"arm", "method" (the label, e.g. `hrrl*`), "seed", "source": the trainer's
results, "targets": {target: hrrl_jax.experiments.protocol_targets.evaluate_target's dict}, "within_concept":
{shots: hrrl_jax.evaluate.few_shot.within_concept_few_shot's dict}}. `record_measures` flattens one into named
accuracies by section (per-concept probe accuracy and the worst concept for the example-level targets, the shifts of
the source classes); the confirmation report gives each measure's mean ± std over seeds per method and the paired
differences between methods with 95 % t-intervals (bold where the interval excludes 0). Few-shot cells add the
draw-to-draw spread (the mean over seeds of the std over draws). Accuracies are fractions, printed in percent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from scipy import stats

from hrrl_jax.evaluate.report import markdown_table, paired_difference, summarise

SECTIONS = ("Source", "Targets", "Few-shot", "Within-concept few-shot", "Per concept")


def target_level(name: str) -> str:
    """`example` for a comparison target of the source classes under a shift (`shift/<s>`), else `concept`
    (new classes, another data set)."""
    return "example" if name.startswith("shift/") else "concept"


def record_measures(record: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """{section: {measure: accuracy}} of one record, sections in SECTIONS order (empty ones left out)."""
    source = record["source"]
    per_concept = source["per_concept_accuracy"]
    measures: dict[str, dict[str, float]] = {section: {} for section in SECTIONS}
    measures["Source"] = {
        "source top-1": source["test_accuracy"],
        "source worst concept": source["worst_concept_accuracy"],
        "source best concept": source["best_concept_accuracy"],
        "source gap (best − worst)": source["best_concept_accuracy"] - source["worst_concept_accuracy"],
    }
    measures["Per concept"] = {f"source: {concept}": value for concept, value in per_concept.items()}
    for target, result in record.get("targets", {}).items():
        measures["Targets"][f"{target} probe"] = result["probe"]
        if target_level(target) == "example":
            measures["Targets"][f"{target} probe worst concept"] = result["probe_worst_concept"]
            for concept, value in result["probe_per_concept"].items():
                measures["Per concept"][f"{target} probe: {concept}"] = value
        measures["Targets"][f"{target} R@1"] = result["recall_at_1"]
        measures["Targets"][f"{target} R@1 centred"] = result["recall_at_1_centred"]
        for shots, few_shot in result["few_shot"].items():
            measures["Few-shot"][f"{target} {shots}-shot"] = few_shot["mean"]
    for shots, tasks in record.get("within_concept", {}).items():
        section = measures["Within-concept few-shot"]
        section[f"{shots}-shot mean over concepts"] = tasks["mean"]["mean"]
        section[f"{shots}-shot worst concept"] = tasks["worst"]["mean"]
        for concept, result in tasks["per_concept"].items():
            section[f"{shots}-shot {concept}"] = result["mean"]
    return {section: values for section, values in measures.items() if values}


def draw_spreads(record: Mapping[str, Any]) -> dict[str, float]:
    """{measure: std over draws} of the few-shot measures of one record (names as in `record_measures`)."""
    spreads = {}
    for target, result in record.get("targets", {}).items():
        for shots, few_shot in result["few_shot"].items():
            spreads[f"{target} {shots}-shot"] = few_shot["std"]
    for shots, tasks in record.get("within_concept", {}).items():
        spreads[f"{shots}-shot mean over concepts"] = tasks["mean"]["std"]
        spreads[f"{shots}-shot worst concept"] = tasks["worst"]["std"]
        for concept, result in tasks["per_concept"].items():
            spreads[f"{shots}-shot {concept}"] = result["std"]
    return spreads


def t_interval(mean: float, std: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The two-sided Student-t interval mean ± t_{(1+confidence)/2, n−1} · std / √n; (NaN, NaN) when n < 2."""
    if n < 2 or math.isnan(std):
        return math.nan, math.nan
    half_width = stats.t.ppf((1 + confidence) / 2, n - 1) * std / math.sqrt(n)
    return mean - half_width, mean + half_width


def _summaries(records: Sequence[Mapping[str, Any]]) -> tuple[dict, dict, dict]:
    """({method: {measure: summary}}, {method: {measure: mean draw spread}}, {section: [measures in order]})."""
    values: dict[str, dict[str, dict[int, float]]] = {}
    spreads: dict[str, dict[str, list[float]]] = {}
    order: dict[str, list[str]] = {}
    for record in records:
        method = record["method"]
        for section, measures in record_measures(record).items():
            names = order.setdefault(section, [])
            for name, value in measures.items():
                if name not in names:
                    names.append(name)
                values.setdefault(method, {}).setdefault(name, {})[record["seed"]] = float(value)
        for name, spread in draw_spreads(record).items():
            spreads.setdefault(method, {}).setdefault(name, []).append(spread)
    summaries = {
        method: {name: summarise(by_seed) for name, by_seed in measures.items()} for method, measures in values.items()
    }
    mean_spreads = {
        method: {name: sum(values) / len(values) for name, values in measures.items()}
        for method, measures in spreads.items()
    }
    return summaries, mean_spreads, {section: order[section] for section in SECTIONS if section in order}


def _cell(summary: Mapping | None, spread: float | None) -> str:
    if summary is None:
        return "–"
    text = f"{100 * summary['mean']:.2f}"
    if not math.isnan(summary["std"]):
        text += f" ± {100 * summary['std']:.2f}"
    text += f" ({summary['n']})"
    if spread is not None and not math.isnan(spread):
        text += f"; draws ± {100 * spread:.2f}"
    return text


def _difference_cell(method: Mapping | None, reference: Mapping | None) -> str:
    """`+0.52 [−0.10, +1.14]`: percentage points, 95 % t-interval, paired over shared seeds; bold if it excludes 0."""
    if method is None or reference is None:
        return "–"
    difference = paired_difference(method, reference)
    if not difference["paired"]:
        return f"{100 * difference['mean']:+.2f} (unpaired)"
    low, high = t_interval(difference["mean"], difference["std"], difference["n"])
    text = f"{100 * difference['mean']:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"
    return f"**{text}**" if low > 0 or high < 0 else text


def comparisons(methods: Sequence[str], families: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(method, reference) pairs of the confirmation report, those whose labels are present: each vs erm*, each vs
    group_dro*, each arm of the hrrl family − el* and − cl* (what combining the levels adds to each level alone),
    el* − its control (the selected example level against random perturbations of its strength, the arm of family
    `control`, selected or post hoc) and hrrl* − the arm of family `control_hrrl` (the same for HRRL*).

    `families` maps a label to its family (default: the label without its `*`)."""
    families = families or {}

    def family_of(method: str) -> str:
        return families.get(method, method.rstrip("*"))

    def starred(family: str) -> str | None:
        """The label of the family's selected arm, or of the arm that stands in for it."""
        return next((m for m in methods if m.startswith(f"{family}*") and family_of(m) == family), None)

    erm = starred("erm")
    pairs = []
    for reference in (erm, starred("group_dro")):
        if reference is not None:
            pairs += [(method, reference) for method in methods if method not in (reference, erm)]
    hrrl = [method for method in methods if family_of(method) == "hrrl"]
    for reference in (starred("el"), starred("cl")):
        if reference is not None:
            pairs += [(method, reference) for method in hrrl]
    for family, control_family in (("el", "control"), ("hrrl", "control_hrrl")):
        controls = [method for method in methods if family_of(method) == control_family]
        if starred(family) is not None:
            pairs += [(starred(family), control) for control in controls]
    return pairs


def render_confirmation_report(
    records: Sequence[Mapping[str, Any]],
    *,
    log: Mapping[str, Any],
    title: str,
    method_order: Sequence[str],
    families: Mapping[str, str] | None = None,
    post_hoc: Sequence[str] = (),
    notes: str = "",
) -> str:
    """The confirmation report: what was selected (and from how many configurations), each measure per method,
    and the paired differences with their 95 % t-intervals. `families` maps each label to its method family;
    `post_hoc` names the labels of arms confirmed although the rule did not select them."""
    if not records:
        raise ValueError("no confirmation records: no family had a selectable arm.")
    summaries, spreads, sections = _summaries(records)
    methods = [method for method in method_order if method in summaries]
    seeds = sorted({record["seed"] for record in records})
    lines = [
        f"# {title}",
        "",
        f"Each family's arm selected on validation data (seeds {list(log['rule']['selection_seeds'])}), trained on "
        f"seeds {seeds} and evaluated once on the test splits. Accuracies in percent: mean ± sample std over seeds "
        "(number of seeds); few-shot cells add the mean over seeds of the std over draws.",
        "",
        "## Selected arms",
        "",
        *markdown_table(
            ["family", "configurations tried", "selected arm", "settings", "validation score"],
            [
                [
                    family,
                    entry["tried"],
                    _family_choice(entry),
                    entry["settings"] or "–",
                    "–" if entry["score"] is None else f"{100 * entry['score']:.2f}",
                ]
                for family, entry in log["families"].items()
            ],
        ),
    ]
    shown = [label for label in post_hoc if label in methods]
    if shown:
        lines += [
            "",
            f"Post hoc: {', '.join(shown)}, not selected by the rule and confirmed for information only; the "
            "protocol's verdict concerns the arms the rule selected.",
        ]
    for section, names in sections.items():
        lines += ["", f"## {section}", ""]
        rows = [
            [name, *(_cell(summaries[m].get(name), spreads.get(m, {}).get(name)) for m in methods)] for name in names
        ]
        lines += markdown_table(["measure", *methods], rows)
    pairs = comparisons(methods, families)
    if pairs:
        lines += [
            "",
            "## Paired differences",
            "",
            "Percentage points, method − reference, over the seeds both have: mean [95 % t-interval]; bold where "
            "the interval excludes 0.",
        ]
        for section, names in sections.items():
            lines += ["", f"### {section}", ""]
            rows = [
                [name, *(_difference_cell(summaries[m].get(name), summaries[r].get(name)) for m, r in pairs)]
                for name in names
            ]
            lines += markdown_table(["measure", *(f"{m} − {r}" for m, r in pairs)], rows)
    if notes:
        lines += ["", "## Notes", "", notes.strip()]
    return "\n".join(lines) + "\n"


def render_selection_log(log: Mapping[str, Any]) -> str:
    """The selection log: the rule, every arm's validation figures and score, each family's choice."""
    rule = log["rule"]
    targets = [target for level_targets in rule["targets_by_level"].values() for target in level_targets]
    levels = list(rule["targets_by_level"])
    metric = rule["metric"]
    lines = [
        "# Selection on validation data",
        "",
        f"Seeds {list(rule['selection_seeds'])}; no test split was read. Score: {rule['score_formula']}. "
        "Selectable: source-validation top-1 ≥ "
        f"{100 * rule['threshold']:.2f} (the best ERM arm, {rule['reference_arm']}, "
        f"{100 * rule['reference_top1']:.2f}, minus {100 * rule['top1_tolerance']:.2f} points). Ties within "
        f"{100 * rule['tie_tolerance']:.2f} points go to the arm listed first. Accuracies in percent.",
        "",
        "## Every arm",
        "",
    ]
    header = [
        "arm",
        "family",
        "settings",
        "source top-1",
        "worst concept",
        *(f"{target} {metric}" for target in targets),
        *(f"{level} level" for level in levels),
        "score",
        "selectable",
        "selected",
    ]
    rows = []
    for entry in log["arms"]:
        if entry["status"] != "trained":
            note = entry["status"]
            rows.append([entry["name"], _family_cell(entry), entry["settings"], note, *["–"] * (len(header) - 4)])
            continue
        rows.append(
            [
                entry["name"],
                _family_cell(entry),
                entry["settings"],
                f"{100 * entry['source_top1']:.2f}",
                f"{100 * entry['source_worst_concept']:.2f}",
                *(f"{100 * entry['targets'][target][metric]:.2f}" for target in targets),
                *(f"{100 * entry['level_means'][level]:.2f}" for level in levels),
                f"{100 * entry['score']:.2f}",
                "yes" if entry["selectable"] else "no",
                "**yes**" if entry["selected"] else "stand-in" if entry.get("stand_in") else "",
            ]
        )
    lines += markdown_table(header, rows)
    lines += ["", "## Families", ""]
    lines += markdown_table(
        ["family", "configurations tried", "selected arm", "validation score"],
        [
            [
                family,
                entry["tried"],
                _family_choice(entry),
                "–" if entry["score"] is None else f"{100 * entry['score']:.2f}",
            ]
            for family, entry in log["families"].items()
        ],
    )
    names, rows = _validation_readouts(log)
    if names:
        lines += [
            "",
            "## Read-outs not used for selection (validation; few-shot: mean over draws and seeds)",
            "",
            *markdown_table(["arm", *names], rows),
        ]
    return "\n".join(lines) + "\n"


def _family_choice(entry: Mapping[str, Any]) -> str:
    """A family's selected arm, else `none selectable; stand-in: <arm>` or `none selectable`."""
    if entry["selected"]:
        return entry["selected"]
    return f"none selectable; stand-in: {entry['stand_in']}" if entry.get("stand_in") else "none selectable"


def _family_cell(entry: Mapping[str, Any]) -> str:
    """`control (el)`: the arm's family, with its method where that differs."""
    family, method = entry["family"], entry["method"]
    return family if method == family else f"{family} ({method})"


def _validation_readouts(log: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(measure names, one row per trained arm): its few-shot accuracies and within-concept mean and worst concept,
    averaged over the selection seeds."""
    names: list[str] = []
    rows = []
    for entry in log["arms"]:
        if entry["status"] != "trained":
            continue
        values: dict[str, list[float]] = {}
        for record in entry["records"]:
            measures = record_measures(record)
            chosen = {**measures.get("Few-shot", {})}
            chosen.update(
                (name, value)
                for name, value in measures.get("Within-concept few-shot", {}).items()
                if name.endswith(("mean over concepts", "worst concept"))
            )
            for name, value in chosen.items():
                values.setdefault(name, []).append(value)
                if name not in names:
                    names.append(name)
        rows.append([entry["name"], values])
    return names, [
        [name, *(f"{100 * sum(v) / len(v):.2f}" if (v := values.get(measure)) else "–" for measure in names)]
        for name, values in rows
    ]
