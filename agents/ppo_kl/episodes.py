"""Per-episode bookkeeping during rollouts: env reward, true reward, length, KL to reference."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def true_rewards_from_infos(
    infos: dict[str, Any], num_envs: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """``info["true_reward"]`` of a vector step as (values ``[N]``, present mask ``[N]``), or None.

    Gymnasium vector envs give infos as a dict of arrays, with ``infos["_true_reward"]`` marking
    which envs reported the key.
    """
    if "true_reward" not in infos:
        return None
    values = np.asarray(infos["true_reward"], dtype=np.float64).reshape(num_envs)
    mask = np.asarray(infos.get("_true_reward", np.ones(num_envs, dtype=bool)), dtype=bool)
    return np.where(mask, values, 0.0), mask


@dataclass
class FinishedEpisodes:
    """Episodes that ended during one rollout (lists of equal length)."""

    rewards: list[float] = field(default_factory=list)
    true_returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    kl_sums: list[float] = field(default_factory=list)


class EpisodeTracker:
    """Accumulates per-env episode statistics over valid (unmasked) steps."""

    def __init__(self, num_envs: int) -> None:
        self.num_envs = num_envs
        self.finished = FinishedEpisodes()
        self.reset()

    def reset(self) -> None:
        """Drop the episodes in flight (after an env reset)."""
        n = self.num_envs
        self.returns = np.zeros(n)
        self.true_returns = np.zeros(n)
        self.has_true = np.zeros(n, dtype=bool)
        self.lengths = np.zeros(n, dtype=np.int64)
        self.kl_sums = np.zeros(n)

    def step(
        self,
        rewards: np.ndarray,
        kl: np.ndarray | None,
        true: tuple[np.ndarray, np.ndarray] | None,
        dones: np.ndarray,
        valid: np.ndarray,
    ) -> None:
        """Fold in one vector step (``[N]`` arrays; invalid entries are ignored)."""
        self.returns += np.where(valid, rewards, 0.0)
        self.lengths += valid
        if kl is not None:
            self.kl_sums += np.where(valid, kl, 0.0)
        if true is not None:
            values, mask = true
            present = mask & valid
            self.true_returns += np.where(present, values, 0.0)
            self.has_true |= present
        for i in np.flatnonzero(dones & valid):
            self.finished.rewards.append(float(self.returns[i]))
            self.finished.true_returns.append(
                float(self.true_returns[i]) if self.has_true[i] else float("nan")
            )
            self.finished.lengths.append(int(self.lengths[i]))
            self.finished.kl_sums.append(float(self.kl_sums[i]) if kl is not None else float("nan"))
            self.returns[i] = self.true_returns[i] = self.kl_sums[i] = 0.0
            self.lengths[i] = 0
            self.has_true[i] = False

    def pop_finished(self) -> FinishedEpisodes:
        """Episodes finished since the last call."""
        out, self.finished = self.finished, FinishedEpisodes()
        return out
