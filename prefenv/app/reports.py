"""What a run folder shows a reader: ``rounds.csv``, the learning curve, the summary, evaluation.

Every writer here replaces its file atomically, so a run killed mid-round leaves the previous
round's report intact.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from prefenv.app.spec import TrainSpec, write_json_atomic
from prefenv.atomic import atomic_write
from prefenv.loop import RoundMetrics
from prefenv.reward_training import MemberTrainMetrics, RewardTrainMetrics

__all__ = [
    "episode_returns",
    "plot_learning_curve",
    "round_from_dict",
    "write_rounds_csv",
    "write_summary",
]

_CSV_FIELDS = (
    "round timesteps labels_used labels_this_round skipped_this_round true_return "
    "learned_return return_correlation episodes hacking_alarm seconds"
).split()


def round_from_dict(row: dict[str, Any]) -> RoundMetrics:
    """Inverse of ``dataclasses.asdict(metrics)`` after a JSON round trip (None back to NaN)."""
    rm = dict(row["reward_model"])
    rm["members"] = tuple(MemberTrainMetrics(**m) for m in rm["members"])
    fields = {k: (math.nan if v is None else v) for k, v in row.items() if k != "reward_model"}
    rm = {k: (math.nan if v is None else v) for k, v in rm.items()}
    return RoundMetrics(reward_model=RewardTrainMetrics(**rm), **fields)


def write_rounds_csv(path: Path, history: list[RoundMetrics]) -> None:
    """One row per feedback round, reward-model accuracy, loss and refit time included."""

    def write(handle: Any) -> None:
        writer = csv.writer(handle)
        writer.writerow([*_CSV_FIELDS, "rm_val_accuracy", "rm_val_loss", "rm_seconds"])
        for m in history:
            row = dataclasses.asdict(m)
            writer.writerow(
                [row[f] for f in _CSV_FIELDS]
                + [m.reward_model.val_accuracy, m.reward_model.val_loss, m.reward_model.seconds]
            )

    atomic_write(path, write)


def plot_learning_curve(history: list[RoundMetrics], path: Path, spec: TrainSpec) -> None:
    """True and learned return vs env steps (two y axes), labels used, reward-model accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m.timesteps for m in history]
    fig, (ax, ax_labels) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=[3, 1.4])
    ax.plot(steps, [m.true_return for m in history], "o-", color="tab:blue", label="true return")
    ax.set_ylabel("true return (hidden)", color="tab:blue")
    learned_ax = ax.twinx()
    learned_ax.plot(
        steps,
        [m.learned_return for m in history],
        "s--",
        color="tab:orange",
        label="learned return",
    )
    learned_ax.set_ylabel("learned return", color="tab:orange")
    for m in history:
        if m.hacking_alarm:
            ax.axvline(m.timesteps, color="tab:red", alpha=0.3)
    ax.set_title(f"{spec.env} | {spec.agent} | teacher {spec.teacher} | seed {spec.seed}")
    ax.grid(alpha=0.3)
    ax_labels.plot(steps, [m.labels_used for m in history], "o-", color="tab:green")
    ax_labels.set_ylabel("labels used", color="tab:green")
    ax_labels.set_xlabel("env steps")
    acc_ax = ax_labels.twinx()
    acc_ax.plot(steps, [m.reward_model.val_accuracy for m in history], "x:", color="tab:purple")
    acc_ax.set_ylabel("RM held-out acc.", color="tab:purple")
    acc_ax.set_ylim(0.4, 1.02)
    ax_labels.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write_summary(
    out: Path, spec: TrainSpec, history: list[RoundMetrics], elapsed: float, on_policy: bool
) -> dict[str, Any]:
    """``summary.json`` and ``summary.md`` of a run's rounds so far; returns the summary.

    Args:
        out: the run folder.
        spec: the run's settings.
        history: its rounds, oldest first (at least one).
        elapsed: wall-clock seconds over every process that worked on the run.
        on_policy: whether the agent is on-policy (its ``timesteps`` round up to rollouts).
    """
    last = history[-1]
    finished = [m for m in history if not math.isnan(m.true_return)]
    summary = {
        "env": spec.env,
        "agent": spec.agent,
        "on_policy": on_policy,
        "teacher": spec.teacher,
        "seed": spec.seed,
        "timesteps": last.timesteps,
        "labels_used": last.labels_used,
        "final_true_return": finished[-1].true_return if finished else None,
        "final_learned_return": finished[-1].learned_return if finished else None,
        "best_true_return": max((m.true_return for m in finished), default=None),
        "reward_model_val_accuracy": last.reward_model.val_accuracy,
        "return_correlation": last.return_correlation,
        "hacking_alarms": [m.round for m in history if m.hacking_alarm],
        "wall_clock_s": round(elapsed, 1),
        "plot": str(out / "learning_curve.png"),
        "store": str(out / "comparisons.sqlite"),
    }
    write_json_atomic(out / "summary.json", summary)
    atomic_write(out / "summary.md", lambda handle: handle.write(_markdown(summary, spec)))
    return summary


def _markdown(summary: dict[str, Any], spec: TrainSpec) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
        return str(value)

    rows = "\n".join(f"| {k} | {fmt(v)} |" for k, v in summary.items())
    return (
        f"# prefenv run: {spec.env} / {spec.agent} / teacher {spec.teacher}\n\n"
        f"| field | value |\n|---|---|\n{rows}\n\n"
        f"![learning curve](learning_curve.png)\n"
    )


def episode_returns(
    venv: gym.vector.VectorEnv,
    predict: Callable[[Any], np.ndarray],
    episodes: int,
    seed: int,
) -> tuple[list[float], list[float]]:
    """Run ``predict(obs) -> actions`` on sub-env 0 of ``venv`` for ``episodes`` full episodes.

    Returns:
        True returns (``info["true_reward"]`` when reported, else the env reward) and the
        returns of the reward the env gave (the learned reward under a preference wrapper).
    """
    true_returns: list[float] = []
    learned_returns: list[float] = []
    obs, _ = venv.reset(seed=seed)
    true_sum = learned_sum = 0.0
    while len(true_returns) < episodes:
        obs, reward, terminated, truncated, info = venv.step(predict(obs))
        true_sum += float(info["true_reward"][0]) if "true_reward" in info else float(reward[0])
        learned_sum += float(reward[0])
        if terminated[0] or truncated[0]:
            true_returns.append(true_sum)
            learned_returns.append(learned_sum)
            true_sum = learned_sum = 0.0
            obs, _ = venv.reset()
    return true_returns, learned_returns
