"""Every registered prefenv id: lazy registration, check_env and a seeded-determinism rollout."""

from __future__ import annotations

import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env, data_equivalence

import envs

MUJOCO_V5 = {
    "prefenv/HalfCheetah-v0": "HalfCheetah-v5",
    "prefenv/Hopper-v0": "Hopper-v5",
    "prefenv/Walker2d-v0": "Walker2d-v5",
    "prefenv/Ant-v0": "Ant-v5",
    "prefenv/Reacher-v0": "Reacher-v5",
}


def test_registered_ids_are_in_the_gymnasium_registry() -> None:
    ids = envs.registered_ids()
    assert set(MUJOCO_V5) <= set(ids)
    assert len(ids) == len(set(ids))
    for env_id in ids:
        assert env_id in gym.registry
        assert env_id.startswith("prefenv/")
        assert isinstance(gym.spec(env_id).entry_point, str), "entry points must be lazy strings"


def test_register_envs_is_idempotent() -> None:
    before = {env_id: gym.spec(env_id) for env_id in envs.registered_ids()}
    envs.register_envs()
    envs.register_envs()
    assert {env_id: gym.spec(env_id) for env_id in envs.registered_ids()} == before


@pytest.mark.parametrize("env_id", sorted(MUJOCO_V5))
def test_horizon_matches_mujoco_v5(env_id: str) -> None:
    assert gym.spec(env_id).max_episode_steps == gym.spec(MUJOCO_V5[env_id]).max_episode_steps


def test_importing_envs_does_not_import_mujoco() -> None:
    code = (
        "import sys, envs, gymnasium\n"
        "assert 'prefenv/HalfCheetah-v0' in gymnasium.registry\n"
        "heavy = [m for m in ('mujoco', 'envs.mujoco', 'stable_baselines3') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("env_id", envs.registered_ids())
def test_check_env(env_id: str) -> None:
    env = gym.make(env_id)
    with warnings.catch_warnings():
        # check_env recommends env.unwrapped; we check the made env so our wrapper is covered.
        warnings.filterwarnings("ignore", message=".*different from the unwrapped version.*")
        # MuJoCo v5 observation spaces are unbounded by design.
        warnings.filterwarnings("ignore", message=".*Box observation space m.*infinity.*")
        check_env(env, skip_render_check=True)
    env.close()


def _rollout(env_id: str, seed: int, steps: int) -> list[tuple]:
    env = gym.make(env_id)
    env.action_space.seed(seed)
    obs, info = env.reset(seed=seed)
    out: list[tuple] = [(obs, info)]
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        out.append((obs, reward, terminated, truncated, info))
        if terminated or truncated:
            out.append(env.reset())
    env.close()
    return out


@pytest.mark.parametrize("env_id", envs.registered_ids())
def test_seeded_rollouts_are_deterministic(env_id: str) -> None:
    first, second = _rollout(env_id, seed=3, steps=20), _rollout(env_id, seed=3, steps=20)
    assert data_equivalence(first, second, exact=True)
    other = _rollout(env_id, seed=4, steps=20)
    assert not data_equivalence(first, other), "a different seed should change the rollout"
    rewards = [step[1] for step in first if len(step) == 5]
    assert all(np.isfinite(r) for r in rewards)
