"""What each feedback-efficiency method costs in wall-clock: a sweep's cells side by side.

Reads a finished sweep folder (``benchmarks/grids/method_cost.toml``'s, or any train sweep; or
its copy under ``benchmarks/results/sweeps/``, cell results beside ``cells/NAME/rounds.csv``) and
prints, per cell: the whole run's seconds (the sweep's record: training, queries, refits and the
final evaluation), the seconds of the reward-model refits (``rm_seconds`` summed over
``rounds.csv``), the rest (agent training, rollouts, query selection, evaluation), and the run's
seconds against the baseline cell's and the true-reward twin's. Seconds compare only when the
cells ran one at a time on an otherwise idle machine.

Usage::

    python benchmarks/report_method_cost.py benchmarks/out/sweeps/method_cost [--baseline arm-off_seed-28]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np


def _results(sweep: Path) -> Path:
    """Where a sweep's cell results lie: ``results/`` in a sweep's folder, the top in a copy."""
    return sweep / "results" if (sweep / "results").is_dir() else sweep


def cell_cost(sweep: Path, name: str) -> dict[str, float]:
    """``run_s`` (the sweep's seconds for the cell), ``refit_s`` and the final deterministic return."""
    result = json.loads((_results(sweep) / f"{name}.json").read_text())
    if result["status"] != "done":
        raise SystemExit(f"{name} in {sweep} did not finish ({result['status']}): rerun the sweep")
    rounds = sweep / "cells" / name / "rounds.csv"
    if result["kind"] == "twin":
        refit = 0.0  # the true reward: no reward model to refit
    elif rounds.is_file():
        with rounds.open() as handle:
            refit = float(np.nansum([float(row["rm_seconds"]) for row in csv.DictReader(handle)]))
    else:
        refit = math.nan  # a copy without the cell's rounds.csv: unknown, not zero
    summary = result.get("summary") or {}
    return {
        "run_s": float(result["seconds"]),
        "refit_s": refit,
        "return": float(summary.get("eval_deterministic_return", math.nan)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="a sweep's --out folder")
    parser.add_argument("--baseline", default="", help="the cell the others are divided by "
                        "(default: the first cell named arm-off*)")  # fmt: skip
    args = parser.parse_args()
    names = sorted(p.stem for p in _results(args.sweep).glob("*.json"))
    if not names:
        raise SystemExit(f"{args.sweep} has no finished cell: give a sweep's --out folder")
    costs = {name: cell_cost(args.sweep, name) for name in names}
    baseline = args.baseline or next((n for n in names if n.startswith("arm-off")), names[0])
    if baseline not in costs:
        raise SystemExit(f"no cell {baseline!r} in {args.sweep}: choose one of {', '.join(names)}")
    twin = next((n for n in names if n.startswith("twin")), None)
    base = costs[baseline]["run_s"]
    print(f"| cell | run s | refits s | rest s | / {baseline} | / twin | det. return |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, cost in costs.items():
        against_twin = f"{cost['run_s'] / costs[twin]['run_s']:.2f}" if twin else "-"
        print(
            f"| {name} | {cost['run_s']:.1f} | {cost['refit_s']:.1f} | "
            f"{cost['run_s'] - cost['refit_s']:.1f} | {cost['run_s'] / base:.2f} | "
            f"{against_twin} | {cost['return']:,.0f} |"
        )


if __name__ == "__main__":
    main()
