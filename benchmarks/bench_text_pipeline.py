"""Pipeline quality on the sentiment task: SFT vs PPO-KL vs DPO, several seeds (issue: text, 3).

Each seed runs the whole text pipeline (``prefenv text pipeline``: default tiny GPT-2 -> SFT ->
oracle-labelled comparisons of SFT samples -> reward model -> PPO-KL with an adaptive per-token KL
leash to SFT (target 6 nats / sequence) and DPO on the same comparisons -> evaluation on 256
held-out prompts). Reported per seed and as mean ± std over seeds: true score (VADER compound of
the completion), KL to the SFT model (nats per sequence, Monte-Carlo over the samples), length,
and the reward model's held-out accuracy against the true score.

Usage::

    python benchmarks/bench_text_pipeline.py --seeds 0 1 2
    python benchmarks/bench_text_pipeline.py --seeds 0 --set queries=500 ppo_steps=12000

Run folders go to ``benchmarks/out/text_pipeline/seed<N>`` (an unfinished one resumes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from agents.ppo_kl.config import PPOKLConfig
from prefenv.app.text_config import PPO_OPTIONS, TEXT_PPO
from prefenv.app.text_runs import TextPipelineConfig, run_pipeline

OUT = Path(__file__).parent / "out" / "text_pipeline"


def _overrides(pairs: list[str]) -> dict[str, object]:
    """Config overrides from ``field=value`` pairs; the PPO-KL options (``kl_coef=0.1``) go into
    the composed ``ppo`` config."""
    types = {f.name: f.type for f in dataclasses.fields(TextPipelineConfig) if f.name != "ppo"}
    types |= {f.name: f.type for f in dataclasses.fields(PPOKLConfig) if f.name in PPO_OPTIONS}
    values: dict[str, object] = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        if key not in types:
            raise SystemExit(f"--set {pair}: unknown field; fields: {sorted(types)}")
        kind = str(types[key])
        values[key] = (
            text == "True" if kind == "bool"
            else float(text) if "float" in kind
            else int(text) if "int" in kind
            else text
        )  # fmt: skip
    ppo = {k: values.pop(k) for k in PPO_OPTIONS if k in values}
    return {**values, "ppo": dataclasses.replace(TEXT_PPO, **ppo)} if ppo else values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], help="config overrides field=value")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    overrides = _overrides(args.set)
    rows = []
    for seed in args.seeds:
        config = TextPipelineConfig(seed=seed, **overrides)  # type: ignore[arg-type]
        start = time.perf_counter()
        summary = run_pipeline(config, args.out / f"seed{seed}")
        rows.append((seed, summary, time.perf_counter() - start))
    print(f"# text pipeline, sentiment task, cmd: {' '.join(sys.argv)}")
    print(f"# python {platform.python_version()}, torch {torch.__version__}, overrides {overrides}")
    print("| seed | RM true-order acc | SFT true | PPO-KL true | PPO KL | DPO true | DPO KL | "
          "lengths SFT/PPO/DPO | wall s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    table: dict[str, list[float]] = {}
    for seed, summary, seconds in rows:
        ev, rm = summary["eval"], summary["stages"]["rm"]
        values = {
            "rm": rm["true_order_accuracy"], "sft": ev["sft"]["true_score"],
            "ppo": ev["ppo"]["true_score"], "ppo_kl": ev["ppo"]["kl_to_ref"],
            "dpo": ev["dpo"]["true_score"], "dpo_kl": ev["dpo"]["kl_to_ref"],
        }  # fmt: skip
        for key, value in values.items():
            table.setdefault(key, []).append(value)
        lengths = "/".join(f"{ev[m]['mean_length']:.1f}" for m in ("sft", "ppo", "dpo"))
        print(
            f"| {seed} | {values['rm']:.3f} | {values['sft']:+.3f} ± {ev['sft']['true_score_sem']:.3f} "
            f"| {values['ppo']:+.3f} ± {ev['ppo']['true_score_sem']:.3f} | {values['ppo_kl']:.2f} | "
            f"{values['dpo']:+.3f} ± {ev['dpo']['true_score_sem']:.3f} | {values['dpo_kl']:.2f} | "
            f"{lengths} | {seconds:.0f} |"
        )
    mean = {k: (float(np.mean(v)), float(np.std(v))) for k, v in table.items()}
    print(
        "| mean ± std | " + " | ".join(
            f"{mean[k][0]:.3f} ± {mean[k][1]:.3f}"
            for k in ("rm", "sft", "ppo", "ppo_kl", "dpo", "dpo_kl")
        ) + " | | |"
    )  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(mean, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
