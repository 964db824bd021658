"""The one per-episode return accountant: learned and true returns, lengths, from vector steps.

Every consumer of finished-episode statistics (PPO-KL's iteration metrics, the trajectory
recorder the preference loop reads, the SB3 bridge's ``info["episode"]`` records, the text
monitor) folds vector-env steps through :class:`EpisodeAccountant`, so the Gymnasium autoreset
conventions are handled in this one place:

- ``NEXT_STEP`` (Gymnasium's default): the step that ends an episode returns its final
  observation; the sub-env resets on its *next* step, ignoring that step's action and returning
  reward 0. That reset step belongs to no episode: it is reported with ``valid=False`` and left
  out of every sum.
- ``SAME_STEP``: a finished sub-env resets within the step that ends it. Its step info then lives
  in ``infos["final_info"]`` (the top level holds its reset info), so the true reward of that
  last step is read from there.
- ``DISABLED`` (the caller resets finished sub-envs), or a single non-vector env stepped as a
  batch of one: the step after an episode ends starts the next episode.

The true reward is ``info["true_reward"]`` (the hidden task reward a learned-reward wrapper keeps
for teachers); the learned return is the sum of the rewards the agent saw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
from gymnasium.vector import AutoresetMode

__all__ = ["EpisodeAccountant", "EpisodeStats", "StepAccount", "step_true_rewards"]


@dataclass(frozen=True)
class EpisodeStats:
    """Returns of one finished episode.

    Attributes:
        true_return: sum of the hidden true reward (``info["true_reward"]``); ``nan`` when the env
            never reported it (unless the accountant counts the env's reward as true).
        learned_return: sum of the reward the agent saw (the learned reward under a wrapper).
        length: number of steps.
        terminated: the episode ended by termination (else by truncation).
        kl_sum: sum of the per-step KL to the reference policy; ``nan`` when none was given.
        env_index: the sub-env the episode ran in.
    """

    true_return: float
    learned_return: float
    length: int
    terminated: bool = False
    kl_sum: float = math.nan
    env_index: int = 0


class StepAccount(NamedTuple):
    """What one vector step did to the episodes in flight."""

    valid: np.ndarray
    """``[N]`` bool: the sub-env's step belonged to an episode (False: a NEXT_STEP reset step)."""
    true_rewards: np.ndarray
    """``[N]`` float64 true reward of the step as counted (``nan`` where unreported and not
    counted)."""
    finished: list[EpisodeStats]
    """The episodes this step ended, in sub-env order."""


def step_true_rewards(infos: Mapping[str, Any], num_envs: int) -> tuple[np.ndarray, np.ndarray]:
    """The true rewards one vector step reported: values ``[N]`` (0 where absent), mask ``[N]``.

    Reads ``infos["true_reward"]`` with its ``_true_reward`` presence mask, then, for sub-envs a
    SAME_STEP vector env reset within the step, ``infos["final_info"]["true_reward"]`` (their own
    step info, which wins). A single env's info dict (a scalar ``true_reward``) reads as
    ``num_envs=1``.
    """
    values = np.zeros(num_envs)
    reported = np.zeros(num_envs, dtype=bool)
    for source in (infos, infos.get("final_info") or {}):
        if "true_reward" not in source:
            continue
        present = np.ones(num_envs, dtype=bool)
        if "_true_reward" in source:
            present = np.asarray(source["_true_reward"], dtype=bool).reshape(num_envs)
        step_values = np.asarray(source["true_reward"], dtype=np.float64).reshape(num_envs)
        values = np.where(present, step_values, values)
        reported |= present
    return values, reported


class EpisodeAccountant:
    """Per-sub-env sums of learned and true reward, length and KL; a record per finished episode.

    Args:
        num_envs: N, the number of sub-envs (1 for a single env).
        autoreset_mode: the vector env's autoreset mode (see the module docstring); a single env
            is ``DISABLED``.
        unreported_true: what a step without ``info["true_reward"]`` adds to the true return:
            ``"nan"`` leaves it out (an episode that never reports one has a ``nan`` true return:
            the hidden return is unknown); ``"reward"`` counts the env's own reward as true (an
            env without a learned-reward wrapper is scored on its task reward).

    Usage: call :meth:`reset` whenever the env is reset, and :meth:`step` with every vector step.
    """

    def __init__(
        self,
        num_envs: int,
        autoreset_mode: AutoresetMode = AutoresetMode.NEXT_STEP,
        unreported_true: Literal["nan", "reward"] = "nan",
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"EpisodeAccountant needs num_envs >= 1, got {num_envs}")
        if unreported_true not in ("nan", "reward"):
            raise ValueError(f"unreported_true must be 'nan' or 'reward', got {unreported_true!r}")
        self.num_envs = num_envs
        self.autoreset_mode = AutoresetMode(autoreset_mode)
        self.unreported_true = unreported_true
        self.reset()

    def reset(self) -> None:
        """Drop every episode in flight (the env was reset)."""
        n = self.num_envs
        self._learned = np.zeros(n)
        self._true = np.zeros(n)
        self._has_true = np.zeros(n, dtype=bool)
        self._kl = np.zeros(n)
        self._has_kl = np.zeros(n, dtype=bool)
        self._lengths = np.zeros(n, dtype=np.int64)
        self._resetting = np.zeros(n, dtype=bool)

    def step(
        self,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        infos: Mapping[str, Any],
        kl: np.ndarray | None = None,
    ) -> StepAccount:
        """Fold in one vector step.

        Args:
            rewards: ``[N]`` rewards the agent saw.
            terminated: ``[N]`` bool.
            truncated: ``[N]`` bool.
            infos: the step's info (Gymnasium's dict of arrays with ``_key`` masks).
            kl: optional ``[N]`` per-step KL to a reference policy.

        Returns:
            Which sub-envs' steps counted, and the episodes that ended.
        """
        n = self.num_envs
        rewards = np.asarray(rewards, dtype=np.float64).reshape(n)
        terminated = np.asarray(terminated, dtype=bool).reshape(n)
        done = terminated | np.asarray(truncated, dtype=bool).reshape(n)
        valid = ~self._resetting
        true, reported = step_true_rewards(infos, n)
        if self.unreported_true == "reward":
            true, reported = np.where(reported, true, rewards), np.ones(n, dtype=bool)
        self._learned += np.where(valid, rewards, 0.0)
        self._true += np.where(valid & reported, true, 0.0)
        self._has_true |= valid & reported
        self._lengths += valid
        if kl is not None:
            self._kl += np.where(valid, np.asarray(kl, dtype=np.float64).reshape(n), 0.0)
            self._has_kl |= valid
        finished = [self._close(i, bool(terminated[i])) for i in np.flatnonzero(done & valid)]
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            self._resetting = done & valid
        return StepAccount(valid, np.where(reported, true, math.nan), finished)

    def _close(self, i: int, terminated: bool) -> EpisodeStats:
        stats = EpisodeStats(
            true_return=float(self._true[i]) if self._has_true[i] else math.nan,
            learned_return=float(self._learned[i]),
            length=int(self._lengths[i]),
            terminated=terminated,
            kl_sum=float(self._kl[i]) if self._has_kl[i] else math.nan,
            env_index=int(i),
        )
        self._learned[i] = self._true[i] = self._kl[i] = 0.0
        self._has_true[i] = self._has_kl[i] = False
        self._lengths[i] = 0
        return stats
