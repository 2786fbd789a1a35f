"""Protocol v3's pre-registered goals, judged from its confirmation.json (docs/results/fashion_mnist_v3/protocol.md).

    python scripts/protocol_v3_goals.py docs/results/fashion_mnist_v3/confirmation.json

Prints one line per goal with the figures it rests on (percentage points, paired over seeds, 95 % t-intervals) and
`met` or `not met`. Readings of the goals' words, fixed before the confirmation's figures were seen:
- "EL*" is the el family's starred label, a stand-in if amendment 1 made one; the verdict says so.
- Goal 3's "example-level targets" are the mean over the 5 shifts' probe accuracies, per seed, then paired.
- Goal 4's "targets" are the measures of the report's Targets, Few-shot and Within-concept few-shot sections;
  "where EL* beats ERM*" means EL* − ERM*'s interval lies above 0. With no such measure, goal 4 is not met.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from hrrl_jax.evaluate.protocol_report import record_measures, t_interval
from hrrl_jax.evaluate.report import paired_difference, summarise

TARGET_SECTIONS = ("Targets", "Few-shot", "Within-concept few-shot")
SHIFT_PROBE_MEAN = "mean probe over the shifts"


def measures_by_method(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict]]:
    """{method label: {measure: summary over seeds}}, with the mean of the shifts' probes as one more measure."""
    values: dict[str, dict[str, dict[int, float]]] = {}
    for record in records:
        flat = {name: value for section in record_measures(record).values() for name, value in section.items()}
        shift_probes = [value for name, value in flat.items() if name.startswith("shift/") and name.endswith(" probe")]
        if shift_probes:
            flat[SHIFT_PROBE_MEAN] = sum(shift_probes) / len(shift_probes)
        for name, value in flat.items():
            values.setdefault(record["method"], {}).setdefault(name, {})[record["seed"]] = float(value)
    return {method: {name: summarise(seeds) for name, seeds in by_name.items()} for method, by_name in values.items()}


def starred_label(methods: Sequence[str], family: str) -> str:
    """The label of `family`'s confirmed arm: `family*`, or `family* (stand-in)`."""
    for method in methods:
        if method == f"{family}*" or method.startswith(f"{family}* "):
            return method
    raise ValueError(f"no confirmed arm of family {family!r} among {sorted(methods)}.")


def difference(summaries: Mapping, method: str, reference: str, measure: str) -> tuple[float, float, float]:
    """(mean, low, high) of method − reference on `measure`, in percentage points, paired over shared seeds."""
    paired = paired_difference(summaries[method][measure], summaries[reference][measure])
    low, high = t_interval(paired["mean"], paired["std"], paired["n"])
    return 100 * paired["mean"], 100 * low, 100 * high


def shown(label: str, value: tuple[float, float, float]) -> str:
    """`label: +1.19 [−0.26, +2.65]` for a (mean, low, high) difference."""
    mean, low, high = value
    return f"{label}: {mean:+.2f} [{low:+.2f}, {high:+.2f}]"


def target_measures(record: Mapping[str, Any]) -> list[str]:
    measures = record_measures(record)
    return [name for section in TARGET_SECTIONS for name in measures.get(section, {})]


def judge(confirmation: Mapping[str, Any]) -> list[tuple[str, bool, str]]:
    """[(goal, met, figures)] for goals 1-4 of protocol v3."""
    records = confirmation["records"]
    summaries = measures_by_method(records)
    methods = list(summaries)
    erm, el, cl = (starred_label(methods, family) for family in ("erm", "el", "cl"))
    hrrl, control = starred_label(methods, "hrrl"), starred_label(methods, "control")

    hrrl_family = confirmation["families"]["hrrl"]
    goals = [
        (
            "1. HRRL* is selectable",
            hrrl_family["selected"] is not None,
            f"selected: {hrrl_family['selected']}, stand-in: {hrrl_family.get('stand_in')}",
        )
    ]
    top1 = difference(summaries, hrrl, erm, "source top-1")
    worst = difference(summaries, hrrl, erm, "source worst concept")
    ratios = []
    for probe in ("shift/noise probe", "digits probe"):
        hrrl_gain, el_gain = difference(summaries, hrrl, erm, probe)[0], difference(summaries, el, erm, probe)[0]
        ratios.append((probe, hrrl_gain, el_gain, hrrl_gain >= 0.8 * el_gain))
    goals.append(
        (
            "2. HRRL* − ERM*: top-1 ≥ −0.3, worst concept ≥ +1.0 with interval > 0, probe gains ≥ 0.8 x EL*'s",
            top1[0] >= -0.3 and worst[0] >= 1.0 and worst[1] > 0 and all(ok for *_, ok in ratios),
            "; ".join(
                [shown(f"{hrrl} − {erm} source top-1", top1), shown(f"{hrrl} − {erm} source worst concept", worst)]
                + [f"{probe} gain {gain:+.2f} vs {el}'s {el_gain:+.2f}" for probe, gain, el_gain, _ in ratios]
            ),
        )
    )
    worst_vs_el = difference(summaries, hrrl, el, "source worst concept")
    shifts_vs_cl = difference(summaries, hrrl, cl, SHIFT_PROBE_MEAN)
    goals.append(
        (
            "3. HRRL* ≥ EL* on the worst concept and ≥ CL* on the shifts' mean probe",
            worst_vs_el[0] >= 0 and shifts_vs_cl[0] >= 0,
            f"{shown(f'{hrrl} − {el} source worst concept', worst_vs_el)}; "
            f"{shown(f'{hrrl} − {cl} {SHIFT_PROBE_MEAN}', shifts_vs_cl)}",
        )
    )
    wins = [m for m in target_measures(records[0]) if difference(summaries, el, erm, m)[1] > 0]
    against_control = {m: difference(summaries, el, control, m) for m in wins}
    goals.append(
        (
            "4. EL* − control > 0 (interval) where EL* beats ERM*",
            bool(wins) and all(low > 0 for _, low, _ in against_control.values()),
            "; ".join(shown(measure, value) for measure, value in against_control.items())
            or f"{el} beats {erm} on no target measure",
        )
    )
    return goals


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("confirmation", help="the protocol's confirmation.json")
    args = parser.parse_args(argv)
    with open(args.confirmation) as file:
        confirmation = json.load(file)
    for goal, met, figures in judge(confirmation):
        print(f"{goal}: {'met' if met else 'not met'}\n    {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
