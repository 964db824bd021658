"""Reward wrappers: replace an env's reward with a learned preference model's.

The env's own reward becomes hidden: it moves to ``info["true_reward"]`` (only teachers and
monitors read it), and the agent sees ``r_hat(obs, action, next_obs)``. If the wrapped env already
reports ``info["true_reward"]`` (for example a task with a multi-objective true reward), that value
is kept.

A wrapper never reads the live reward model. It holds a frozen
:class:`~prefenv.predictors.RewardPredictor`, built once from the model at construction
(``model.predictor()``); after the model is trained further, hand it the new snapshot with
``set_predictor(model.predictor())`` or ``refresh()`` (the preference loop does this after every
refit). Uncertainty shaping (``mean + k_t * std``) is applied here and nowhere else: ``shaping`` is
a constant ``k`` or a :class:`~prefenv.exploration.ShapingSchedule` such as RUNE's decaying
exploration bonus (:class:`~prefenv.exploration.RuneSchedule`), evaluated at ``t``, the env steps
the wrapper has taken (``shaping_steps``: summed over sub-envs, settable when a run resumes).

:class:`PreferenceReward` wraps one env; :class:`VectorPreferenceReward` wraps a Gymnasium vector
env and scores every sub-env in one batched call, for all three autoreset modes.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper

from prefenv.episodes import step_true_rewards
from prefenv.exploration import ConstantShaping, ShapingSchedule, as_schedule, shapes_never
from prefenv.predictors import PredictorSource, RewardPredictor
from prefenv.spaces import FlatSpec

__all__ = ["PreferenceReward", "VectorPreferenceReward"]


class _LearnedReward:
    """The predictor a wrapper reads and the shaping it applies (shared by both wrappers).

    Attributes:
        reward_model: the model the predictor was made from (``None`` when the wrapper was given
            a predictor directly); :meth:`refresh` asks it for a new snapshot.
        predictor: the frozen snapshot every step is scored with.
    """

    flat: FlatSpec
    reward_model: PredictorSource | None
    predictor: RewardPredictor
    _schedule: ShapingSchedule
    _constant_shaping: bool
    _shaping_steps: int
    _k: float

    def _hold(
        self, reward_model: PredictorSource | RewardPredictor, shaping: float | ShapingSchedule
    ) -> None:
        self._schedule = as_schedule(shaping)
        self._constant_shaping = isinstance(self._schedule, ConstantShaping)
        self.shaping_steps = 0
        if isinstance(reward_model, RewardPredictor):
            self.reward_model = None
            self.set_predictor(reward_model)
        elif isinstance(reward_model, PredictorSource):
            self.reward_model = reward_model
            self.set_predictor(reward_model.predictor())
        else:
            raise TypeError(
                f"{type(reward_model).__name__} is neither a reward model with predictor() nor a "
                "RewardPredictor: pass a prefenv reward model (MLPRewardModel, RewardEnsemble), "
                "adapt your nn.Module with prefenv.reward_models.as_reward_model, or implement "
                "prefenv.predictors.RewardPredictor"
            )

    @property
    def shaping(self) -> float:
        """``k_t`` in ``mean + k_t * std`` for the next step (the schedule at ``shaping_steps``)."""
        return self._k

    @property
    def shaping_schedule(self) -> ShapingSchedule:
        """The schedule ``k_t`` comes from (a plain float was made a ``ConstantShaping``)."""
        return self._schedule

    @property
    def shaping_steps(self) -> int:
        """``t``: env steps scored so far, summed over sub-envs (a vector step counts
        ``num_envs``, its autoreset steps included), so it equals the agent's ``num_timesteps``
        when the wrapper sees all of the agent's steps and no others. RUNE's ``t`` is the agent's
        env steps (its PPO adds ``num_envs`` per vector step). Not saved by the wrapper: set it
        when a run resumes (``wrapper.shaping_steps = agent.num_timesteps``).
        """
        return self._shaping_steps

    @shaping_steps.setter
    def shaping_steps(self, steps: int) -> None:
        if isinstance(steps, bool) or int(steps) != steps or steps < 0:
            raise ValueError(f"shaping_steps must be a whole number >= 0, got {steps!r}")
        self._shaping_steps = int(steps)
        self._k = float(self._schedule.value(self._shaping_steps))

    def _advance_shaping(self, steps: int) -> None:
        """Count ``steps`` more env steps and move ``k_t`` on (a constant ``k`` never moves)."""
        self._shaping_steps += steps
        if not self._constant_shaping:
            self._k = float(self._schedule.value(self._shaping_steps))

    def set_predictor(self, predictor: RewardPredictor) -> None:
        """Score every later step with ``predictor`` (e.g. ``model.predictor()`` after a refit).

        Raises:
            TypeError: ``predictor`` is not a :class:`~prefenv.predictors.RewardPredictor`.
            ValueError: its sizes differ from the env's, or shaping is on and it has no std.
        """
        if not isinstance(predictor, RewardPredictor):
            raise TypeError(
                f"set_predictor needs a RewardPredictor (model.predictor()), got "
                f"{type(predictor).__name__}"
            )
        for name, got, expected in (
            ("obs", predictor.obs_dim, self.flat.obs_dim),
            ("act", predictor.act_dim, self.flat.act_dim),
        ):
            if got != expected:
                raise ValueError(
                    f"reward model expects {name} features of size {got}, but this env gives "
                    f"{expected} ({self.flat.describe()}): was the reward model trained on "
                    "another env?"
                )
        if not predictor.ensemble and not shapes_never(self._schedule):
            raise ValueError(
                f"uncertainty shaping={self._schedule} needs a reward ensemble (a predictor with "
                "a std): use prefenv.reward_models.RewardEnsemble or set shaping=0"
            )
        self.predictor = predictor

    def refresh(self) -> None:
        """Take a new snapshot of the reward model (``set_predictor(reward_model.predictor())``).

        Raises:
            RuntimeError: the wrapper was given a predictor, not a model to snapshot.
        """
        if self.reward_model is None:
            raise RuntimeError(
                "this wrapper was built from a predictor, so it has no model to refresh from: "
                "call set_predictor(model.predictor()) instead"
            )
        self.set_predictor(self.reward_model.predictor())

    def _learned(
        self, obs: np.ndarray, acts: np.ndarray, next_obs: np.ndarray, done: np.ndarray | None
    ) -> np.ndarray:
        """``[N]`` float32 ``mean + k_t * std`` of flat ``[N, D]`` transitions (``k_t``: the
        schedule at ``shaping_steps``; this does not count steps)."""
        mean, std = self.predictor.predict(obs, acts, next_obs, done)
        if self._k != 0.0:
            mean = mean + self._k * std
        return np.asarray(mean, dtype=np.float32)


class PreferenceReward(_LearnedReward, gym.Wrapper):
    """Single-env wrapper whose reward is a learned preference model's.

    Args:
        env: any Gymnasium env with flattenable spaces (see :mod:`prefenv.spaces`).
        reward_model: a reward model with ``predictor()`` (snapshot taken now; call
            :meth:`refresh` after training it further) or a
            :class:`~prefenv.predictors.RewardPredictor` itself.
        shaping: ``k`` in ``mean + k * std`` for reward ensembles: negative is conservative,
            positive explores. 0 uses the mean (or the single model). Or a
            :class:`~prefenv.exploration.ShapingSchedule` giving ``k_t`` after ``t`` steps, e.g.
            RUNE's ``RuneSchedule()``; each step counts 1 (see ``shaping_steps``).

    Observation, action, termination and truncation are the wrapped env's. Reward: ``r_hat``.
    ``info["true_reward"]``: the hidden reward; ``info["learned_reward"]``: ``r_hat`` again.

    Raises:
        TypeError: ``reward_model`` is neither a reward model nor a predictor.
        ValueError: its sizes differ from the env's, or shaping without an ensemble.
    """

    def __init__(
        self,
        env: gym.Env,
        reward_model: PredictorSource | RewardPredictor,
        shaping: float | ShapingSchedule = 0.0,
    ):
        super().__init__(env)
        self.flat = FlatSpec(env.observation_space, env.action_space)
        self._hold(reward_model, shaping)
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
        done = np.array([terminated or truncated])
        r_hat = float(self._learned(self._last_obs, self.flat.acts(action, 1), next_flat, done)[0])
        self._advance_shaping(1)
        self._last_obs = next_flat
        info = dict(info)
        info.setdefault("true_reward", float(reward))
        info["learned_reward"] = r_hat
        return obs, r_hat, terminated, truncated, info


class VectorPreferenceReward(_LearnedReward, VectorWrapper):
    """Vector twin of :class:`PreferenceReward`: one batched predictor call per step.

    Args:
        env: a Gymnasium vector env with flattenable single spaces.
        reward_model: a reward model with ``predictor()`` (snapshot taken now; call
            :meth:`refresh` after training it further) or a
            :class:`~prefenv.predictors.RewardPredictor` itself.
        shaping: ``k`` in ``mean + k * std`` (ensembles only), or a
            :class:`~prefenv.exploration.ShapingSchedule` for ``k_t``; every vector step counts
            ``num_envs`` steps and scores all sub-envs with the same ``k_t`` (see
            ``shaping_steps``).

    The predictor gets ``done = terminated | truncated``, which episode-level predictors (text)
    need. Works with Gymnasium's sync and async vector envs in every autoreset mode:

    - ``NEXT_STEP`` (default): the step after an episode ends is a reset step whose action the env
      ignores; its learned and true rewards are 0 (there is no transition to score).
    - ``SAME_STEP``: a finished sub-env's transition is scored against ``info["final_obs"]``.
    - ``DISABLED``: the caller resets finished sub-envs with ``reset(options={"reset_mask": m})``.

    ``infos["true_reward"]`` and ``infos["learned_reward"]`` are ``[num_envs]`` arrays with
    all-True ``_true_reward`` / ``_learned_reward`` masks.
    """

    def __init__(
        self,
        env: VectorEnv,
        reward_model: PredictorSource | RewardPredictor,
        shaping: float | ShapingSchedule = 0.0,
    ):
        super().__init__(env)
        self.flat = FlatSpec(env.single_observation_space, env.single_action_space)
        self._hold(reward_model, shaping)
        self.autoreset_mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        self._last_obs: np.ndarray | None = None
        self._resetting = np.zeros(self.num_envs, dtype=bool)
        self._all_true = np.ones(self.num_envs, dtype=bool)  # copied into each step's infos

    def learned_rewards(self, obs: Any, actions: Any, next_obs: Any, n: int) -> np.ndarray:
        """``[n]`` learned rewards of ``n`` stored transitions (batches in the env's own format).

        The same features, predictor and shaping (today's ``k_t``, as RUNE's SAC weights its
        stored stds by the current ``beta_t``) as :meth:`step` (``done`` is not known, so an
        episode-level predictor cannot be used here): what an off-policy agent uses to relabel
        its replay buffer after a refit (PEBBLE). Call it after the wrapper got the new
        predictor.
        """
        flat = self.flat
        return self._learned(flat.obs(obs, n), flat.acts(actions, n), flat.obs(next_obs, n), None)

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
        r_hat = self._learned(self._last_obs, self.flat.acts(actions, n), scored_next, done)
        self._advance_shaping(n)
        # the hidden reward: info['true_reward'] where reported (final_info for a SAME_STEP
        # reset), else the env's own reward
        reported_true, reported = step_true_rewards(infos, n)
        true_reward = np.where(reported, reported_true, np.asarray(rewards, np.float64))
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            if self._resetting.any():
                r_hat = r_hat.copy()
                r_hat[self._resetting] = 0.0
                true_reward[self._resetting] = 0.0
            self._resetting = done
        self._last_obs = next_flat
        infos = dict(infos)
        infos["true_reward"] = true_reward
        infos["_true_reward"] = self._all_true.copy()  # .copy(): one C call, unlike np.ones
        infos["learned_reward"] = r_hat
        infos["_learned_reward"] = self._all_true.copy()
        return obs, r_hat, terminated, truncated, infos
