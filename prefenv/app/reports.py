"""What a run folder shows a reader: ``rounds.csv``, the learning curve, the summary, evaluation,

Over 400 lines: every report of a run (CSV, TensorBoard events, summary, plot) reads the same round
metrics, and splitting them would split one format's rules across files.
and the round metrics as TensorBoard scalars beside the agent's.

Every file writer here replaces its file atomically, so a run killed mid-round leaves the previous
round's report intact. When rounds finished no episode, the summary and the plot say so (with the
fix) instead of showing NaN and blank axes.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

import gymnasium as gym
import numpy as np

from prefenv.app.spec import TrainSpec, write_json_atomic
from prefenv.atomic import atomic_write
from prefenv.loop import RoundMetrics
from prefenv.reward_training import MemberTrainMetrics, RewardTrainMetrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "ROUND_EVENTS_DIR",
    "RoundEventWriter",
    "EpisodeReturns",
    "episode_returns",
    "learning_curve_figure",
    "no_episode_warning",
    "plot_learning_curve",
    "round_from_dict",
    "round_scalars",
    "write_rounds_csv",
    "write_summary",
]

logger = logging.getLogger(__name__)

_CSV_FIELDS = (
    "round timesteps labels_used labels_this_round skipped_this_round true_return "
    "learned_return return_correlation episodes hacking_alarm seconds"
).split()

ROUND_EVENTS_DIR = "rounds"
"""Subfolder of a run's ``agent_logs/`` holding the round events (its own TensorBoard run, so
its files never clash with the agent's events, and a resume purge touches only round tags)."""
_EVENT_FIELDS = (
    "true_return learned_return return_correlation labels_used labels_this_round "
    "skipped_this_round episodes hacking_alarm seconds"
).split()
_RM_EVENT_FIELDS = ("val_accuracy", "val_loss", "train_accuracy", "self_predictive_loss")
_RETURN_KEYS = ("final_true_return", "final_learned_return", "best_true_return")


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


def round_scalars(metrics: RoundMetrics) -> dict[str, float]:
    """One round's TensorBoard scalars, tag -> value; NaN values (no episode, no split) left out.

    Tags: ``rounds/<field>`` for the round's own fields (``hacking_alarm`` as 0/1) and
    ``rounds/rm_<field>`` for the reward model's ``val_accuracy``, ``val_loss``,
    ``train_accuracy`` (the ``rm_`` names of ``rounds.csv``).
    """
    row = dataclasses.asdict(metrics)
    scalars = {f"rounds/{name}": float(row[name]) for name in _EVENT_FIELDS}
    scalars |= {f"rounds/rm_{name}": float(row["reward_model"][name]) for name in _RM_EVENT_FIELDS}
    return {tag: value for tag, value in scalars.items() if not math.isnan(value)}


class RoundEventWriter:
    """Writes each round's :func:`round_scalars` to TensorBoard, at step ``metrics.timesteps``.

    A run's writer goes in ``<out>/agent_logs/rounds/`` (:data:`ROUND_EVENTS_DIR`), beside the
    agent's own events in ``agent_logs/``: TensorBoard pointed at ``agent_logs`` shows both.
    Without the ``tensorboard`` package (the ``logging`` extra) it logs one warning and writes
    nothing.

    Each round is written once: the caller writes every round that :meth:`PreferenceLoop.step`
    returns, **before** checkpointing it. A resumed run opens a new writer (a new event file in
    the same folder) with ``resumed_at_step`` = the timesteps of the last checkpointed round: the
    new event file starts with TensorBoard's restart marker (``SummaryWriter(purge_step=...)``),
    which hides every older event at a later step: a round a killed process wrote but never
    checkpointed, and that the resumed run redoes. So no round shows twice, and the rounds already
    checkpointed are kept, not written again.

    Args:
        log_dir: the folder of the event files (created if missing).
        resumed_at_step: env steps of the last checkpointed round when resuming; None for a new run.
    """

    def __init__(self, log_dir: Path, resumed_at_step: int | None = None) -> None:
        self.log_dir = Path(log_dir)
        self._tb: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # tensorboard is in the optional `logging` extra
            logger.warning(
                "round metrics are not written to TensorBoard (%s): install the logging extra, "
                "pip install 'prefenv[logging]'; rounds.csv still has them",
                exc,
            )
            return
        purge_step = None if resumed_at_step is None else resumed_at_step + 1
        self._tb = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)

    def write(self, metrics: RoundMetrics) -> None:
        """Add one round's scalars and flush them to disk (a killed run keeps what it wrote)."""
        if self._tb is None:
            return
        for tag, value in round_scalars(metrics).items():
            self._tb.add_scalar(tag, value, metrics.timesteps)
        self._tb.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> RoundEventWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def no_episode_warning(history: Sequence[RoundMetrics], spec: TrainSpec) -> str | None:
    """What to tell the reader when the last round(s) finished no episode, with the fix; else None.

    ``RoundMetrics.episodes`` counts the episodes finished during a round's training chunk (the
    env steps after its refit; round 0's start after the initial ``spec.initial_steps``), so the
    message gives the env steps each sub-env ran per such round.

    Args:
        history: the run's rounds, oldest first (at least one).
        spec: the run's settings (env id, ``n_envs``, ``initial_steps``).
    """
    empty = 0
    while empty < len(history) and history[-1 - empty].episodes == 0:
        empty += 1
    if empty == 0:
        return None
    first = len(history) - empty
    start = history[first - 1].timesteps if first > 0 else spec.initial_steps
    steps = max(history[-1].timesteps - start, 0)
    rounds = (
        f"round {history[first].round}"
        if empty == 1
        else f"rounds {history[first].round} to {history[-1].round}"
    )
    budget = (
        f"each of the {spec.n_envs} sub-envs ran about {steps / empty / spec.n_envs:,.0f} env "
        f"steps per round ({steps:,} in all) without ending an episode of {spec.env}"
    )
    fix = (
        "Raise --steps, or lower --rounds or --n-envs, so that every sub-env finishes an episode "
        "each round"
    )
    if first == 0:
        return (
            f"no episode finished in {rounds} (every round of the run): {budget}, so the true "
            f"and learned returns are unknown. {fix}"
        )
    return (
        f"no episode finished in {rounds} (the run's latest): {budget}; the final returns are "
        f"those of round {history[first - 1].round}. {fix}"
    )


