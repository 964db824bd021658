"""Over-optimisation: true vs learned score as the KL to SFT grows, and a verbosity-biased annotator.

On the conciseness task (true score: distinct content words, capped, minus 0.02 per word) two
reward models are fit to SFT samples labelled by (a) the oracle annotator and (b) the ``verbose``
annotator, who adds 0.05 per word to what he perceives, i.e. prefers longer answers. PPO-KL then
optimises each reward model with a *weak, fixed* KL leash (beta 0.02), so the policy drifts far
from SFT. From the PPO monitor (training rollouts) the script bins the learned score (whitened
reward-model output) and the true score by the per-sequence KL to SFT, and plots both curves per
annotator: the gap between the learned and the true curve is what the biased annotator opens.

Usage::

    python benchmarks/bench_text_overoptimisation.py --ppo-steps 36000

Writes ``benchmarks/figures/text_overoptimisation_T<max_new_tokens>.png`` and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from prefenv.app.text_config import TEXT_PPO
from prefenv.app.text_monitor import read_monitor
from prefenv.app.text_runs import TextPipelineConfig, run_pipeline

OUT = Path(__file__).parent / "out" / "text_overopt"
FIGURES = Path(__file__).parent / "figures"


def _binned(rows: list, edges: np.ndarray) -> list[tuple[float, float, float, int]]:
    kl = np.array([r.kl_to_ref for r in rows])
    learned = np.array([r.learned_score for r in rows])
    true = np.array([r.true_score for r in rows])
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (kl >= lo) & (kl < hi) & np.isfinite(learned) & np.isfinite(true)
        if inside.sum() >= 2:
            out.append((float(kl[inside].mean()), float(learned[inside].mean()),
                        float(true[inside].mean()), int(inside.sum())))  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ppo-steps", type=int, default=36_000)
    parser.add_argument("--kl-coef", type=float, default=0.02)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teachers", nargs="+", default=["oracle", "verbose"])
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=48,
        help="completion cap: room to pad (at 24 both policies hit the cap)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    curves = {}
    for i, teacher in enumerate(args.teachers):
        out = OUT / f"{teacher}_T{args.max_new_tokens}"
        first = OUT / f"{args.teachers[0]}_T{args.max_new_tokens}"
        if i > 0 and not (out / "sft" / "stage.json").exists():  # same seed: same base and SFT
            for folder in ("base", "sft"):
                shutil.copytree(first / folder, out / folder, dirs_exist_ok=True)
        config = TextPipelineConfig(
            task="concise", teacher=teacher, seed=args.seed, queries=args.queries,
            ppo_steps=args.ppo_steps, max_new_tokens=args.max_new_tokens,
            ppo=dataclasses.replace(TEXT_PPO, kl_coef=args.kl_coef, adaptive_kl=False),
        )  # fmt: skip
        run_pipeline(config, out, stages=("base", "sft", "rm", "ppo"))
        curves[teacher] = read_monitor(out / "ppo" / "monitor.csv")
    top = max(max(r.kl_to_ref for r in rows) for rows in curves.values())
    edges = np.linspace(0.0, top + 1e-6, 9)
    print(f"# concise task, PPO-KL beta {args.kl_coef} fixed, cmd: {' '.join(sys.argv)}")
    print("| annotator | KL to SFT (nats/seq) | learned (whitened) | true score | iterations |")
    print("|---|---|---|---|---|")
    binned = {}
    for teacher, rows in curves.items():
        binned[teacher] = _binned(rows, edges)
        for kl, learned, true, n in binned[teacher]:
            print(f"| {teacher} | {kl:.1f} | {learned:+.2f} | {true:+.3f} | {n} |")
    figure = FIGURES / f"text_overoptimisation_T{args.max_new_tokens}.png"
    _plot(binned, figure)
    print(f"figure: {figure}")
    return 0


def _plot(binned: dict[str, list[tuple[float, float, float, int]]], figure: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(binned), figsize=(5.5 * len(binned), 3.8), squeeze=False)
    for ax, (teacher, points) in zip(axes[0], binned.items(), strict=True):
        kl = [p[0] for p in points]
        ax.plot(kl, [p[1] for p in points], "o-", color="tab:orange", label="learned (whitened)")
        ax.set_xlabel("KL to SFT (nats / sequence)")
        ax.set_ylabel("learned score (std units)", color="tab:orange")
        twin = ax.twinx()
        twin.plot(kl, [p[2] for p in points], "s-", color="tab:blue", label="true score")
        twin.set_ylabel("true conciseness score", color="tab:blue")
        ax.set_title(f"reward model from the '{teacher}' annotator")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
