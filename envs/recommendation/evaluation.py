"""Held-out evaluation of a recommender: long-term true utility, clicks and satisfaction per session.

One batched :class:`~envs.recommendation.env.RecommendationVectorEnv` runs one full session per
user (no autoreset is used: each user's first session is the one measured), so every policy is
scored on the same users, candidates and choice draws for a given seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.recommendation.env import RecommendationVectorEnv

__all__ = ["SessionMetrics", "evaluate_sessions"]

_TERMS = ("true_reward", "clicks", "engagement", "satisfaction", "diversity")


@dataclass(frozen=True)
class SessionMetrics:
    """Per-session means over the evaluated users.

    Attributes:
        utility: hidden true utility (sum of ``info["true_reward"]`` over the session).
        clicks: clicks per session.
        engagement: minutes watched per session.
        satisfaction: summed satisfaction per session.
        diversity: summed diversity per session.
        length: steps per session (the horizon unless users leave).
        click_rate: clicks per recommendation step (``clicks / length`` over all sessions).
        sessions: number of sessions evaluated.
    """

    utility: float
    clicks: float
    engagement: float
    satisfaction: float
    diversity: float
    length: float
    click_rate: float
    sessions: int


def evaluate_sessions(
    predict: Callable[[np.ndarray], Any],
    sessions: int = 256,
    seed: int = 12345,
    **env_kwargs: Any,
) -> SessionMetrics:
    """Run ``predict(obs [N, D]) -> actions`` for one full session of each of ``sessions`` users.

    Args:
        predict: batched policy (e.g. ``agent.predict`` or a numpy production policy).
        sessions: users evaluated side by side.
        seed: reset seed (user ``i`` is seeded ``seed + i``, Gymnasium's vector-env convention).
        **env_kwargs: :class:`RecommendationVectorEnv` constructor arguments (``slate_size``,
            ``sim_config``, ``objective_weights`` ...), which must match what ``predict`` expects.
    """
    env = RecommendationVectorEnv(sessions, **env_kwargs)
    obs, _ = env.reset(seed=seed)
    totals = {k: np.zeros(sessions) for k in _TERMS}
    length = np.zeros(sessions)
    done = np.zeros(sessions, dtype=bool)
    while not done.all():
        obs, _, terminated, truncated, info = env.step(predict(obs))
        live = ~done
        for key in _TERMS:
            totals[key][live] += info[key][live]
        length[live] += 1
        done |= terminated | truncated
    return SessionMetrics(
        utility=float(totals["true_reward"].mean()),
        clicks=float(totals["clicks"].mean()),
        engagement=float(totals["engagement"].mean()),
        satisfaction=float(totals["satisfaction"].mean()),
        diversity=float(totals["diversity"].mean()),
        length=float(length.mean()),
        click_rate=float(totals["clicks"].sum() / length.sum()),
        sessions=sessions,
    )
