"""Label-budget curves of several sweeps in one figure: final true return over the twin's.

Each curve is ``LABEL=FOLDER`` (a sweep's results folder: its ``results/*.json``) or
``LABEL=FOLDER:ARM`` (one arm of it), or several of those joined by ``+`` (one setting whose
cells ran in more than one sweep); ``--seeds`` keeps only those seeds. Per curve and budget: every
seed's fraction of its own true-reward twin, a line through the mean, and a band of one std over
seeds; a panel for the deterministic policy and one for the sampled policy. Prints the table the
figure shows.

    python benchmarks/report_label_budget_curves.py \
        uniform=benchmarks/results/sweeps/label_budget:off \
        disagreement=benchmarks/results/sweeps/label_budget_disagreement \
        --title HalfCheetah --out benchmarks/figures/label_budget_halfcheetah_queries.png
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

MODES = ("eval_deterministic_return", "eval_sampled_return")


def fractions(
    folder: Path, arm: str | None, seeds: set[int] | None = None
) -> dict[str, dict[int, list[tuple[int, float]]]]:
    """``{mode: {labels: [(seed, fraction of its twin)]}}`` of one sweep (or one arm of it)."""
    cells = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    twins = {c["name"]: c["summary"] for c in cells if c["kind"] == "twin"}
    found: dict[str, dict[int, list[tuple[int, float]]]] = {m: defaultdict(list) for m in MODES}
    for cell in cells:
        if cell["kind"] != "train" or cell.get("status") != "done":
            continue
        if arm is not None and cell["axes"].get("arm") != arm:
            continue
        if seeds is not None and int(cell["axes"]["seed"]) not in seeds:
            continue
        twin = twins[cell["twin"]]
        for mode in MODES:
            share = cell["summary"][mode] / twin[mode]
            found[mode][int(cell["axes"]["queries"])].append((int(cell["axes"]["seed"]), share))
    return {m: dict(found[m]) for m in MODES}


def curve_fractions(where: str, seeds: set[int] | None) -> dict[str, dict[int, list[float]]]:
    """``{mode: {labels: [fraction per seed, by seed]}}`` of ``FOLDER[:ARM][+FOLDER[:ARM]...]``.

    Raises:
        ValueError: a seed's cell at one budget is in two of the folders.
    """
    merged: dict[str, dict[int, list[tuple[int, float]]]] = {m: defaultdict(list) for m in MODES}
    for part in where.split("+"):
        folder, _, arm = part.partition(":")
        for mode, by_budget in fractions(Path(folder), arm or None, seeds).items():
            for q, pairs in by_budget.items():
                merged[mode][q].extend(pairs)
    for mode in MODES:
        for q, pairs in merged[mode].items():
            seen = [seed for seed, _ in pairs]
            if len(seen) != len(set(seen)):
                raise ValueError(f"{where}: {q} labels has a seed twice ({sorted(seen)})")
    return {m: {q: [f for _, f in sorted(v)] for q, v in merged[m].items()} for m in MODES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "curves", nargs="+", help="LABEL=FOLDER or LABEL=FOLDER:ARM, several joined by +"
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="only these seeds (default: all)")
    parser.add_argument("--title", default="")
    parser.add_argument("--out", type=Path, required=True, help="the figure (PNG)")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    print("| curve | labels | deterministic per seed | mean ± std | sampled mean ± std |")
    print("|---|---:|---|---:|---:|")
    for curve in args.curves:
        label, _, where = curve.partition("=")
        try:
            data = curve_fractions(where, set(args.seeds) if args.seeds else None)
        except ValueError as err:
            parser.error(str(err))
        if not data[MODES[0]]:
            parser.error(
                f"{curve}: no finished cell in {where} (FOLDER/*.json, :ARM, --seeds): check the "
                "folders, the arm's name and the seeds"
            )
        for mode, ax in zip(MODES, axes, strict=True):
            budgets = sorted(data[mode])
            mean = np.array([np.mean(data[mode][q]) for q in budgets])
            std = np.array([np.std(data[mode][q]) for q in budgets])
            (line,) = ax.plot(budgets, mean, marker="o", label=label)
            ax.fill_between(budgets, mean - std, mean + std, color=line.get_color(), alpha=0.2)
            for q in budgets:
                ax.scatter([q] * len(data[mode][q]), data[mode][q], color=line.get_color(), s=10)
        det, sampled = data[MODES[0]], data[MODES[1]]
        for q in sorted(det):
            seeds = ", ".join(f"{f:.2f}" for f in det[q])
            print(f"| {label} | {q} | {seeds} | {np.mean(det[q]):.2f} ± {np.std(det[q]):.2f} | "
                  f"{np.mean(sampled[q]):.2f} ± {np.std(sampled[q]):.2f} |")  # fmt: skip
    for mode, ax in zip(MODES, axes, strict=True):
        ax.set_xscale("log")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xlabel("oracle labels")
        ax.set_title(f"{args.title} {mode.split('_')[1]} policy".strip())
    axes[0].set_ylabel("final true return / true-reward twin")
    axes[0].legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"\nfigure: {args.out}")


if __name__ == "__main__":
    main()
