"""The side-by-side table: prefenv (bench_preferences.py) vs imitation (peers/imitation_preferences.py).

Reads the per-seed result files the two benchmarks write (or their copies in
``benchmarks/results/side_by_side/``: ``prefenv_seed*.json`` beside the imitation files) and
prints one markdown table: per seed the deterministic and sampled final true returns (10 episodes
each, lengths in brackets) and the wall-clock of each library, then the means, the seeds prefenv
wins, and the worst seed of each.

    python benchmarks/report_side_by_side.py \\
        --prefenv benchmarks/out/side_by_side/prefenv_HalfCheetah-v0/ppo-kl-noisy-preset \\
        --imitation benchmarks/out/side_by_side --imitation-glob 'imitation_HalfCheetah-v4_t1_seed*.json'
    python benchmarks/report_side_by_side.py --prefenv benchmarks/results/side_by_side \\
        --imitation benchmarks/results/side_by_side
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np


def _seed(path: Path) -> int:
    return int(re.findall(r"seed(\d+)", str(path))[-1])


def load(prefenv_dir: Path, imitation_dir: Path, pattern: str) -> dict[int, dict[str, dict]]:
    """``{seed: {"prefenv": result, "imitation": result}}`` for the seeds both have finished."""
    files = [*prefenv_dir.glob("seed*/bench_result.json"), *prefenv_dir.glob("prefenv_seed*.json")]
    ours = {_seed(p): json.loads(p.read_text()) for p in files}
    peer = {_seed(p): json.loads(p.read_text()) for p in imitation_dir.glob(pattern)}
    return {
        s: {"prefenv": ours[s], "imitation": peer[s]} for s in sorted(ours.keys() & peer.keys())
    }


def _cell(result: dict, mode: str) -> str:
    ret, length = result.get(f"{mode}true_return_mean"), result.get(f"{mode}length_mean")
    if ret is None:
        return "n/a"
    return f"{ret:,.0f}" + ("" if length is None else f" ({length:,.0f})")


def table(rows: dict[int, dict[str, dict]]) -> str:
    """The markdown table and the summary lines."""
    lines = [
        "| seed | prefenv det. (length) | prefenv sampled | prefenv s | imitation det. (length) "
        "| imitation sampled | imitation s | prefenv >= imitation (det.) |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for seed, pair in rows.items():
        ours, peer = pair["prefenv"], pair["imitation"]
        wins = ours["true_return_mean"] >= peer["true_return_mean"]
        lines.append(
            f"| {seed} | {_cell(ours, '')} | {_cell(ours, 'sampled_')} | {ours['seconds']:,.0f} "
            f"| {_cell(peer, '')} | {_cell(peer, 'sampled_')} | {peer['seconds']:,.0f} "
            f"| {'yes' if wins else '**no**'} |"
        )
    if not rows:
        return "no seed finished by both libraries yet"
    ours = np.array([p["prefenv"]["true_return_mean"] for p in rows.values()])
    peer = np.array([p["imitation"]["true_return_mean"] for p in rows.values()])
    seeds = list(rows)
    lines += [
        "",
        f"mean ± std over {len(rows)} seeds (deterministic): prefenv {ours.mean():,.0f} ± "
        f"{ours.std():,.0f}, imitation {peer.mean():,.0f} ± {peer.std():,.0f} "
        f"(ratio of means {ours.mean() / peer.mean():.2f}); prefenv >= imitation on "
        f"{int((ours >= peer).sum())} of {len(rows)} seeds",
        f"worst seed: prefenv {seeds[int(ours.argmin())]} ({ours.min():,.0f}), imitation "
        f"{seeds[int(peer.argmin())]} ({peer.min():,.0f})",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefenv", type=Path, required=True,
                        help="bench_preferences.py's folder of seed*/bench_result.json")  # fmt: skip
    parser.add_argument("--imitation", type=Path, required=True,
                        help="the imitation script's --out folder")  # fmt: skip
    parser.add_argument("--imitation-glob", default="imitation_HalfCheetah-v4_t1_seed*.json")
    args = parser.parse_args()
    print(table(load(args.prefenv, args.imitation, args.imitation_glob)))


if __name__ == "__main__":
    main()
