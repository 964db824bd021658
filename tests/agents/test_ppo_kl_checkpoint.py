"""Checkpoints of agents.ppo_kl: exact resume and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.ppo_kl import PPOKL, SCHEMA_VERSION, CheckpointError, PPOKLConfig
from agents.ppo_kl.checkpoint import checkpoint_path
from prefenv import errors, reward_checkpoints

# Every piece of resumable state in use: normalisers, adaptive KL with a frozen reference.
CFG = PPOKLConfig(
    n_steps=32,
    batch_size=16,
    n_epochs=2,
    hidden_sizes=(16,),
    norm_obs=True,
    norm_reward=True,
    kl_coef=0.1,
    adaptive_kl=True,
    kl_horizon=50,
    kl_estimator="k3",
    seed=3,
)
ITER = 32 * 2


def make_env() -> gym.vector.VectorEnv:
    return gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync")


def state_of(agent: PPOKL) -> dict:
    return {
        "policy": agent.policy.state_dict(),
        "ref": agent.ref_policy.state_dict() if agent.ref_policy is not None else None,
        "adam": agent.optimizer.state_dict()["state"],
        "beta": agent.kl_controller.kl_coef,
        "obs_mean": agent.obs_normalizer.rms[""].mean if agent.obs_normalizer else None,
        "ret_var": agent.return_scaler.rms.var if agent.return_scaler else None,
        "steps": (agent.num_timesteps, agent.iterations),
    }


def test_resumed_run_matches_uninterrupted_run(tmp_path: Path) -> None:
    # A: never killed, checkpoints after iteration 1 like B does.
    a = PPOKL(make_env(), CFG)
    a.learn(ITER)
    a.save(tmp_path / "a")
    (a2,) = a.learn(ITER)

    # B: killed after its checkpoint; a fresh process-like agent and env resume it.
    b = PPOKL(make_env(), CFG)
    b.learn(ITER)
    b.save(tmp_path / "b")
    del b
    torch.manual_seed(999)  # global RNG noise must not matter
    resumed = PPOKL.load(tmp_path / "b", make_env())
    (b2,) = resumed.learn(ITER)

    torch.testing.assert_close(state_of(resumed), state_of(a), rtol=0, atol=0)
    same = {"fps"}
    for field, value in a2.as_dict().items():
        if field not in same:
            np.testing.assert_equal(getattr(b2, field), value, err_msg=field)
    assert resumed.config == CFG and b2.iteration == 2 and b2.timesteps == 2 * ITER


def test_checkpoint_is_written_atomically(tmp_path: Path) -> None:
    agent = PPOKL(make_env(), CFG)
    path = agent.save(tmp_path)
    agent.save(tmp_path)  # overwrite in place
    assert path == checkpoint_path(tmp_path) and path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp files left


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path: Path) -> None:
    path = PPOKL(make_env(), CFG).save(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        PPOKL.load(tmp_path, make_env())
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="earlier checkpoint"):
        PPOKL.load(tmp_path, make_env())


def test_unknown_schema_and_missing_checkpoint(tmp_path: Path) -> None:
    torch.save({"schema_version": SCHEMA_VERSION + 1}, checkpoint_path(tmp_path))
    with pytest.raises(CheckpointError, match="schema version"):
        PPOKL.load(tmp_path, make_env())
    torch.save({"weights": torch.zeros(1)}, checkpoint_path(tmp_path))
    with pytest.raises(CheckpointError, match="PPOKL.save"):
        PPOKL.load(tmp_path, make_env())
    with pytest.raises(errors.CheckpointNotFoundError, match="no PPO-KL checkpoint"):
        PPOKL.load(tmp_path / "nowhere", make_env())


def test_one_checkpoint_error_hierarchy_for_agents_and_reward_models() -> None:
    assert CheckpointError is errors.CheckpointError is reward_checkpoints.CheckpointError
    # a missing checkpoint is also a FileNotFoundError; every checkpoint error a ValueError,
    # which the command line reports as a one-line error
    assert issubclass(errors.CheckpointNotFoundError, CheckpointError)
    assert issubclass(errors.CheckpointNotFoundError, FileNotFoundError)
    assert issubclass(CheckpointError, ValueError)


def test_checkpoint_for_another_env_is_rejected(tmp_path: Path) -> None:
    PPOKL(make_env(), CFG).save(tmp_path)
    pendulum = gym.make_vec("Pendulum-v1", num_envs=2, vectorization_mode="sync")
    with pytest.raises(CheckpointError, match="env it was trained on"):
        PPOKL.load(tmp_path, pendulum)