def learning_curve_figure(history: Sequence[RoundMetrics], spec: TrainSpec) -> Figure:
    """True and learned return vs env steps (two y axes), labels used, reward-model accuracy.

    Only rounds that finished an episode have a return; without any, the return axes carry a
    centred "no episode finished" text instead of staying blank. The caller closes the figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_labels) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=[3, 1.4])
    _plot_returns(ax, history)
    ax.set_title(f"{spec.env} | {spec.agent} | teacher {spec.teacher} | seed {spec.seed}")
    steps = [m.timesteps for m in history]
    ax_labels.plot(steps, [m.labels_used for m in history], "o-", color="tab:green")
    ax_labels.set_ylabel("labels used", color="tab:green")
    ax_labels.set_xlabel("env steps")
    acc_ax = ax_labels.twinx()
    acc_ax.plot(steps, [m.reward_model.val_accuracy for m in history], "x:", color="tab:purple")
    acc_ax.set_ylabel("RM held-out acc.", color="tab:purple")
    acc_ax.set_ylim(0.4, 1.02)
    ax_labels.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _plot_returns(ax: Any, history: Sequence[RoundMetrics]) -> None:
    """The return panel: the rounds with episodes as lines, the others named in a text."""
    with_episodes = [m for m in history if m.episodes > 0]
    steps = [m.timesteps for m in with_episodes]
    ax.plot(steps, [m.true_return for m in with_episodes], "o-", color="tab:blue")
    ax.set_ylabel("true return (hidden)", color="tab:blue")
    learned_ax = ax.twinx()
    learned_ax.plot(steps, [m.learned_return for m in with_episodes], "s--", color="tab:orange")
    learned_ax.set_ylabel("learned return", color="tab:orange")
    for m in history:
        if m.hacking_alarm:
            ax.axvline(m.timesteps, color="tab:red", alpha=0.3)
    ax.grid(alpha=0.3)
    empty = [str(m.round) for m in history if m.episodes == 0]
    if not with_episodes:
        ax.set_xlim(0, max(history[-1].timesteps, 1))
        ax.set_yticks([])  # no return to scale
        learned_ax.set_yticks([])
        text = f"no episode finished\nin {history[-1].timesteps:,} env steps (see summary.md)"
        ax.text(
            0.5,
            0.5,
            text,
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=14,
            color="tab:red",
        )
    elif empty:
        text = f"no episode finished in round{'s' if len(empty) > 1 else ''} {', '.join(empty)}"
        ax.text(0.01, 0.98, text, transform=ax.transAxes, ha="left", va="top", color="tab:red")


def plot_learning_curve(history: Sequence[RoundMetrics], path: Path, spec: TrainSpec) -> None:
    """Write :func:`learning_curve_figure` to ``path`` (PNG) atomically."""
    import matplotlib.pyplot as plt

    fig = learning_curve_figure(history, spec)
    try:
        atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=110), binary=True)
    finally:
        plt.close(fig)


def write_summary(
    out: Path, spec: TrainSpec, history: list[RoundMetrics], elapsed: float, on_policy: bool
) -> dict[str, Any]:
    """``summary.json`` and ``summary.md`` of a run's rounds so far; returns the summary.

    NaN values (no episode, no validation split) are None in the summary (``null`` in the JSON).
    ``episodes_finished`` totals the rounds' episodes; ``warning`` is :func:`no_episode_warning`
    (None when the last round finished an episode), shown at the top of ``summary.md``.

    Args:
        out: the run folder.
        spec: the run's settings.
        history: its rounds, oldest first (at least one).
        elapsed: wall-clock seconds over every process that worked on the run.
        on_policy: whether the agent is on-policy (its ``timesteps`` round up to rollouts).
    """
    last = history[-1]
    finished = [m for m in history if m.episodes > 0]
    summary = {
        "env": spec.env,
        "agent": spec.agent,
        "on_policy": on_policy,
        "teacher": spec.teacher,
        "seed": spec.seed,
        "preset": spec.preset,
        "hparams": spec.hparams,
        "timesteps": last.timesteps,
        "labels_used": last.labels_used,
        # labels trained on, by source: people (--teacher human) and simulated teachers
        "labels_human": sum(m.human_labels for m in history),
        "labels_simulated": sum(m.labels_this_round - m.human_labels for m in history),
        "episodes_finished": sum(m.episodes for m in history),
        "final_true_return": finished[-1].true_return if finished else None,
        "final_learned_return": finished[-1].learned_return if finished else None,
        "final_return_round": finished[-1].round if finished else None,
        "best_true_return": max((m.true_return for m in finished), default=None),
        **_final_eval(out / "final_eval.json"),
        "reward_model_val_accuracy": last.reward_model.val_accuracy,
        "return_correlation": last.return_correlation,
        "hacking_alarms": [m.round for m in history if m.hacking_alarm],
        "warning": no_episode_warning(history, spec),
        "wall_clock_s": round(elapsed, 1),
        "plot": str(out / "learning_curve.png"),
        "store": str(out / "comparisons.sqlite"),
    }
    summary = {
        k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()
    }
    write_json_atomic(out / "summary.json", summary)
    atomic_write(out / "summary.md", lambda handle: handle.write(_markdown(summary, spec)))
    return summary


def _final_eval(path: Path) -> dict[str, Any]:
    """The final evaluation's figures, flat: both modes' mean true return and episode length."""
    if not path.is_file():
        return {}
    result = json.loads(path.read_text())
    figures = {"eval_episodes": result["episodes"]}
    for mode in ("deterministic", "sampled"):
        figures |= {f"eval_{mode}_return": result[mode]["true_return_mean"],
                    f"eval_{mode}_length": result[mode]["length_mean"]}  # fmt: skip
    return figures


def _markdown(summary: dict[str, Any], spec: TrainSpec) -> str:
    def fmt(key: str, value: Any) -> str:
        if value is None:
            return "no episode finished" if key in _RETURN_KEYS else "n/a"
        if isinstance(value, float):
            return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
        return str(value)

    warning = f"> **Warning: {summary['warning']}**\n\n" if summary["warning"] else ""
    rows = "\n".join(f"| {k} | {fmt(k, v)} |" for k, v in summary.items() if k != "warning")
    return (
        f"# prefenv run: {spec.env} / {spec.agent} / teacher {spec.teacher}\n\n{warning}"
        f"| field | value |\n|---|---|\n{rows}\n\n"
        f"![learning curve](learning_curve.png)\n"
    )


class EpisodeReturns(NamedTuple):
    """Per-episode results of :func:`episode_returns`, in episode order."""

    true: list[float]
    """True returns (``info["true_reward"]`` when reported, else the env reward)."""
    learned: list[float]
    """Returns of the reward the env gave (the learned reward under a preference wrapper)."""
    lengths: list[int]
    """Steps per episode."""

    def summary(self) -> dict[str, float]:
        """Mean / std of the true return, mean learned return and mean length."""
        return {
            "true_return_mean": float(np.mean(self.true)),
            "true_return_std": float(np.std(self.true)),
            "learned_return_mean": float(np.mean(self.learned)),
            "length_mean": float(np.mean(self.lengths)),
        }


def episode_returns(
    venv: gym.vector.VectorEnv,
    predict: Callable[[Any], np.ndarray],
    episodes: int,
    seed: int,
) -> EpisodeReturns:
    """Run ``predict(obs) -> actions`` on sub-env 0 of ``venv`` for ``episodes`` full episodes."""
    results = EpisodeReturns([], [], [])
    obs, _ = venv.reset(seed=seed)
    true_sum = learned_sum = 0.0
    length = 0
    while len(results.true) < episodes:
        obs, reward, terminated, truncated, info = venv.step(predict(obs))
        true_sum += float(info["true_reward"][0]) if "true_reward" in info else float(reward[0])
        learned_sum += float(reward[0])
        length += 1
        if terminated[0] or truncated[0]:
            results.true.append(true_sum)
            results.learned.append(learned_sum)
            results.lengths.append(length)
            true_sum = learned_sum = 0.0
            length = 0
            obs, _ = venv.reset()
    return results
