"""Synthetic teachers side by side, a durable comparison store, and JSONL export.

The six B-Pref presets label the same segment pairs of Pendulum-v1; we count how often each
agrees with the true ordering, store one teacher's labels in SQLite and export them in the
prompt/chosen/rejected JSONL convention of the Hugging Face preference datasets.

    python examples/synthetic_teachers.py [--pairs 500] [--out runs/teachers]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np

from prefenv.recording import collect_trajectories
from prefenv.sampling import sample_segment_pairs
from prefenv.store import ComparisonStore, export_jsonl
from prefenv.teachers import PRESETS, make_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=500, help="segment pairs to label")
    parser.add_argument("--out", type=Path, default=Path("runs/teachers"), help="output folder")
    args = parser.parse_args()

    trajectories = collect_trajectories(gym.make("Pendulum-v1"), n_episodes=20, seed=0)
    pairs = sample_segment_pairs(
        trajectories, args.pairs, segment_length=50, rng=np.random.default_rng(0)
    )
    truth = np.array([s1.true_return > s0.true_return for s0, s1 in pairs], dtype=float)
    mean_return = float(np.mean([t.true_return for t in trajectories]))

    print("| teacher | agrees with truth | ties (0.5) | skipped |")
    print("|---|---|---|---|")
    for name in [*PRESETS, "noisy+mistake"]:
        teacher = make_teacher(name, np.random.default_rng(1))
        teacher.adapt(mean_return, episode_length=200, segment_length=50)
        labels = np.array([np.nan if c.label is None else c.label for c in teacher.label(pairs)])
        decided = np.isin(labels, (0.0, 1.0))
        agree = np.mean(labels[decided] == truth[decided]) if decided.any() else float("nan")
        print(
            f"| {name} | {agree:.1%} | {np.mean(labels == 0.5):.1%} | {np.mean(np.isnan(labels)):.1%} |"
        )

    args.out.mkdir(parents=True, exist_ok=True)
    with ComparisonStore(args.out / "comparisons.sqlite") as store:
        store.append(make_teacher("mistake", np.random.default_rng(2)).label(pairs))
        n = export_jsonl(store.load(), args.out / "comparisons.jsonl")
        print(
            f"\nstore holds {len(store)} comparisons; exported {n} to {args.out / 'comparisons.jsonl'}"
        )


if __name__ == "__main__":
    main()
