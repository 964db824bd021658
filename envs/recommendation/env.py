"""Gymnasium envs over the recommendation user simulator: one user, or a native batch of users.

:class:`RecommendationEnv` is a plain ``gymnasium.Env`` (one simulated user; registered as
``prefenv/RecSlate-v0`` and ``prefenv/RecSingle-v0``). :class:`RecommendationVectorEnv` is a
native ``gymnasium.vector.VectorEnv`` that steps ``num_envs`` users in one numpy call, and equals
a ``SyncVectorEnv`` of :class:`RecommendationEnv` step for step (same seeds, same actions).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.recommendation.catalog import Catalog, SimConfig
from envs.recommendation.simulator import UserBatchSimulator
from envs.recommendation.task import TaskSetup
from envs.vector_seeding import seed_rows

__all__ = ["RecommendationEnv", "RecommendationVectorEnv"]


class RecommendationEnv(gym.Env):
    """One simulated user's session: each step, recommend a slate (or one item) of candidates.

    The user model is :mod:`envs.recommendation.simulator` (RecSim interest evolution style).

    Observation (``Box(0, 1, (D,), float32)``, ``D = K + 3 + C * (K + 2)``, layout
    :class:`~envs.recommendation.simulator.ObsLayout`): the user's consumption profile (K), session
    progress, last click flag and last watch time, then each of the C candidates' topic vector (K),
    length and popularity. Interests, item quality and the time budget are hidden.

    Action: ``MultiDiscrete([C] * slate_size)``, candidate slots in display order (slot 0 is the
    top; with position bias it is clicked more); ``slate_size=None`` gives the single-item variant
    ``Discrete(C)``. A candidate repeated in a slate is shown only once (``on_duplicate="ignore"``)
    or raises (``"error"``); slots outside ``0..C-1`` always raise ``ValueError``.

    Reward: the true utility ``sum_k w_k * term_k`` over ``engagement`` (watch minutes),
    ``satisfaction`` (quality + affinity of the clicked item) and ``diversity``
    (1 - cosine to the history), all 0 without a click. ``info`` holds ``true_reward`` (the same
    value; a preference-reward wrapper keeps it for teachers), each term, ``clicks`` (0 or 1),
    ``clicked_slot`` and ``item`` (catalog id; both -1 without a click). With
    ``reward="clicks"`` (or ``"engagement"``) the env's reward is that proxy instead (1 per click;
    watch minutes) while ``info["true_reward"]`` stays the true utility: the proxy trap.

    Termination: the user leaves when the session time budget is used up (clickbait and no-click
    steps drain it; high-quality items refund part of their watch time).

    Truncation: after ``horizon`` steps (the env's own limit; the registry adds no ``TimeLimit``).

    Args:
        n_items: catalog size.
        n_candidates: catalog items drawn per step and offered to the agent (C).
        slate_size: items per slate; None = single-item ``Discrete`` actions.
        horizon: steps before truncation.
        objective_weights: weights of ``engagement``, ``satisfaction``, ``diversity`` (missing
            terms weigh 0); None = ``DEFAULT_OBJECTIVE_WEIGHTS``.
        on_duplicate: ``"ignore"`` or ``"error"`` for a slate that repeats a candidate.
        catalog_seed: seed of the catalog (every env with the same seed shares the catalog).
        sim_config: every other user-model parameter; its ``n_items``, ``n_candidates`` and
            ``horizon`` are replaced by the arguments above.
        catalog: a ready-made catalog instead of a generated one (sizes must match).
        reward: ``"utility"`` (default), ``"clicks"`` or ``"engagement"``: what ``step`` returns
            as the reward (see Reward).
        user_pool: ``[M, K]`` initial interests to draw users from (data-driven users, e.g.
            ``envs.recommendation.ratings.world_from_ratings(path).env_kwargs()``); default
            uniform on ``[-1, 1]^K``.
    """

    metadata = {
        "render_modes": [],
        "prefenv_reward_next_obs": True,
        "prefenv_presenter": "envs.recommendation.sessions:SessionPresenter",
    }
    """``prefenv_reward_next_obs``: a learned reward must see ``next_obs`` (the user's click and
    watch time show only there), so training runs build ``r(obs, act, next_obs)`` models.
    ``prefenv_presenter``: a human labeller sees a query as two session tables."""

    def __init__(
        self,
        n_items: int = 2000,
        n_candidates: int = 10,
        slate_size: int | None = 3,
        horizon: int = 50,
        objective_weights: Mapping[str, float] | None = None,
        on_duplicate: str = "ignore",
        catalog_seed: int = 0,
        sim_config: SimConfig | None = None,
        catalog: Catalog | None = None,
        reward: str = "utility",
        user_pool: np.ndarray | None = None,
    ) -> None:
        self._setup = TaskSetup(
            n_items,
            n_candidates,
            slate_size,
            horizon,
            objective_weights,
            on_duplicate,
            sim_config,
            reward,
        )
        self.sim = UserBatchSimulator(1, self._setup.config, catalog, catalog_seed, user_pool)
        self.layout = self.sim.layout
        self.objective_weights = self._setup.weights
        self.observation_space = self._setup.observation_space
        self.action_space = self._setup.action_space
        self._done = True

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.sim.rngs[0] = self.np_random
        self.sim.reset_users([0])
        self._done = False
        return self.sim.observe()[0], {}

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._done:
            raise gym.error.ResetNeeded("the session has ended: call reset() before step()")
        out = self.sim.step(self._setup.slates(action, 1))
        utility = self._setup.rewards(out)
        reward = float(self._setup.env_rewards(out, utility)[0])
        terminated, truncated = bool(out.terminated[0]), bool(out.truncated[0])
        self._done = terminated or truncated
        info = {
            "true_reward": float(utility[0]),
            "engagement": float(out.engagement[0]),
            "satisfaction": float(out.satisfaction[0]),
            "diversity": float(out.diversity[0]),
            "clicks": int(out.clicked_slot[0] >= 0),
            "clicked_slot": int(out.clicked_slot[0]),
            "item": int(out.item[0]),
        }
        return self.sim.observe()[0], reward, terminated, truncated, info


class RecommendationVectorEnv(VectorEnv):
    """``num_envs`` simulated users stepped together in one numpy call.

    Same observation, action, reward, termination and truncation as :class:`RecommendationEnv`
    (see there); constructor arguments as there plus ``num_envs`` and ``autoreset_mode``. Sub-env
    ``i`` reset with ``seed=s`` replays ``RecommendationEnv`` reset with ``seed=s + i``, as
    ``SyncVectorEnv`` seeds its sub-envs, so the two are interchangeable (it is the registered
    ids' ``vector_entry_point``: ``gym.make_vec(id, n, vectorization_mode="vector_entry_point")``).

    ``infos`` hold ``[num_envs]`` arrays of ``true_reward``, ``engagement``, ``satisfaction``,
    ``diversity`` (float64), ``clicks``, ``clicked_slot`` and ``item`` (int64), each with its
    ``_key`` mask, exactly as a ``SyncVectorEnv`` of :class:`RecommendationEnv` reports them.

    Autoreset, as Gymnasium's ``SyncVectorEnv`` does it:

    - ``NEXT_STEP`` (default): the step after a user's session ends resets that user, ignores
      its action and returns reward 0, ``terminated = truncated = False`` and no info keys (the
      ``_key`` masks are False there; with every user resetting, ``infos`` is empty).
    - ``SAME_STEP`` (SB3's convention): a finished user is reset in the same step; its last
      observation is ``infos["final_obs"][i]`` and its step info ``infos["final_info"]`` (dict of
      arrays with masks); the top-level info masks are False for it.
    """

    metadata = {
        "render_modes": [],
        "autoreset_mode": AutoresetMode.NEXT_STEP,
        "prefenv_reward_next_obs": True,
    }

    def __init__(
        self,
        num_envs: int,
        n_items: int = 2000,
        n_candidates: int = 10,
        slate_size: int | None = 3,
        horizon: int = 50,
        objective_weights: Mapping[str, float] | None = None,
        on_duplicate: str = "ignore",
        catalog_seed: int = 0,
        sim_config: SimConfig | None = None,
        catalog: Catalog | None = None,
        reward: str = "utility",
        user_pool: np.ndarray | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    ) -> None:
        self._setup = TaskSetup(
            n_items,
            n_candidates,
            slate_size,
            horizon,
            objective_weights,
            on_duplicate,
            sim_config,
            reward,
        )
        mode = AutoresetMode(autoreset_mode)
        if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise ValueError(
                f"RecommendationVectorEnv supports autoreset_mode NEXT_STEP or SAME_STEP, got "
                f"{mode}: use gym.make_vec(..., vectorization_mode='sync') for DISABLED"
            )
        self.autoreset_mode = mode
        self.metadata = {**self.metadata, "autoreset_mode": mode}
        self.num_envs = num_envs
        self.sim = UserBatchSimulator(
            num_envs, self._setup.config, catalog, catalog_seed, user_pool
        )
        self.layout = self.sim.layout
        self.objective_weights = self._setup.weights
        self.single_observation_space = self._setup.observation_space
        self.single_action_space = self._setup.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._needs_reset = np.zeros(num_envs, dtype=bool)
        self._started = False

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        users = seed_rows(self.sim.rngs, seed, options)
        self.sim.reset_users(users)
        self._needs_reset[users] = False
        self._started = True
        return self.sim.observe(), {}

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if not self._started:
            raise gym.error.ResetNeeded("call reset() before step() on a RecommendationVectorEnv")
        n = self.num_envs
        s = 1 if self._setup.slate_size is None else self._setup.slate_size
        actions = np.asarray(actions)
        if actions.size != n * s:
            raise ValueError(
                f"expected actions of shape {self.action_space.shape} for {n} users, "
                f"got shape {actions.shape}"
            )
        actions = actions.reshape(n, s)
        resetting = self._needs_reset.copy()
        stepping = ~resetting
        rows = None if not resetting.any() else np.flatnonzero(stepping)
        slates = self._setup.slates(actions if rows is None else actions[rows], n - resetting.sum())
        out = self.sim.step(slates, rows)
        if resetting.any():
            self.sim.reset_users(np.flatnonzero(resetting))
        rewards = np.zeros(n)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        true_reward = self._setup.rewards(out)
        rewards[stepping] = self._setup.env_rewards(out, true_reward)
        terminated[stepping] = out.terminated
        truncated[stepping] = out.truncated
        self._needs_reset = terminated | truncated
        columns = {
            "true_reward": true_reward,
            "engagement": out.engagement,
            "satisfaction": out.satisfaction,
            "diversity": out.diversity,
            "clicks": (out.clicked_slot >= 0).astype(np.int64),
            "clicked_slot": out.clicked_slot,
            "item": out.item,
        }
        infos = _masked_infos(columns, stepping)
        obs = self.sim.observe()
        done = terminated | truncated
        if self.autoreset_mode == AutoresetMode.SAME_STEP:
            self._needs_reset[:] = False
            if done.any():
                final_obs = np.full(n, None, dtype=object)
                for i in np.flatnonzero(done):
                    final_obs[i] = obs[i].copy()
                infos["final_obs"], infos["_final_obs"] = final_obs, done.copy()
                final_info: dict[str, Any] = {}
                for key in columns:  # the reset users' step info lives in final_info only
                    final_info[key] = np.where(done, infos[key], 0).astype(infos[key].dtype)
                    final_info[f"_{key}"] = done.copy()
                    infos[key] = np.where(done, 0, infos[key]).astype(infos[key].dtype)
                    infos[f"_{key}"] = infos[f"_{key}"] & ~done
                    if not infos[f"_{key}"].any():
                        del infos[key], infos[f"_{key}"]
                infos["final_info"], infos["_final_info"] = final_info, done.copy()
                self.sim.reset_users(np.flatnonzero(done))
                obs = self.sim.observe()
        return obs, rewards, terminated, truncated, infos


def _masked_infos(columns: Mapping[str, np.ndarray], stepping: np.ndarray) -> dict[str, Any]:
    """Per-user info columns (values of the ``stepping`` users) -> Gymnasium's masked arrays."""
    n = stepping.shape[0]
    infos: dict[str, Any] = {}
    for key, values in columns.items() if stepping.any() else ():
        full = np.zeros(n, dtype=values.dtype)
        full[stepping] = values
        infos[key] = full
        infos[f"_{key}"] = stepping.copy()
    return infos
