"""Noisy labels offline: refit a run's reward model on its stored labels with each trainer.

A run of the ``mistake`` teacher stores every comparison with its (possibly wrong) label and the
segments' true rewards, so the teacher's mistakes are known afterwards. This script replays the
run's refits on those labels (the same rounds, warm-started, the run's own reward-model settings)
with each trainer, then scores the final model against the *true* labels:

- ``held-out accuracy``: the share of another run's stored pairs it orders as the true reward
  does, and the Spearman correlation of its segment returns with the true ones there;
- ``train accuracy``: the same on the run's own pairs (what it was fitted to, wrong labels and all);
- ``AUC``: how well the final model's per-pair loss ranks the wrong labels above the right ones.

Trainers: ``plain`` (Bradley-Terry on the labels as given), ``clean`` (the same pairs with the true
labels: the ceiling), ``rime`` (:mod:`prefenv.label_noise`'s filter at RIME's defaults) and
``noise=E`` (``RewardTrainConfig.label_noise = E``).

Usage::

    python benchmarks/report_label_noise_offline.py --train RUN_DIR --test OTHER_RUN_DIR \\
        --env prefenv/HalfCheetah-v0 --seed 22 --trainers plain clean rime noise=0.2 noise=0.1
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from prefenv.app.runs import make_vector_env, new_reward_model
from prefenv.app.spec import TrainSpec
from prefenv.label_noise import RobustLabels, pair_losses
from prefenv.records import Comparison
from prefenv.reward_training import train_reward_model
from prefenv.store import ComparisonStore


def _true_label(comparison: Comparison) -> float:
    return float(comparison.segment1.true_return > comparison.segment0.true_return)


def _returns(model: torch.nn.Module, comparisons: list[Comparison]) -> tuple[np.ndarray, ...]:
    """``(predicted returns of segments 0, of segments 1, true returns of both)``."""
    segments = [c.segment0 for c in comparisons] + [c.segment1 for c in comparisons]
    with torch.no_grad():
        predicted = model.segment_returns(segments).numpy()
    n = len(comparisons)
    return predicted[:n], predicted[n:], np.array([s.true_return for s in segments])


def replay(run: Path, test: list[Comparison], spec: TrainSpec, trainer: str) -> dict[str, float]:
    """Refit a fresh model at the run's label counts per round with ``trainer``; score it."""
    with ComparisonStore(run / "comparisons.sqlite") as store:
        comparisons = store.load()
    wrong = np.array([_true_label(c) != c.label for c in comparisons])
    if trainer == "clean":
        comparisons = [dataclasses.replace(c, label=_true_label(c)) for c in comparisons]
    config = spec.loop_config().reward_train
    if trainer == "rime":
        config = dataclasses.replace(config, robust=RobustLabels())
    elif trainer.startswith("noise="):
        config = dataclasses.replace(config, label_noise=float(trainer.split("=", 1)[1]))
    elif trainer not in ("plain", "clean"):
        raise SystemExit(f"unknown trainer {trainer!r}: plain, clean, rime or noise=E")
    env = make_vector_env(spec)
    model = new_reward_model(spec, env)
    env.close()
    with open(run / "rounds.csv", newline="") as rounds:
        counts = [int(row["labels_used"]) for row in csv.DictReader(rounds)]
    started = time.perf_counter()
    for n in counts:  # the run's refits: the labels it had at each round, warm-started
        train_reward_model(model, comparisons[:n], config)
    seconds = time.perf_counter() - started
    r0, r1, true = _returns(model, test)
    held_out = np.mean((r1 > r0) == np.array([_true_label(c) == 1.0 for c in test]))
    t0, t1, _ = _returns(model, comparisons)
    given = torch.tensor([c.label for c in comparisons])
    losses = pair_losses(torch.from_numpy(t0), torch.from_numpy(t1), given).numpy()
    truth = np.array([_true_label(c) == 1.0 for c in comparisons])
    return {
        "held_out_accuracy": float(held_out),
        "held_out_spearman": float(spearmanr(np.concatenate([r0, r1]), true)[0]),
        "train_accuracy": float(np.mean((t1 > t0) == truth)),
        "auc_wrong": float(roc_auc_score(wrong, losses)) if 0 < wrong.sum() < len(wrong) else 0.0,
        "wrong_labels": int(wrong.sum()),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True, help="run folder whose labels refit")
    parser.add_argument("--test", type=Path, required=True, help="run folder of held-out pairs")
    parser.add_argument("--env", default="prefenv/HalfCheetah-v0")
    parser.add_argument("--seed", type=int, default=22, help="the training run's --seed")
    parser.add_argument("--trainers", nargs="+", default=["plain", "clean", "rime", "noise=0.2"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = TrainSpec(env=args.env, seed=args.seed)
    with ComparisonStore(args.test / "comparisons.sqlite") as store:
        test = store.load()
    print(f"train {args.train} | held out: {len(test)} pairs of {args.test}")
    print(
        "| trainer | held-out accuracy | held-out Spearman | train accuracy | AUC of wrong labels |"
    )
    print("|---|---:|---:|---:|---:|")
    for trainer in args.trainers:
        r = replay(args.train, test, spec, trainer)
        print(f"| {trainer} | {r['held_out_accuracy']:.3f} | {r['held_out_spearman']:.3f} | "
              f"{r['train_accuracy']:.3f} | {r['auc_wrong']:.3f} |  ({r['wrong_labels']} wrong "
              f"labels, {r['seconds']:.0f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
