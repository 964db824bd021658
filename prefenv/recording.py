"""Recording trajectories from any agent's rollouts, agent-agnostically.

:class:`TrajectoryRecorder` sits on top of a vector env (usually a
:class:`prefenv.wrappers.VectorPreferenceReward`) and turns every finished episode into a
:class:`prefenv.records.Trajectory` of flat features with the hidden true reward. Because it is a
wrapper, PPO-KL, SB3 (through the bridge) or a hand-written loop all feed it the same way.
Episodes stepped in other processes (PPO-KL's rollout workers, each with a recorder of its own)
join it through :meth:`TrajectoryRecorder.add_episodes`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper

from prefenv.episodes import EpisodeAccountant, EpisodeStats
from prefenv.records import Trajectory
from prefenv.spaces import FlatSpec

__all__ = ["TrajectoryRecorder", "EpisodeStats", "collect_trajectories"]


class _Episode:
    """Growing per-sub-env buffers (lists of flat rows)."""

    def __init__(self, first_obs: np.ndarray):
        self.obs = [first_obs]
        self.acts: list[np.ndarray] = []
        self.true: list[float] = []


class TrajectoryRecorder(VectorWrapper):
    """Records finished episodes of a vector env as flat :class:`Trajectory` records.

    Args:
        env: a Gymnasium vector env (NEXT_STEP or SAME_STEP autoreset).
        capacity_steps: keep at most this many recorded steps (oldest episodes dropped first),
            bounding memory on long runs.
        context_fn: optional ``info_i -> context`` mapping stored on each trajectory.

    The true reward is read from ``infos["true_reward"]`` when present, else the env's reward.
    Episode returns (:meth:`pop_episode_stats`) come from the shared
    :class:`prefenv.episodes.EpisodeAccountant`.
    """

    def __init__(
        self,
        env: VectorEnv,
        capacity_steps: int = 1_000_000,
        context_fn: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
    ):
        super().__init__(env)
        self.flat = FlatSpec(env.single_observation_space, env.single_action_space)
        self.autoreset_mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        if self.autoreset_mode == AutoresetMode.DISABLED:
            raise ValueError(
                "TrajectoryRecorder needs an autoresetting vector env: build it with "
                "autoreset_mode=AutoresetMode.NEXT_STEP (the default) or SAME_STEP"
            )
        self.capacity_steps = int(capacity_steps)
        self.context_fn = context_fn
        self._episodes: list[_Episode] = []
        self._started = False
        self._finished: deque[Trajectory] = deque()
        self._finished_steps = 0
        self._accountant = EpisodeAccountant(self.num_envs, self.autoreset_mode, "reward")
        self._stats: list[EpisodeStats] = []
        self.total_steps = 0

    # ------------------------------------------------------------------ recording
    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        flat = self.flat.obs(obs, self.num_envs)
        self._episodes = [_Episode(flat[i]) for i in range(self.num_envs)]
        self._accountant.reset()
        self._started = True
        return obs, info

    def step(self, actions: Any):
        if not self._started:
            raise gym.error.ResetNeeded("call reset() before step() on a TrajectoryRecorder")
        obs, rewards, terminated, truncated, infos = self.env.step(actions)
        n = self.num_envs
        account = self._accountant.step(rewards, terminated, truncated, infos)
        flat_obs = self.flat.obs(obs, n)
        flat_acts = self.flat.acts(actions, n)
        same_step = self.autoreset_mode == AutoresetMode.SAME_STEP
        for i in np.flatnonzero(account.valid):
            next_obs = flat_obs[i]
            if same_step and (terminated[i] or truncated[i]):
                next_obs = self.flat.obs(infos["final_obs"][i], 1)[0]
            episode = self._episodes[i]
            episode.obs.append(next_obs)
            episode.acts.append(flat_acts[i])
            episode.true.append(float(account.true_rewards[i]))
        self.total_steps += int(account.valid.sum())
        for stats in account.finished:
            i = stats.env_index
            self._finish(self._episodes[i], stats, _info_at(infos, i))
        # a new episode starts from the returned obs: after a NEXT_STEP reset step, or at once
        # under SAME_STEP (the returned obs of a finished sub-env is its reset obs)
        starts = ~account.valid if not same_step else np.logical_or(terminated, truncated)
        for i in np.flatnonzero(starts):
            self._episodes[i] = _Episode(flat_obs[i])
        return obs, rewards, terminated, truncated, infos

    def _finish(self, episode: _Episode, stats: EpisodeStats, info: dict[str, Any]) -> None:
        context = self.context_fn(info) if self.context_fn is not None else None
        trajectory = Trajectory(
            obs=np.stack(episode.obs),
            acts=np.stack(episode.acts),
            true_rewards=np.asarray(episode.true),
            terminated=stats.terminated,
            context=context,
        )
        self._keep(trajectory)
        self._stats.append(stats)

    def _keep(self, trajectory: Trajectory) -> None:
        self._finished.append(trajectory)
        self._finished_steps += len(trajectory)
        while self._finished_steps > self.capacity_steps and len(self._finished) > 1:
            self._finished_steps -= len(self._finished.popleft())

    def add_episodes(
        self, trajectories: Sequence[Trajectory], stats: Sequence[EpisodeStats], steps: int
    ) -> None:
        """Record episodes that were stepped elsewhere (PPO-KL's rollout workers' recorders).

        They join :attr:`trajectories` and :meth:`pop_episode_stats` as if this recorder had
        recorded them, in the order given (oldest first), within ``capacity_steps``.

        Args:
            trajectories: the finished episodes.
            stats: their returns, one per trajectory.
            steps: the recorded steps they stand for (added to ``total_steps``).

        Raises:
            ValueError: ``stats`` and ``trajectories`` differ in length.
        """
        if len(trajectories) != len(stats):
            raise ValueError(
                f"add_episodes got {len(trajectories)} trajectories but {len(stats)} stats: "
                "pass one EpisodeStats per trajectory"
            )
        for trajectory in trajectories:
            self._keep(trajectory)
        self._stats.extend(stats)
        self.total_steps += int(steps)

    # ------------------------------------------------------------------ reading
    @property
    def trajectories(self) -> list[Trajectory]:
        """Finished episodes still within capacity, oldest first."""
        return list(self._finished)

    def pop_episode_stats(self) -> list[EpisodeStats]:
        """Stats of the episodes finished since the last call."""
        stats, self._stats = self._stats, []
        return stats

    def pop_trajectories(self) -> list[Trajectory]:
        """The finished episodes still held, oldest first, and forget them: a rollout worker's
        recorder hands each rollout's episodes to the learner's this way."""
        trajectories = list(self._finished)
        self._finished.clear()
        self._finished_steps = 0
        return trajectories


def _info_at(infos: dict[str, Any], i: int) -> dict[str, Any]:
    """Sub-env ``i``'s entries of a vector env's dict-of-arrays info."""
    out = {}
    for key, value in infos.items():
        if key.startswith("_"):
            continue
        mask = infos.get(f"_{key}")
        if mask is not None and not mask[i]:
            continue
        try:
            out[key] = value[i]
        except (TypeError, IndexError, KeyError):
            continue
    return out


def collect_trajectories(
    env: gym.Env,
    n_episodes: int,
    policy: Callable[[Any], Any] | None = None,
    seed: int = 0,
) -> list[Trajectory]:
    """Roll out ``n_episodes`` full episodes of a single env into flat trajectories.

    Args:
        env: a Gymnasium env; its reward (or ``info["true_reward"]``) is recorded as true reward.
        n_episodes: how many episodes to record.
        policy: ``obs -> action``; ``None`` samples the action space (seeded by ``seed``).
        seed: seeds the first reset and the random policy.

    Returns:
        One :class:`Trajectory` per episode.
    """
    flat = FlatSpec(env.observation_space, env.action_space)
    env.action_space.seed(seed)
    trajectories = []
    obs, _ = env.reset(seed=seed)
    for _ in range(n_episodes):
        obs_rows, acts, rewards = [flat.obs(obs, 1)[0]], [], []
        while True:
            action = env.action_space.sample() if policy is None else policy(obs)
            obs, reward, terminated, truncated, info = env.step(action)
            obs_rows.append(flat.obs(obs, 1)[0])
            acts.append(flat.acts(action, 1)[0])
            rewards.append(float(info.get("true_reward", reward)))
            if terminated or truncated:
                break
        trajectories.append(
            Trajectory(np.stack(obs_rows), np.stack(acts), np.asarray(rewards), bool(terminated))
        )
        obs, _ = env.reset()
    return trajectories
