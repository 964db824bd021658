"""Per-iteration metrics record and its sinks: CSV (``progress.csv``) and TensorBoard."""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class IterationMetrics:
    """What one PPO-KL iteration (rollout + update) did. ``nan`` marks "not available".

    Attributes:
        iteration: iterations completed so far (1-based, cumulative over ``learn`` calls).
        timesteps: env steps so far (all envs, including masked reset steps).
        fps: env steps per second of this iteration (rollout + update wall-clock).
        policy_loss: mean clipped surrogate loss over minibatches.
        value_loss: mean value loss over minibatches.
        entropy: mean policy entropy over minibatches.
        approx_kl: mean approximate KL(pi_old || pi) of the last epoch run.
        clip_fraction: mean fraction of clipped ratios over minibatches.
        explained_variance: of the value predictions w.r.t. the returns at rollout time.
        epochs: epochs completed (fewer than n_epochs after a target_kl early stop).
        kl_to_ref: mean per-step KL estimate to the reference (nan when kl_coef is 0).
        kl_to_ref_episode: mean per-episode sum of the KL estimate (the adaptive controller's input).
        kl_coef: beta used for this iteration's rewards.
        episode_reward: mean undiscounted env reward of episodes finished in this rollout.
        episode_true_return: mean of ``info["true_reward"]`` sums (nan when the env reports none).
        episode_length: mean length of finished episodes.
        episodes: episodes finished in this rollout.
    """

    iteration: int
    timesteps: int
    fps: float
    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    clip_fraction: float
    explained_variance: float
    epochs: int
    kl_to_ref: float
    kl_to_ref_episode: float
    kl_coef: float
    episode_reward: float
    episode_true_return: float
    episode_length: float
    episodes: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class MetricsLogger:
    """Writes each :class:`IterationMetrics` to ``log_dir/progress.csv`` and TensorBoard.

    TensorBoard is optional: without the ``tensorboard`` package only the CSV is written.
    Appends to an existing ``progress.csv`` (resumed runs continue the same file).
    """

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.log_dir / "progress.csv"
        self._fields = [f.name for f in dataclasses.fields(IterationMetrics)]
        new_file = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        self._csv_file = self.csv_path.open("a", newline="")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=self._fields)
        if new_file:
            self._csv.writeheader()
        self._tb: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is an optional extra
            self._tb = None
        else:
            self._tb = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, metrics: IterationMetrics) -> None:
        row = metrics.as_dict()
        self._csv.writerow(row)
        self._csv_file.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key not in ("iteration", "timesteps") and not math.isnan(float(value)):
                    self._tb.add_scalar(f"ppo_kl/{key}", float(value), metrics.timesteps)
            self._tb.flush()

    def close(self) -> None:
        self._csv_file.close()
        if self._tb is not None:
            self._tb.close()
