"""Two recommendation sessions as tables for a human labeller (a :class:`PairPresenter`).

A segment holds flat observations and actions only, so each step is decoded from them with the
env's catalog and observation layout (:class:`~envs.recommendation.simulator.ObsLayout`):

- **shown**: the action's one-hot slots pick candidates of ``obs[t]``; each candidate's features
  (topic vector, length, popularity) are matched to the catalog's to name the item (its id, main
  topic and length). A candidate repeated in a slate is shown once, as the env does.
- **clicked**: ``obs[t + 1]``'s last-click flag; which item: the consumed topic vector, recovered
  from the profile update ``p' = decay * p + (1 - decay) * topic`` of the observed (scaled)
  profile, matched to the slate's candidates.
- **watched**: ``obs[t + 1]``'s last watch time (minutes).
- **left early**: the observation does not hold the user's time budget, so a leave is read from
  the segment's length: one shorter than the other segment of the pair that ends before the
  horizon was cut where the user left (``sample_segment_pairs`` cuts segments only there). Two
  segments that both end with a leave after the same number of steps are not marked.

Item quality, the hidden utility and the true rewards are never shown: a person judges what the
user did, not the answer key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from envs.recommendation.env import RecommendationEnv
from prefenv.presenters import check_stem
from prefenv.records import Segment

__all__ = ["SessionPresenter"]


class SessionPresenter:
    """Show each segment of a query as a session table (one row per step).

    Columns: ``step`` (the session step, 1-based), one column per slate slot (``"item 812 ·
    topic 7 · 3.2 min"``, or ``"—"`` for an empty or repeated slot), ``clicked`` (``"slot 2:
    item 812"`` or ``"no click"``) and ``watched (min)``.

    Args:
        env: a recommendation env (``gymnasium.make("prefenv/RecSlate-v0", ...)`` with the
            run's env kwargs: the catalog, candidate count and slate size must be the run's).

    Raises:
        TypeError: ``env`` is not a :class:`~envs.recommendation.env.RecommendationEnv`.
    """

    def __init__(self, env: gym.Env) -> None:
        base = env.unwrapped
        if not isinstance(base, RecommendationEnv):
            raise TypeError(
                f"SessionPresenter shows RecommendationEnv sessions, got {type(base).__name__}"
            )
        sim = base.sim
        self.layout = base.layout
        self.config = sim.config
        self.catalog = sim.catalog
        self.max_length = sim.max_length
        space = base.action_space
        self.n_slots = 1 if isinstance(space, gym.spaces.Discrete) else len(space.nvec)
        self._features = np.concatenate(
            [
                self.catalog.topics,
                (self.catalog.length / self.max_length)[:, None],
                self.catalog.popularity[:, None],
            ],
            axis=1,
        )

    @property
    def columns(self) -> list[str]:
        """The table's column names."""
        slots = [f"slot {i + 1}" for i in range(self.n_slots)]
        return ["step", *slots, "clicked", "watched (min)"]

    def present(
        self, segment0: Segment, segment1: Segment, folder: Path, stem: str
    ) -> dict[str, Any]:
        """The ``"sessions"`` media dict (nothing is written to ``folder``)."""
        check_stem(stem)
        longest = max(len(segment0), len(segment1))
        return {
            "kind": "sessions",
            "columns": self.columns,
            "left": self.session(segment0, longest),
            "right": self.session(segment1, longest),
        }

    def session(self, segment: Segment, longest: int) -> dict[str, Any]:
        """``{"rows", "left_early"}`` of one segment; ``longest`` is the pair's longer length."""
        obs, acts = self._check(segment)
        k, horizon = self.layout.n_topics, self.config.horizon
        slots = self._slots(acts)  # [H, S] candidate slot or -1
        rows = []
        for t in range(len(acts)):
            items = self._items(obs[t], slots[t])  # [S] catalog id or -1
            clicked = self._clicked_slot(obs[t], obs[t + 1], slots[t])
            rows.append(
                [
                    int(round(float(obs[t, k]) * horizon)) + 1,
                    *(self._describe(item) for item in items),
                    "no click" if clicked < 0 else f"slot {clicked + 1}: item {items[clicked]}",
                    round(float(obs[t + 1, k + 2]) * self.max_length, 1),
                ]
            )
        at_horizon = round(float(obs[-1, k]) * horizon) >= horizon
        return {"rows": rows, "left_early": bool(len(segment) < longest and not at_horizon)}

    def _check(self, segment: Segment) -> tuple[np.ndarray, np.ndarray]:
        """The segment's float64 ``obs`` and ``acts``, checked against this env's layout."""
        act_dim = self.n_slots * self.layout.n_candidates
        if segment.obs.shape[1] != self.layout.dim or segment.acts.shape[1] != act_dim:
            raise ValueError(
                f"a session segment needs obs of size {self.layout.dim} and one-hot acts of "
                f"size {act_dim}, got {segment.obs.shape[1]} and {segment.acts.shape[1]}: was "
                "it recorded on this env with the same n_candidates and slate_size?"
            )
        return segment.obs.astype(np.float64), segment.acts.astype(np.float64)

    def _slots(self, acts: np.ndarray) -> np.ndarray:
        """``[H, S]`` candidate slots from one-hot acts; a repeated candidate becomes -1."""
        slots = acts.reshape(len(acts), self.n_slots, -1).argmax(axis=2)
        for row in slots:
            _, first = np.unique(row, return_index=True)
            repeated = np.setdiff1d(np.arange(len(row)), first)
            row[repeated] = -1
        return slots

    def _candidates(self, obs_t: np.ndarray) -> np.ndarray:
        """``[C, K + 2]`` candidate features of one observation."""
        return obs_t[self.layout.user_dim :].reshape(self.layout.n_candidates, -1)

    def _items(self, obs_t: np.ndarray, slots: np.ndarray) -> list[int]:
        """Catalog ids of the slate's candidates (-1 for an empty slot)."""
        shown = self._candidates(obs_t)[np.maximum(slots, 0)]  # [S, K + 2]
        distance = ((shown[:, None, :] - self._features[None]) ** 2).sum(axis=2)
        ids = distance.argmin(axis=1)
        return [int(i) if s >= 0 else -1 for i, s in zip(ids, slots, strict=True)]

    def _clicked_slot(self, obs_t: np.ndarray, obs_next: np.ndarray, slots: np.ndarray) -> int:
        """The slate position the user clicked, or -1 (the slate's item whose topic was consumed)."""
        k = self.layout.n_topics
        if obs_next[k + 1] < 0.5:
            return -1
        decay = self.config.profile_decay
        consumed = (obs_next[:k] - decay * obs_t[:k]) / (1.0 - decay)
        topics = self._candidates(obs_t)[np.maximum(slots, 0), :k]
        distance = ((topics - consumed) ** 2).sum(axis=1)
        distance[slots < 0] = np.inf
        return int(distance.argmin())

    def _describe(self, item: int) -> str:
        """One slate cell: the item's id, main topic and length."""
        if item < 0:
            return "—"
        topic, minutes = int(self.catalog.cluster[item]), float(self.catalog.length[item])
        return f"item {item} · topic {topic} · {minutes:.1f} min"
