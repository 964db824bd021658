"""prefenv: reinforcement learning from preference feedback on Gymnasium environments.

The core is task-agnostic: records, synthetic teachers, a durable comparison store, reward
models trained by Bradley-Terry, reward wrappers, and the contract check. Task families live in
the top-level ``envs`` package and agents in ``agents``; importing ``prefenv`` imports neither
(``prefenv.make`` registers the ``prefenv/*`` ids lazily when it needs them).
"""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym

from prefenv.checks import CheckReport, ContractError, check
from prefenv.records import Comparison, Segment, Trajectory
from prefenv.spaces import FlatSpec
from prefenv.wrappers import PreferenceReward, VectorPreferenceReward

__version__ = "0.1.0"

__all__ = [
    "CheckReport",
    "Comparison",
    "ContractError",
    "FlatSpec",
    "PreferenceReward",
    "Segment",
    "Trajectory",
    "VectorPreferenceReward",
    "check",
    "make",
    "make_vec",
    "register_task_envs",
]


def register_task_envs() -> None:
    """Register the ``prefenv/*`` task ids (lazy entry points: no mujoco/transformers import)."""
    if not any(env_id.startswith("prefenv/") for env_id in gym.registry):
        importlib.import_module("envs")


def make(
    env_id: str,
    reward_model: Any | None = None,
    shaping: float = 0.0,
    **kwargs: Any,
) -> gym.Env:
    """``gymnasium.make(env_id, **kwargs)``, its reward replaced by ``reward_model``'s.

    Args:
        env_id: any registered Gymnasium id, including the ``prefenv/*`` task ids.
        reward_model: a prefenv reward model (or anything with ``predict``); ``None`` returns the
            plain env, whose reward is the true reward.
        shaping: uncertainty shaping ``k`` for ensembles (``mean + k * std``).
        **kwargs: passed to ``gymnasium.make``.
    """
    if env_id.startswith("prefenv/"):
        register_task_envs()
    env = gym.make(env_id, **kwargs)
    return env if reward_model is None else PreferenceReward(env, reward_model, shaping=shaping)


def make_vec(
    env_id: str,
    num_envs: int,
    reward_model: Any | None = None,
    shaping: float = 0.0,
    vectorization_mode: str = "sync",
    **kwargs: Any,
) -> gym.vector.VectorEnv:
    """``gymnasium.make_vec`` with one batched learned-reward call per step for all sub-envs."""
    if env_id.startswith("prefenv/"):
        register_task_envs()
    venv = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=vectorization_mode, **kwargs)
    if reward_model is None:
        return venv
    return VectorPreferenceReward(venv, reward_model, shaping=shaping)
