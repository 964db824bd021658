"""What the teacher was asked about: the queried segments of a run, in fifths of the run.

For each fifth of a run's comparisons (in the order they were labelled), the mean true reward per
step of the queried segments, the share of segments above ``--fast`` per step, and the share cut
short by the episode's end (a fall, on Hopper and Walker2d). Shows whether the queries ever set
the policy's current behaviour against a better one.

Usage::

    python benchmarks/report_query_mix.py RUN_DIR [RUN_DIR ...] [--fast 2.0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from prefenv.store import ComparisonStore


def query_mix(run: Path, fast: float, parts: int = 5) -> list[tuple[float, float, float]]:
    """``(mean reward per step, share above fast, share shorter than the longest)`` per part."""
    with ComparisonStore(run / "comparisons.sqlite") as store:
        comparisons = store.load()
    per_step, lengths = [], []
    for comparison in comparisons:
        for segment in (comparison.segment0, comparison.segment1):
            rewards = np.asarray(segment.true_rewards, dtype=float)
            per_step.append(rewards.mean())
            lengths.append(len(rewards))
    per_step, lengths = np.array(per_step), np.array(lengths)
    full = lengths.max()
    return [
        (
            float(per_step[i].mean()),
            float(np.mean(per_step[i] > fast)),
            float(np.mean(lengths[i] < full)),
        )
        for i in np.array_split(np.arange(len(per_step)), parts)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--fast", type=float, default=2.0, help="true reward per step of 'fast'")
    args = parser.parse_args()
    print(f"| run | fifths of the labels: reward/step, share > {args.fast}, share cut short |")
    print("|---|---|")
    for run in args.runs:
        parts = query_mix(run, args.fast)
        cells = " / ".join(f"{m:.2f}, {f:.2f}, {s:.2f}" for m, f, s in parts)
        print(f"| {run} | {cells} |")


if __name__ == "__main__":
    main()
