"""MuJoCo v5 tasks whose true reward is a weighted sum of the v5 reward terms.

``MujocoTask`` is a thin wrapper: observation and action spaces and the dynamics are exactly
those of the Gymnasium MuJoCo v5 env underneath. It only (a) computes the *true reward* from the
reward terms v5 already reports in ``info`` (optionally re-weighted: a multi-objective teacher)
and (b) records it as ``info["true_reward"]``, the hidden signal that simulated teachers read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
from gymnasium.envs.mujoco.hopper_v5 import HopperEnv
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
from gymnasium.envs.mujoco.reacher_v5 import ReacherEnv
from gymnasium.envs.mujoco.walker2d_v5 import Walker2dEnv

__all__ = ["TASKS", "TASK_TERMS", "MujocoTask"]

TASKS: dict[str, type[MujocoEnv]] = {
    "HalfCheetah": HalfCheetahEnv,
    "Hopper": HopperEnv,
    "Walker2d": Walker2dEnv,
    "Ant": AntEnv,
    "Reacher": ReacherEnv,
}
"""Task name -> the Gymnasium MuJoCo v5 env class it wraps."""

TASK_TERMS: dict[str, tuple[str, ...]] = {
    "HalfCheetah": ("reward_forward", "reward_ctrl"),
    "Hopper": ("reward_forward", "reward_ctrl", "reward_survive"),
    "Walker2d": ("reward_forward", "reward_ctrl", "reward_survive"),
    "Ant": ("reward_forward", "reward_ctrl", "reward_contact", "reward_survive"),
    "Reacher": ("reward_dist", "reward_ctrl"),
}
"""Task name -> the signed reward terms v5 reports in ``info`` (costs are already negative).

