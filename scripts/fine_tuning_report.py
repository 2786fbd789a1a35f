"""The robust fine-tuning measurement (README, "Robust fine-tuning") as one report, from its runs' results.json.

    python scripts/fine_tuning_report.py workdirs/finetune [--seeds 0 1 2] [--out REPORT.md]

Reads RUNS/<arm>_s<seed>/results.json of the four arms the README's commands train (ERM 400 steps, 100 HRRL steps
from it, ERM and HRRL 500 steps from scratch) and renders hrrl_jax.evaluate.report's report: mean ± std over seeds
of top-1, worst and best concept and their gap, per-concept accuracy, and each arm's difference from ERM 500,
paired over seeds.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from hrrl_jax.evaluate.report import render_report
from hrrl_jax.workdir import WorkDir
from hrrl_jax.workdir.layout import RESULTS

# (run directory prefix, label), in the README's order.
ARMS = (
    ("erm400", "ERM 400"),
    ("erm400_hrrl100", "ERM 400 → HRRL 100"),
    ("erm500", "ERM 500"),
    ("hrrl500", "HRRL 500"),
)
REFERENCE = "ERM 500"


def fine_tuning_records(runs_directory: str, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """One report record per arm and seed: {"method": label, "seed", "source": the run's results.json}."""
    records = []
    for prefix, label in ARMS:
        for seed in seeds:
            run_directory = WorkDir(os.path.join(runs_directory, f"{prefix}_s{seed}"))
            path = run_directory.file(RESULTS)
            results = run_directory.read_results()
            if results is None:
                status = run_directory.read_status()
                if status is None:
                    raise FileNotFoundError(f"{path} is missing: train that run with the README's command first.")
                raise ValueError(f"{path}: the run is {status.get('status')!r}, not finished; rerun its command.")
            records.append({"method": label, "seed": seed, "source": results})
    return records


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_directory", help="The folder holding <arm>_s<seed> work directories.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", help="Write the report here instead of printing it.")
    arguments = parser.parse_args(argv)
    try:
        records = fine_tuning_records(arguments.runs_directory, arguments.seeds)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    markdown = render_report(
        records,
        title="Robust fine-tuning: ERM 400 → HRRL 100 against ERM and HRRL from scratch",
        method_order=[label for _, label in ARMS],
        reference_methods=(REFERENCE,),
    )
    if arguments.out:
        with open(arguments.out, "w") as file:
            file.write(markdown)
    else:
        print(markdown, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
