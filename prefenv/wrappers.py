"""Reward wrappers: replace an env's reward with a learned preference model's.

The env's own reward becomes hidden: it moves to ``info["true_reward"]`` (only teachers and
monitors read it), and the agent sees ``r_hat(obs, action, next_obs)``. If the wrapped env already
reports ``info["true_reward"]`` (for example a task with a multi-objective true reward), that value
is kept.

:class:`PreferenceReward` wraps one env; :class:`VectorPreferenceReward` wraps a Gymnasium vector
env and scores every sub-env in one batched call, for all three autoreset modes.
"""

from __future__ import annotations

from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper

from prefenv.spaces import FlatSpec

__all__ = ["PreferenceReward", "VectorPreferenceReward", "StepRewardModel"]


class StepRewardModel(Protocol):
    """What a wrapper needs from a reward model: a batched numpy fast path."""

    obs_dim: int
    act_dim: int

    def predict(self, obs: np.ndarray, acts: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
        """``[N, D_o], [N, D_a], [N, D_o] -> [N]`` learned rewards."""
        ...


def _check_model(model: Any, flat: FlatSpec, shaping: float) -> None:
    if not callable(getattr(model, "predict", None)):
        raise TypeError(
            f"{type(model).__name__} has no predict(obs, acts, next_obs) method: pass a prefenv "
            "reward model, or adapt your nn.Module with prefenv.reward_models.as_reward_model"
        )
    for name, expected in (("obs", flat.obs_dim), ("act", flat.act_dim)):
        got = getattr(model, f"{name}_dim", expected)
        if got != expected:
            raise ValueError(
                f"reward model expects {name} features of size {got}, but this env gives "
                f"{expected} ({flat.describe()}): was the reward model trained on another env?"
            )
    if shaping != 0.0 and not callable(getattr(model, "predict_mean_std", None)):
        raise ValueError(
            f"uncertainty shaping={shaping} needs a reward ensemble (predict_mean_std): "
            "use prefenv.reward_models.RewardEnsemble or set shaping=0"
        )


def _predict(model: Any, shaping: float, obs: np.ndarray, acts: np.ndarray, nxt: np.ndarray):
    if shaping == 0.0:
        return np.asarray(model.predict(obs, acts, nxt), dtype=np.float32)
    mean, std = model.predict_mean_std(obs, acts, nxt)
    return np.asarray(mean + shaping * std, dtype=np.float32)


class PreferenceReward(gym.Wrapper):
    """Single-env wrapper whose reward is a learned preference model's.

    Args:
        env: any Gymnasium env with flattenable spaces (see :mod:`prefenv.spaces`).
        reward_model: anything with ``predict(obs, acts, next_obs) -> [N]`` over flat features;
            the object is read on every step, so refitting it in place takes effect at once.
        shaping: ``k`` in ``mean + k * std`` for reward ensembles: negative is conservative,
            positive explores (RUNE). 0 uses the mean (or the single model).

    Observation, action, termination and truncation are the wrapped env's. Reward: ``r_hat``.
    ``info["true_reward"]``: the hidden reward; ``info["learned_reward"]``: ``r_hat`` again.
    """

    def __init__(self, env: gym.Env, reward_model: StepRewardModel, shaping: float = 0.0):
        super().__init__(env)
        self.flat = FlatSpec(env.observation_space, env.action_space)
        _check_model(reward_model, self.flat, shaping)
        self.reward_model = reward_model
        self.shaping = float(shaping)
        self._last_obs: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._last_obs = self.flat.obs(obs, 1)
        return obs, info

    def step(self, action: Any):
        if self._last_obs is None:
            raise gym.error.ResetNeeded("call reset() before step() on a PreferenceReward env")
        obs, reward, terminated, truncated, info = self.env.step(action)
        next_flat = self.flat.obs(obs, 1)
        r_hat = float(
            _predict(
                self.reward_model,
                self.shaping,
                self._last_obs,
                self.flat.acts(action, 1),
                next_flat,
            )[0]
        )
        self._last_obs = next_flat
        info = dict(info)
        info.setdefault("true_reward", float(reward))
        info["learned_reward"] = r_hat
        return obs, r_hat, terminated, truncated, info


class VectorPreferenceReward(VectorWrapper):
    """Vector twin of :class:`PreferenceReward`: one batched reward-model call per step.

    Works with Gymnasium's sync and async vector envs in every autoreset mode:

    - ``NEXT_STEP`` (default): the step after an episode ends is a reset step whose action the env
      ignores; its learned and true rewards are 0 (there is no transition to score).
    - ``SAME_STEP``: a finished sub-env's transition is scored against ``info["final_obs"]``.
    - ``DISABLED``: the caller resets finished sub-envs with ``reset(options={"reset_mask": m})``.

    ``infos["true_reward"]`` and ``infos["learned_reward"]`` are ``[num_envs]`` arrays with
    all-True ``_true_reward`` / ``_learned_reward`` masks.
    """

    def __init__(self, env: VectorEnv, reward_model: StepRewardModel, shaping: float = 0.0):
        super().__init__(env)
        self.flat = FlatSpec(env.single_observation_space, env.single_action_space)
        _check_model(reward_model, self.flat, shaping)
        self.reward_model = reward_model
        self.shaping = float(shaping)
        self.autoreset_mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        self._last_obs: np.ndarray | None = None
        self._resetting = np.zeros(self.num_envs, dtype=bool)

    def learned_rewards(self, obs: Any, actions: Any, next_obs: Any, n: int) -> np.ndarray:
        """``[n]`` learned rewards of ``n`` stored transitions (batches in the env's own format).

        The same features, model and shaping as :meth:`step`: what an off-policy agent uses to
        relabel its replay buffer after the reward model is refit (PEBBLE).
        """
        flat = self.flat
        return _predict(
            self.reward_model, self.shaping, flat.obs(obs, n), flat.acts(actions, n),
            flat.obs(next_obs, n),
        )  # fmt: skip

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        mask = None if options is None else options.get("reset_mask")  # read first: reset pops it
        obs, info = self.env.reset(seed=seed, options=options)
        flat = self.flat.obs(obs, self.num_envs)
        if mask is None or self._last_obs is None:
            self._last_obs = flat
            self._resetting[:] = False
        else:
            self._last_obs[mask] = flat[mask]
            self._resetting[mask] = False
        return obs, info

    def step(self, actions: Any):
        if self._last_obs is None:
            raise gym.error.ResetNeeded("call reset() before step() on a VectorPreferenceReward")
        obs, rewards, terminated, truncated, infos = self.env.step(actions)
        n = self.num_envs
        next_flat = self.flat.obs(obs, n)
        scored_next = next_flat
        done = np.logical_or(terminated, truncated)
        if self.autoreset_mode == AutoresetMode.SAME_STEP and done.any():
            scored_next = next_flat.copy()
            final = infos["final_obs"]
            for i in np.flatnonzero(done):
                scored_next[i] = self.flat.obs(final[i], 1)[0]
        r_hat = _predict(
            self.reward_model, self.shaping, self._last_obs, self.flat.acts(actions, n), scored_next
        )
        true_reward = np.asarray(rewards, dtype=np.float64).copy()
        if "true_reward" in infos:
            reported = np.asarray(infos.get("_true_reward", np.ones(n, dtype=bool)), dtype=bool)
            true_reward[reported] = np.asarray(infos["true_reward"], dtype=np.float64)[reported]
        final_info = infos.get("final_info", {})
        if "true_reward" in final_info:  # SAME_STEP: a finished sub-env's step info lives here
            reported = np.asarray(final_info.get("_true_reward"), dtype=bool)
            true_reward[reported] = np.asarray(final_info["true_reward"], dtype=np.float64)[
                reported
            ]
        if self.autoreset_mode == AutoresetMode.NEXT_STEP and self._resetting.any():
            r_hat = r_hat.copy()
            r_hat[self._resetting] = 0.0
            true_reward[self._resetting] = 0.0
        self._resetting = (
            done if self.autoreset_mode == AutoresetMode.NEXT_STEP else self._resetting
        )
        self._last_obs = next_flat
        infos = dict(infos)
        infos["true_reward"] = true_reward
        infos["_true_reward"] = np.ones(n, dtype=bool)
        infos["learned_reward"] = r_hat
        infos["_learned_reward"] = np.ones(n, dtype=bool)
        return obs, r_hat, terminated, truncated, infos
