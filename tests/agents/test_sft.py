"""Behaviour cloning into a reference policy, then PPO-KL leashed to it."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.policies import MLPActorCritic
from agents.ppo_kl import PPOKL, PPOKLConfig
from agents.sft import BCConfig, Demonstrations, behaviour_clone, collect_demonstrations


def _demonstrator(obs: np.ndarray) -> np.ndarray:
    """A fixed linear controller for Pendulum (the thing to imitate)."""
    return np.clip(-1.5 * obs[:, 1:2] - 0.5 * obs[:, 2:3], -2.0, 2.0).astype(np.float32)


def _pendulum_demos(n_steps: int = 300) -> tuple[gym.vector.VectorEnv, Demonstrations]:
    env = gym.make_vec("Pendulum-v1", num_envs=4, vectorization_mode="sync")
    return env, collect_demonstrations(env, _demonstrator, n_steps=n_steps, seed=0)


def test_behaviour_cloning_imitates_the_demonstrator():
    env, demos = _pendulum_demos()
    assert len(demos) == 4 * 300 - 4  # each sub-env truncates at 200: its reset step is dropped
    torch.manual_seed(0)
    policy = MLPActorCritic(env.single_observation_space, env.single_action_space, (32, 32))
    metrics = behaviour_clone(policy, demos, BCConfig(epochs=60, lr=3e-3))
    assert metrics.train_nll < metrics.initial_train_nll - 0.5
    assert metrics.val_nll < metrics.initial_val_nll - 0.5
    obs = np.random.default_rng(1).uniform(-1, 1, size=(256, 3)).astype(np.float32)
    with torch.no_grad():
        cloned, _, _ = policy.act(torch.as_tensor(obs), deterministic=True)
    error = np.abs(cloned.numpy() - _demonstrator(obs)).mean()
    assert error < 0.15, f"cloned policy deviates by {error:.3f} on average"


def test_cloned_reference_leashes_ppo_kl():
    env, demos = _pendulum_demos(n_steps=200)
    torch.manual_seed(0)
    reference = MLPActorCritic(env.single_observation_space, env.single_action_space, (32, 32))
    behaviour_clone(reference, demos, BCConfig(epochs=30, lr=3e-3))
    config = PPOKLConfig(n_steps=64, batch_size=64, n_epochs=2, kl_coef=0.5, hidden_sizes=(32, 32))
    agent = PPOKL(env, config, policy=copy.deepcopy(reference), ref_policy=reference)
    history = agent.learn(512)
    # starting from the reference, the first rollout's KL is exactly zero, and stays small
    assert history[0].kl_to_ref == pytest.approx(0.0, abs=1e-6)
    assert all(np.isfinite(m.kl_to_ref) for m in history)
    assert all(not p.requires_grad for p in agent.ref_policy.parameters())


def test_mismatched_demonstrations_are_a_clear_error():
    with pytest.raises(ValueError, match="as many actions as observations"):
        Demonstrations(np.zeros((5, 3)), np.zeros((4, 1)))
