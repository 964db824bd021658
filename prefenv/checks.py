"""``prefenv.check``: Gymnasium's ``check_env`` plus prefenv's own contract.

prefenv's contract on top of Gymnasium's:

1. every step reports a finite hidden reward in ``info["true_reward"]`` (directly, or because the
   env is wrapped in :class:`prefenv.wrappers.PreferenceReward`, which adds it);
2. the spaces flatten into reward-model features (:class:`prefenv.spaces.FlatSpec`);
3. seeded determinism: two resets with the same seed and the same actions give identical
   observations, rewards, true rewards and termination flags.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from gymnasium.utils.env_checker import check_env

from prefenv.spaces import FlatSpec

__all__ = ["check", "CheckReport", "ContractError"]


class ContractError(AssertionError):
    """An env breaks prefenv's contract; the message says which part and how to fix it."""


@dataclass(frozen=True)
class CheckReport:
    """What :func:`check` verified.

    Attributes:
        env_id: the env's registered id, if any.
        obs_dim: flat observation feature size.
        act_dim: flat action feature size.
        steps_checked: steps taken in each determinism rollout.
        true_reward_in_info: whether the env reports ``info["true_reward"]`` itself (if False the
            env's reward is the hidden reward, which PreferenceReward moves into info).
    """

    env_id: str | None
    obs_dim: int
    act_dim: int
    steps_checked: int
    true_reward_in_info: bool


def _rollout(env: gym.Env, seed: int, n_steps: int) -> list[tuple]:
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    trace = [(_snapshot(obs),)]
    for _ in range(n_steps):
        action = env.action_space.sample()
        obs, reward, terminated, truncated, info = env.step(action)
        true = info.get("true_reward", reward)
        if not np.isfinite(true):
            raise ContractError(
                f"info['true_reward'] is {true!r}: the hidden reward must be a finite number"
            )
        trace.append((_snapshot(obs), float(reward), float(true), terminated, truncated))
        if terminated or truncated:
            obs, _ = env.reset()
            trace.append((_snapshot(obs),))
    return trace


def _snapshot(obs) -> bytes:
    if isinstance(obs, dict):
        return b"".join(np.asarray(obs[k]).tobytes() for k in sorted(obs))
    return np.asarray(obs).tobytes()


def check(
    env_or_factory: gym.Env | str | Callable[[], gym.Env],
    seed: int = 0,
    n_steps: int = 100,
    skip_render_check: bool = True,
) -> CheckReport:
    """Check an env against Gymnasium's API and prefenv's contract.

    Args:
        env_or_factory: a registered id, a zero-argument factory, or an env instance. Determinism
            needs two independent instances, so ids and factories check more than an instance
            (an instance is rolled out twice after re-seeding).
        seed: seed for resets and sampled actions.
        n_steps: steps per determinism rollout.
        skip_render_check: passed to Gymnasium's ``check_env``.

    Returns:
        A :class:`CheckReport`. Raises :class:`ContractError` (or Gymnasium's own errors) on failure.
    """
    if isinstance(env_or_factory, str):
        env_id = env_or_factory
        if env_id not in gym.registry:
            import prefenv  # installed task packages register their ids lazily

            prefenv.register_task_envs()

        def factory() -> gym.Env:
            return gym.make(env_id)

    elif isinstance(env_or_factory, gym.Env):
        instance = env_or_factory

        def factory() -> gym.Env:
            return instance

    else:
        factory = env_or_factory

    env = factory()
    flat = FlatSpec(env.observation_space, env.action_space)

    env.reset(seed=seed)
    _, _, _, _, info = env.step(env.action_space.sample())
    has_true = "true_reward" in info

    first = _rollout(env, seed, n_steps)  # also checks the true reward is finite
    with warnings.catch_warnings():
        # the wrapped env is what prefenv promises to keep Gymnasium-correct, so check it as is
        warnings.filterwarnings("ignore", message=".*different from the unwrapped version.*")
        check_env(env, skip_render_check=skip_render_check)

    second = _rollout(factory(), seed, n_steps)
    for t, (a, b) in enumerate(zip(first, second, strict=True)):
        if a != b:
            raise ContractError(
                f"env is not deterministic under a fixed seed: rollouts differ at record {t}. "
                "Draw all randomness from self.np_random (seeded by reset(seed=...)) and the "
                "action space's own seed"
            )
    spec = getattr(env, "spec", None)
    return CheckReport(
        env_id=spec.id if spec is not None else None,
        obs_dim=flat.obs_dim,
        act_dim=flat.act_dim,
        steps_checked=n_steps,
        true_reward_in_info=has_true,
    )
