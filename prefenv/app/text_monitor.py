"""Per-iteration monitoring of RL on text: KL, entropy, length, EOS rate, learned vs true score.

:class:`EpisodeLog` wraps the vector text env *above* its learned-reward wrapper and keeps every
finished episode (prompt, completion, the reward the agent saw, the hidden true score, tokens,
whether it ended with EOS). :class:`TextMonitor` is a ``PPOKL.learn`` callback: after each
iteration it drains the log, writes a row to ``monitor.csv`` and a few sampled generations to
``samples.jsonl`` in the run folder, and keeps the rows for the summary and the plot
(:func:`plot_monitor`). The reward-hacking alarm is the core's
(:func:`prefenv.loop.hacking_alarm`), read over the episodes of the last ``alarm_window``
iterations: the text reward model is fixed during PPO, so their learned scores are comparable.
"""

from __future__ import annotations

import csv
import json
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper

from prefenv.episodes import EpisodeAccountant, EpisodeStats
from prefenv.loop import hacking_alarm

__all__ = ["EpisodeLog", "MonitorRow", "TextMonitor", "plot_monitor", "read_monitor"]


def _info_at(infos: Mapping[str, Any], key: str, i: int, default: Any) -> Any:
    """Sub-env ``i``'s entry ``key`` of a vector step's infos (``default`` when it has none)."""
    if key in infos and bool(np.asarray(infos.get(f"_{key}", np.ones(i + 1, bool)))[i]):
        return infos[key][i]
    return default


class EpisodeLog(VectorWrapper):
    """Record each finished episode of a vector text env into a shared list (``episodes``).

    Wrap the learned-reward wrapper (``EpisodeLog(VectorPreferenceReward(venv, predictor), log)``)
    so the recorded ``reward`` is the learned one the agent saw. Each entry:
    ``{"prompt", "completion", "reward", "true_score", "tokens", "eos"}``; the episode's learned
    and true returns (``reward``, ``true_score``: the terminal scores, as a text episode is
    rewarded at its end only) come from :class:`prefenv.episodes.EpisodeAccountant`, which also
    handles the vector env's autoreset mode.
    """

    def __init__(self, env: VectorEnv, episodes: list[dict[str, Any]]) -> None:
        super().__init__(env)
        self.episodes = episodes
        mode = AutoresetMode(env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP))
        self._texts_in_final_info = mode == AutoresetMode.SAME_STEP
        self._accountant = EpisodeAccountant(self.num_envs, mode)

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        self._accountant.reset()
        return self.env.reset(seed=seed, options=options)

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        obs, rewards, terminated, truncated, infos = self.env.step(actions)
        account = self._accountant.step(rewards, terminated, truncated, infos)
        texts = infos.get("final_info", {}) if self._texts_in_final_info else infos
        for stats in account.finished:
            i = stats.env_index
            self.episodes.append(
                {
                    "prompt": str(_info_at(texts, "prompt", i, "")),
                    "completion": str(_info_at(texts, "completion", i, "")),
                    "reward": stats.learned_return,
                    "true_score": stats.true_return,
                    "tokens": int(_info_at(texts, "completion_tokens", i, 0)),
                    "eos": stats.terminated,
                }
            )
        return obs, rewards, terminated, truncated, infos


@dataclass(frozen=True)
class MonitorRow:
    """One PPO iteration on text (``nan`` = not available, e.g. no episode finished)."""

    iteration: int
    timesteps: int
    episodes: int
    learned_score: float
    true_score: float
    correlation: float
    kl_to_ref: float
    kl_coef: float
    entropy: float
    mean_length: float
    eos_rate: float
    policy_loss: float
    value_loss: float
    hacking_alarm: bool


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