The v5 reward is the plain sum of these terms, so all weights 1.0 reproduce it.
"""


class MujocoTask(gym.Wrapper):
    """A Gymnasium MuJoCo v5 task with a hidden, optionally multi-objective true reward.

    Build it through the registry (``gymnasium.make("prefenv/HalfCheetah-v0")``), which also
    adds the v5 time limit, or directly as ``MujocoTask("HalfCheetah")`` (no time limit).

    Observation (``Box(-inf, inf, (D,), float64)``, unchanged from v5):

    - HalfCheetah (D=17): ``qpos[1:]`` (8: root z, root angle, 6 joint angles), ``qvel`` (9).
    - Hopper (D=11): ``qpos[1:]`` (5), ``qvel`` (6, clipped to [-10, 10]).
    - Walker2d (D=17): ``qpos[1:]`` (8), ``qvel`` (9, clipped to [-10, 10]).
    - Ant (D=105): ``qpos[2:]`` (13), ``qvel`` (14), external contact forces (78).
    - Reacher (D=10): cos and sin of the 2 arm angles (4), target x-y (2), the 2 arm angular
      velocities (2), fingertip - target x-y (2).

    Action: joint torques ``Box(-1, 1, (A,), float32)``; A = 6 HalfCheetah, 3 Hopper,
    6 Walker2d, 8 Ant, 2 Reacher.

    Reward: the true reward ``sum_k w_k * info[k]`` over the task's terms (``TASK_TERMS``; costs
    are reported negative, e.g. ``reward_ctrl = -ctrl_cost``). ``objective_weights=None`` gives
    the v5 reward exactly (every weight 1). The same value is always in ``info["true_reward"]``;
    a preference-reward wrapper replaces the returned reward but leaves that key for teachers.
    Every v5 term and diagnostic (``x_velocity``, ``x_position``, ...) stays in ``info``.

    Termination (``terminated``): Hopper, Walker2d and Ant when the body is unhealthy (v5 rules:
    height / angle / state range); HalfCheetah and Reacher never terminate.

    Truncation (``truncated``): only from the registry's ``TimeLimit`` (1000 steps; Reacher 50);
    the wrapper itself never truncates.

    Args:
        task: One of ``TASKS`` ("HalfCheetah", "Hopper", "Walker2d", "Ant", "Reacher").
        objective_weights: Weight per reward term, e.g. ``{"reward_forward": 1.0,
            "reward_ctrl": 3.0}`` for a teacher that cares three times as much about energy.
            Terms left out get weight 0. ``None`` = the v5 reward.
        render_mode: ``None``, ``"rgb_array"``, ``"depth_array"``, ``"rgbd_tuple"`` or ``"human"``.
        width: Rendered frame width in pixels.
        height: Rendered frame height in pixels.
        record_physics_state: If True, every step's ``info["physics_state"]`` holds
            ``concat(qpos, qvel)`` after the step (``reset`` info too), so any recorded
            segment can be rendered exactly with ``envs.mujoco.render_states``.
        v5_kwargs: Extra constructor arguments of the v5 env (e.g. ``ctrl_cost_weight``,
            ``reset_noise_scale``); see the Gymnasium MuJoCo docs for each task.
    """

    def __init__(
        self,
        task: str,
        objective_weights: Mapping[str, float] | None = None,
        render_mode: str | None = None,
        width: int = 480,
        height: int = 480,
        record_physics_state: bool = False,
        v5_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown MuJoCo task {task!r}: choose one of {sorted(TASKS)}")
        env = TASKS[task](render_mode=render_mode, width=width, height=height, **(v5_kwargs or {}))
        super().__init__(env)
        # a human labeller sees a query as two clips (prefenv.presenters.PRESENTER_METADATA)
        self.metadata = {**env.metadata, "prefenv_presenter": "envs.mujoco.clips:ClipPresenter"}
        self.task = task
        self.reward_terms: tuple[str, ...] = TASK_TERMS[task]
        self.objective_weights: dict[str, float] | None = _validate_weights(task, objective_weights)
        self.record_physics_state = record_physics_state

    @property
    def spec(self) -> gym.envs.registration.EnvSpec | None:
        """The registered spec: this wrapper is the entry point, not an additional wrapper."""
        return self.env.spec

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        if self.record_physics_state:
            info = {**info, "physics_state": self._physics_state()}
        return obs, info

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, v5_reward, terminated, truncated, info = self.env.step(action)
        true_reward = self.true_reward(info, v5_reward)
        info = {**info, "true_reward": true_reward}
        if self.record_physics_state:
            info["physics_state"] = self._physics_state()
        return obs, true_reward, terminated, truncated, info

    def true_reward(self, info: Mapping[str, Any], v5_reward: SupportsFloat) -> float:
        """The true reward of one step from its v5 ``info`` (``v5_reward`` when unweighted)."""
        if self.objective_weights is None:
            return float(v5_reward)
        return float(sum(w * float(info[k]) for k, w in self.objective_weights.items()))

    def _physics_state(self) -> np.ndarray:
        data = self.env.unwrapped.data
        return np.concatenate([data.qpos, data.qvel]).astype(np.float64)


def _validate_weights(task: str, weights: Mapping[str, float] | None) -> dict[str, float] | None:
    if weights is None:
        return None
    valid = TASK_TERMS[task]
    if not weights:
        raise ValueError(
            f"objective_weights is empty, so the true reward would be 0: give weights for some of "
            f"{list(valid)}, or None for the v5 reward"
        )
    unknown = sorted(set(weights) - set(valid))
    if unknown:
        raise ValueError(
            f"objective_weights has unknown reward terms {unknown} for {task}: "
            f"valid terms are {list(valid)} (costs such as reward_ctrl are already negative, "
            "so a positive weight penalises them)"
        )
    out = {k: float(w) for k, w in weights.items()}
    bad = {k: w for k, w in out.items() if not math.isfinite(w)}
    if bad:
        raise ValueError(f"objective_weights must be finite numbers, got {bad}")
    return out
