"""prefenv: reinforcement learning from preference feedback on Gymnasium environments.

The core is task-agnostic: records, synthetic teachers, a durable comparison store, reward
models trained by Bradley-Terry, reward wrappers, and the contract check. Task families live in
the top-level ``envs`` package and agents in ``agents``. Importing ``prefenv`` registers the
Gymnasium ids of every installed task package (the ``prefenv.tasks`` entry-point group: prefenv's
own ``prefenv/*`` ids, and any user package that declares one) with lazy string entry points, so
``gymnasium.make("prefenv/Hopper-v0")`` works after ``import prefenv`` and no mujoco or
transformers module is imported until an env is built. The core never names ``envs`` itself.
"""

from __future__ import annotations

import warnings
from importlib.metadata import entry_points
from typing import Any

import gymnasium as gym

from prefenv.checks import CheckReport, ContractError, check
from prefenv.env_ids import UnknownEnvError, import_modules, resolve_env_id
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
    "UnknownEnvError",
    "check",
    "import_modules",
    "make",
    "make_vec",
    "register_task_envs",
    "resolve_env_id",
]


TASK_ENTRY_POINT_GROUP = "prefenv.tasks"
"""Packaging entry-point group of task packages: importing each one registers its Gymnasium ids.

prefenv's own task families declare ``prefenv = "envs"`` in ``pyproject.toml``; a user package
declares its own (``[project.entry-points."prefenv.tasks"] my_pkg = "my_pkg.envs"``) and every
prefenv tool, the CLI included, then finds its ids without importing it by hand. The core names
no task package itself."""

_loaded_task_packages: set[str] = set()


def register_task_envs() -> None:
    """Import every installed task package once (lazy entry points: no mujoco/transformers import).

    Raises:
        UnknownEnvError: an installed package's entry point names a module that will not import.
    """
    for entry_point in entry_points(group=TASK_ENTRY_POINT_GROUP):
        if entry_point.value not in _loaded_task_packages:
            _loaded_task_packages.add(entry_point.value)  # first: its import may import prefenv
            import_modules([entry_point.value])


def make(
    env_id: str,
    reward_model: Any | None = None,
    shaping: float = 0.0,
    **kwargs: Any,
) -> gym.Env:
    """``gymnasium.make(env_id, **kwargs)``, its reward replaced by ``reward_model``'s.

    Args:
        env_id: any registered Gymnasium id, including the ``prefenv/*`` task ids, or
            ``"my_pkg:my/Env-v0"`` (the module is imported first, as ``gymnasium.make`` does).
        reward_model: a prefenv reward model (the wrapper scores with its snapshot
            ``reward_model.predictor()``, taken now: call ``refresh()`` on the returned env
            after training the model further) or a ``prefenv.predictors.RewardPredictor``;
            ``None`` returns the plain env, whose reward is the true reward.
        shaping: uncertainty shaping ``k`` for ensembles (``mean + k * std``).
        **kwargs: passed to ``gymnasium.make``.

    Raises:
        UnknownEnvError: no imported module registers ``env_id`` (the message lists close ids).
    """
    env = gym.make(resolve_env_id(env_id, register_task_envs), **kwargs)
    return env if reward_model is None else PreferenceReward(env, reward_model, shaping=shaping)


def make_vec(
    env_id: str,
    num_envs: int,
    reward_model: Any | None = None,
    shaping: float = 0.0,
    vectorization_mode: str | None = None,
    vector_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> gym.vector.VectorEnv:
    """``gymnasium.make_vec`` with one batched learned-reward call per step for all sub-envs.

    Args:
        env_id: any registered Gymnasium id, including the ``prefenv/*`` task ids, or
            ``"my_pkg:my/Env-v0"``.
        num_envs: sub-envs (users, robots, prompts) stepped together.
        reward_model: a prefenv reward model (snapshot taken now, as in :func:`make`) or a
            ``prefenv.predictors.RewardPredictor``; ``None`` returns the plain vector env.
        shaping: uncertainty shaping ``k`` for ensembles (``mean + k * std``).
        vectorization_mode: ``None`` (default): the id's native ``vector_entry_point`` when it
            registers one (e.g. ``prefenv/RecSlate-v0``) and no ``wrappers`` are given, else
            ``"sync"``; or force ``"sync"``, ``"async"`` or ``"vector_entry_point"``.
        vector_kwargs: ``SyncVectorEnv`` / ``AsyncVectorEnv`` arguments. For a native vector env
            only ``autoreset_mode`` is allowed; it is passed to the env's constructor.
        **kwargs: passed to ``gymnasium.make_vec`` (env constructor kwargs, ``wrappers``).

    Raises:
        UnknownEnvError: no imported module registers ``env_id``.
        ValueError: ``vector_kwargs`` a native vector env cannot take, or a native env that
            ignored the requested ``autoreset_mode``.
    """
    env_id = resolve_env_id(env_id, register_task_envs)
    venv = _make_vec_env(env_id, num_envs, vectorization_mode, dict(vector_kwargs or {}), kwargs)
    if reward_model is None:
        return venv
    return VectorPreferenceReward(venv, reward_model, shaping=shaping)


def _make_vec_env(
    env_id: str,
    num_envs: int,
    mode: str | None,
    vector_kwargs: dict[str, Any],
    kwargs: dict[str, Any],
) -> gym.vector.VectorEnv:
    native = gym.spec(env_id).vector_entry_point is not None
    if mode is None:
        usable = native and not kwargs.get("wrappers") and set(vector_kwargs) <= {"autoreset_mode"}
        mode = "vector_entry_point" if usable else "sync"
    if mode != "vector_entry_point":
        return gym.make_vec(
            env_id, num_envs, vectorization_mode=mode, vector_kwargs=vector_kwargs, **kwargs
        )
    extra = sorted(set(vector_kwargs) - {"autoreset_mode"})
    if extra:
        raise ValueError(
            f"a native vector env takes no vector_kwargs {extra} (only autoreset_mode): pass "
            f"vectorization_mode='sync' to build {env_id} as a SyncVectorEnv"
        )
    requested = vector_kwargs.get("autoreset_mode")
    if requested is not None:
        kwargs = {**kwargs, "autoreset_mode": requested}
    venv = gym.make_vec(env_id, num_envs, vectorization_mode="vector_entry_point", **kwargs)
    got = venv.metadata.get("autoreset_mode")
    if requested is not None and got != gym.vector.AutoresetMode(requested):
        raise ValueError(
            f"{env_id}'s native vector env autoresets with {got}, not the requested {requested}: "
            "pass vectorization_mode='sync'"
        )
    return venv


def _register_at_import() -> None:
    """Register the installed task packages' ids; a broken third-party one only warns."""
    try:
        register_task_envs()
    except UnknownEnvError as exc:
        warnings.warn(f"a prefenv.tasks entry point failed: {exc}", stacklevel=2)


_register_at_import()
