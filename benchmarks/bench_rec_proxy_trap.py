"""The proxy trap, measured: a clicks-optimising agent vs a preference-reward agent over training.

Runs ``examples/recommendation_proxy_trap.py``'s two agents (identical PPO; one trained on raw
clicks, one on a reward model fit to oracle comparisons of whole sessions) at benchmark size,
evaluating both on the same 256 held-out users after each training chunk.

Usage::

    nice -n 10 python benchmarks/bench_rec_proxy_trap.py --steps 300000 --queries 500
    nice -n 10 python benchmarks/bench_rec_proxy_trap.py --time-budget 40 --tag leaving

Goal (issue 5): the clicks agent raises clicks but lowers satisfaction; the preference agent does
not. Results: ``benchmarks/out/rec_proxy_trap/<tag>/proxy_trap.json``; figure:
``benchmarks/figures/rec_proxy_trap[_<tag>].png``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from recommendation_proxy_trap import parse_args, run  # noqa: E402


def main() -> None:
    argv = sys.argv[1:]
    tag = "captive"
    if "--tag" in argv:
        i = argv.index("--tag")
        tag = argv[i + 1]
        del argv[i : i + 2]
    args = parse_args(
        argv, steps=300_000, queries=500, points=8, out=Path("benchmarks/out/rec_proxy_trap") / tag
    )
    suffix = "" if tag == "captive" else f"_{tag}"
    figure = Path("benchmarks/figures") / f"rec_proxy_trap{suffix}.png"
    summary = run(args, figure)
    print(f"time budget {args.time_budget:g} min, {args.steps:,} steps per agent, seed {args.seed}")
    print(
        "\n| agent | steps | clicks / session | click rate | satisfaction / session | true utility |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, curve in summary["curves"].items():
        for point in (curve[0], curve[-1]):
            print(
                f"| {name} | {point['steps']:,} | {point['clicks']:.1f} | "
                f"{point['click_rate']:.3f} | {point['satisfaction']:.1f} | {point['utility']:.1f} |"
            )
    for name, m in summary["baselines"].items():
        print(
            f"| {name} | - | {m['clicks']:.1f} | {m['click_rate']:.3f} | "
            f"{m['satisfaction']:.1f} | {m['utility']:.1f} |"
        )
    print(f"\nfigure: {figure}")


if __name__ == "__main__":
    main()