class TextMonitor:
    """``PPOKL.learn`` callback writing ``monitor.csv`` and ``samples.jsonl`` into ``out``.

    Args:
        episodes: the list the :class:`EpisodeLog` wrappers append to (drained every iteration).
        out: run folder (created).
        samples_per_iteration: generations written to ``samples.jsonl`` per iteration.
        alarm_window: iterations whose episodes the hacking alarm reads (it stays off until
            that many iterations have run).
    """

    def __init__(
        self,
        episodes: list[dict[str, Any]],
        out: str | Path,
        samples_per_iteration: int = 4,
        alarm_window: int = 5,
    ) -> None:
        self.episodes = episodes
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.samples_per_iteration = samples_per_iteration
        self.alarm_window = alarm_window
        self.rows: list[MonitorRow] = []
        self._window: deque[list[EpisodeStats]] = deque(maxlen=alarm_window)
        self._csv = self.out / "monitor.csv"
        self._samples = self.out / "samples.jsonl"

    def __call__(self, metrics: Any) -> None:
        finished, self.episodes[:] = list(self.episodes), []
        learned = np.array([e["reward"] for e in finished])
        true = np.array([e["true_score"] for e in finished])

        def mean(values: np.ndarray) -> float:
            return float(values.mean()) if values.size else float("nan")

        row = MonitorRow(
            iteration=int(metrics.iteration),
            timesteps=int(metrics.timesteps),
            episodes=len(finished),
            learned_score=mean(learned),
            true_score=mean(true),
            correlation=_pearson(learned, true),
            kl_to_ref=float(metrics.kl_to_ref_episode),
            kl_coef=float(metrics.kl_coef),
            entropy=float(metrics.entropy),
            mean_length=mean(np.array([e["tokens"] for e in finished])),
            eos_rate=mean(np.array([e["eos"] for e in finished], dtype=float)),
            policy_loss=float(metrics.policy_loss),
            value_loss=float(metrics.value_loss),
            hacking_alarm=False,
        )
        row = MonitorRow(**{**asdict(row), "hacking_alarm": self._alarm(finished)})
        self.rows.append(row)
        self._write(row, finished)

    def _alarm(self, finished: list[dict[str, Any]]) -> bool:
        """The core hacking alarm over the episodes of the last ``alarm_window`` iterations."""
        self._window.append(
            [EpisodeStats(e["true_score"], e["reward"], e["tokens"]) for e in finished]
        )
        if len(self._window) < self.alarm_window:
            return False
        return hacking_alarm([stats for iteration in self._window for stats in iteration])

    def _write(self, row: MonitorRow, finished: list[dict[str, Any]]) -> None:
        new_file = not self._csv.exists()
        with open(self._csv, "a", newline="") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow([field.name for field in fields(MonitorRow)])
            writer.writerow(list(asdict(row).values()))
        with open(self._samples, "a", encoding="utf-8") as f:
            for episode in finished[: self.samples_per_iteration]:
                f.write(json.dumps({"iteration": row.iteration, **episode}) + "\n")


def plot_monitor(rows: list[MonitorRow], path: str | Path, title: str = "") -> Path | None:
    """Learned and true score, KL to reference and length vs env steps (PNG); None without data
    or without matplotlib."""
    if not rows:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    steps = [r.timesteps for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(steps, [r.learned_score for r in rows], label="learned score (reward model)")
    axes[0].plot(steps, [r.true_score for r in rows], label="true score (hidden)")
    axes[0].set_ylabel("score per completion")
    axes[0].legend(fontsize=8)
    axes[1].plot(steps, [r.kl_to_ref for r in rows], color="tab:red")
    axes[1].set_ylabel("KL to reference (nats / sequence)")
    axes[2].plot(steps, [r.mean_length for r in rows], color="tab:green", label="mean length")
    axes[2].set_ylabel("tokens per completion")
    twin = axes[2].twinx()
    twin.plot(steps, [r.eos_rate for r in rows], color="tab:gray", ls="--", label="EOS rate")
    twin.set_ylabel("EOS rate")
    for ax in axes:
        ax.set_xlabel("env steps (tokens)")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def read_monitor(path: str | Path) -> list[MonitorRow]:
    """The rows of a ``monitor.csv`` (all iterations, also across resumed runs)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        types = {field.name: field.type for field in fields(MonitorRow)}
        rows = []
        for raw in reader:
            values: dict[str, Any] = {}
            for name, text in raw.items():
                kind = types[name]
                if kind in ("int", int):
                    values[name] = int(text)
                elif kind in ("bool", bool):
                    values[name] = text == "True"
                else:
                    values[name] = float(text)
            rows.append(MonitorRow(**values))
    return rows
