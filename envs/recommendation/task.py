"""The recommendation task both envs share: objectives, reward choice, spaces, slate checks.

:class:`TaskSetup` turns the env constructor arguments into what
:class:`~envs.recommendation.env.RecommendationEnv` and
:class:`~envs.recommendation.env.RecommendationVectorEnv` both need: the simulator config, the
observation and action spaces, validated slates of candidate slots (:func:`check_slates`), and
the true utility (the weighted :data:`OBJECTIVES`) or the proxy reward the env returns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
from gymnasium import spaces

from envs.recommendation.catalog import SimConfig
from envs.recommendation.simulator import ObsLayout, StepOutcome

__all__ = [
    "DEFAULT_OBJECTIVE_WEIGHTS",
    "OBJECTIVES",
    "ON_DUPLICATE",
    "REWARDS",
    "TaskSetup",
    "check_slates",
]

OBJECTIVES = ("engagement", "satisfaction", "diversity")
"""The terms of the hidden true utility, each reported per step in ``info``."""

DEFAULT_OBJECTIVE_WEIGHTS: dict[str, float] = {
    "engagement": 0.25,
    "satisfaction": 1.0,
    "diversity": 0.5,
}
"""Default weights of the true utility: mostly satisfaction, some watch time and variety."""

ON_DUPLICATE = ("ignore", "error")

REWARDS = ("utility", "clicks", "engagement")
"""What the env's ``reward`` is: the true utility (default) or a proxy a click-optimising
production system would train on. ``info["true_reward"]`` is always the true utility."""


def check_slates(
    actions: np.ndarray, n_candidates: int, on_duplicate: str = "ignore"
) -> np.ndarray:
    """Validate a batch of slates of candidate slots; return them with repeats emptied.

    Args:
        actions: ``[n, S]`` integers, each a candidate slot in ``0..n_candidates-1``.
        n_candidates: C, the number of candidates in the observation.
        on_duplicate: ``"ignore"`` shows a repeated candidate only in its first slot (later
            repeats become empty slots, ``-1``); ``"error"`` raises.

    Raises:
        ValueError: non-integer actions, slots out of range, or repeats with ``"error"``.
    """
    arr = np.asarray(actions)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind != "f" or not np.all(arr == np.round(arr)):
            raise ValueError(
                f"slate actions must be integer candidate slots, got dtype {arr.dtype} ({arr!r})"
            )
    arr = arr.astype(np.int64)
    bad = (arr < 0) | (arr >= n_candidates)
    if bad.any():
        raise ValueError(
            f"slate slot {int(arr[bad][0])} is out of range: actions index the {n_candidates} "
            f"candidates of the observation (0..{n_candidates - 1}), not catalog item ids"
        )
    s = arr.shape[1]
    if s < 2:
        return arr
    earlier = np.triu(np.ones((s, s), dtype=bool), k=1)  # earlier[j, k]: j < k
    repeat = ((arr[:, :, None] == arr[:, None, :]) & earlier[None]).any(axis=1)  # [n, S]
    if repeat.any():
        if on_duplicate == "error":
            row = arr[int(np.flatnonzero(repeat.any(axis=1))[0])]
            raise ValueError(
                f"slate {row.tolist()} shows the same candidate twice; use distinct slots or "
                "create the env with on_duplicate='ignore' to show repeats as empty slots"
            )
        arr = np.where(repeat, -1, arr)
    return arr


def _validate_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    if weights is None:
        return dict(DEFAULT_OBJECTIVE_WEIGHTS)
    unknown = sorted(set(weights) - set(OBJECTIVES))
    if unknown:
        raise ValueError(
            f"objective_weights has unknown terms {unknown}: valid terms are {list(OBJECTIVES)}"
        )
    out = {k: float(weights.get(k, 0.0)) for k in OBJECTIVES}
    if not all(math.isfinite(w) for w in out.values()) or not any(out.values()):
        raise ValueError(
            f"objective_weights must be finite and not all zero, got {dict(weights)}: e.g. "
            "{'satisfaction': 1.0} for a teacher who only cares about satisfaction"
        )
    return out


class TaskSetup:
    """What both env classes build from the same constructor arguments."""

    def __init__(
        self,
        n_items: int,
        n_candidates: int,
        slate_size: int | None,
        horizon: int,
        objective_weights: Mapping[str, float] | None,
        on_duplicate: str,
        sim_config: SimConfig | None,
        reward: str = "utility",
    ) -> None:
        if reward not in REWARDS:
            raise ValueError(
                f"reward must be one of {REWARDS}, got {reward!r}: 'clicks' trains on the click "
                "proxy, 'utility' on the hidden true utility"
            )
        self.reward = reward
        if slate_size is not None and not 1 <= slate_size <= n_candidates:
            raise ValueError(
                f"slate_size must be in 1..n_candidates ({n_candidates}) or None for the "
                f"single-item (Discrete) variant, got {slate_size}"
            )
        if on_duplicate not in ON_DUPLICATE:
            raise ValueError(f"on_duplicate must be one of {ON_DUPLICATE}, got {on_duplicate!r}")
        self.config = replace(
            sim_config if sim_config is not None else SimConfig(),
            n_items=n_items,
            n_candidates=n_candidates,
            horizon=horizon,
        )
        self.slate_size = slate_size
        self.weights = _validate_weights(objective_weights)
        self.on_duplicate = on_duplicate
        layout = ObsLayout(self.config.n_topics, n_candidates)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(layout.dim,), dtype=np.float32)
        self.action_space: spaces.Space = (
            spaces.Discrete(n_candidates)
            if slate_size is None
            else spaces.MultiDiscrete(np.full(slate_size, n_candidates, dtype=np.int64))
        )

    def slates(self, actions: Any, n: int) -> np.ndarray:
        """Actions of ``n`` users -> validated ``[n, S]`` slates."""
        s = 1 if self.slate_size is None else self.slate_size
        arr = np.asarray(actions)
        if arr.size != n * s:
            expected = "an int" if self.slate_size is None else f"{s} ints"
            raise ValueError(
                f"expected {expected} per user ({n} users), got an action of shape {arr.shape}"
            )
        return check_slates(arr.reshape(n, s), self.config.n_candidates, self.on_duplicate)

    def rewards(self, out: StepOutcome) -> np.ndarray:
        """``[n]`` true utility of a step: the weighted objectives."""
        w = self.weights
        return (
            w["engagement"] * out.engagement
            + w["satisfaction"] * out.satisfaction
            + w["diversity"] * out.diversity
        )

    def env_rewards(self, out: StepOutcome, utility: np.ndarray) -> np.ndarray:
        """``[n]`` reward the env returns: the utility or the configured proxy."""
        if self.reward == "clicks":
            return (out.clicked_slot >= 0).astype(np.float64)
        if self.reward == "engagement":
            return np.asarray(out.engagement, dtype=np.float64)
        return utility
