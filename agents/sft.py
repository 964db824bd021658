"""Stage 1 of RLHF for control: behaviour cloning (supervised fine-tuning) into a reference policy.

Demonstrations are raw ``(obs, action)`` pairs as the env gives them. Behaviour cloning
maximises ``log pi(a | s)`` through the policy's own :meth:`log_prob`, so any
:class:`agents.policies.Policy` works (an MLP actor-critic here; a causal LM uses the same call
for next-token log-likelihood). The cloned policy then serves twice: as PPO-KL's frozen
reference (the KL leash) and as the initial policy that PPO-KL continues to train.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from agents.ppo_kl.buffer import obs_to_tensor

__all__ = ["Demonstrations", "BCConfig", "BCMetrics", "collect_demonstrations", "behaviour_clone"]


@dataclass(frozen=True)
class Demonstrations:
    """Raw demonstration pairs.

    Attributes:
        obs: ``[N, *obs_shape]`` observations (or a dict of such arrays for Dict spaces).
        actions: ``[N, *action_shape]`` actions taken in them.
    """

    obs: np.ndarray | dict[str, np.ndarray]
    actions: np.ndarray

    def __post_init__(self) -> None:
        n = len(next(iter(self.obs.values()))) if isinstance(self.obs, dict) else len(self.obs)
        if n != len(self.actions) or n == 0:
            raise ValueError(
                f"demonstrations need as many actions as observations (> 0), got {n} obs and "
                f"{len(self.actions)} actions"
            )

    def __len__(self) -> int:
        return len(self.actions)


def collect_demonstrations(
    env: gym.vector.VectorEnv, policy_fn: Callable[[Any], np.ndarray], n_steps: int, seed: int = 0
) -> Demonstrations:
    """Roll out a demonstrator on a vector env and keep its ``(obs, action)`` pairs.

    Args:
        env: a Gymnasium vector env (NEXT_STEP autoreset: the reset step's pair is dropped).
        policy_fn: ``obs batch -> action batch`` (e.g. a trained agent's ``predict``).
        n_steps: vector steps to take (``n_steps * num_envs`` pairs at most).
        seed: reset seed.
    """
    obs, _ = env.reset(seed=seed)
    obs_rows: list[Any] = []
    act_rows: list[np.ndarray] = []
    resetting = np.zeros(env.num_envs, dtype=bool)
    for _ in range(n_steps):
        actions = np.asarray(policy_fn(obs))
        keep = ~resetting
        obs_rows.append(_select(obs, keep))
        act_rows.append(actions[keep])
        obs, _, terminated, truncated, _ = env.step(actions)
        resetting = np.logical_or(terminated, truncated)
    if isinstance(obs_rows[0], dict):
        stacked: Any = {k: np.concatenate([o[k] for o in obs_rows]) for k in obs_rows[0]}
    else:
        stacked = np.concatenate(obs_rows)
    return Demonstrations(stacked, np.concatenate(act_rows))


def _select(obs: Any, keep: np.ndarray) -> Any:
    if isinstance(obs, dict):
        return {k: np.asarray(v)[keep] for k, v in obs.items()}
    return np.asarray(obs)[keep]


@dataclass(frozen=True)
class BCConfig:
    """Behaviour-cloning hyperparameters.

    Attributes:
        lr: Adam learning rate.
        batch_size: pairs per gradient step.
        epochs: passes over the demonstrations.
        val_fraction: share held out to report generalisation.
        seed: minibatch order and split.
    """

    lr: float = 1e-3
    batch_size: int = 256
    epochs: int = 20
    val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.batch_size < 1 or self.epochs < 1:
            raise ValueError("BCConfig needs lr > 0, batch_size >= 1 and epochs >= 1")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class BCMetrics:
    """Mean negative log-likelihood before and after cloning, on train and held-out pairs."""

    initial_train_nll: float
    train_nll: float
    initial_val_nll: float
    val_nll: float
    epochs: int
    seconds: float


def _nll(policy: nn.Module, obs: Any, actions: torch.Tensor) -> torch.Tensor:
    return -policy.log_prob(obs, actions).mean()


def _index(obs: Any, idx: torch.Tensor) -> Any:
    return {k: v[idx] for k, v in obs.items()} if isinstance(obs, dict) else obs[idx]


def behaviour_clone(
    policy: nn.Module, demos: Demonstrations, config: BCConfig = BCConfig()
) -> BCMetrics:
    """Fit ``policy`` in place to the demonstrations by maximum likelihood.

    Args:
        policy: any :class:`agents.policies.Policy` module (its ``log_prob`` is maximised).
        demos: the demonstration pairs; their spaces must be the policy's.
        config: optimiser settings.
    """
    started = time.perf_counter()
    space = getattr(policy, "observation_space", None)
    obs = obs_to_tensor(demos.obs, space, torch.device("cpu"))
    actions = torch.as_tensor(demos.actions)
    if actions.is_floating_point():
        actions = actions.float()
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(demos), generator=generator)
    n_val = int(len(demos) * config.val_fraction)
    val_idx, train_idx = order[:n_val], order[n_val:]

    def evaluate(idx: torch.Tensor) -> float:
        if len(idx) == 0:
            return float("nan")
        with torch.no_grad():
            return float(_nll(policy, _index(obs, idx), actions[idx]))

    initial_train, initial_val = evaluate(train_idx), evaluate(val_idx)
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=config.lr)
    for _ in range(config.epochs):
        shuffled = train_idx[torch.randperm(len(train_idx), generator=generator)]
        for start in range(0, len(shuffled), config.batch_size):
            batch = shuffled[start : start + config.batch_size]
            loss = _nll(policy, _index(obs, batch), actions[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return BCMetrics(
        initial_train_nll=initial_train,
        train_nll=evaluate(train_idx),
        initial_val_nll=initial_val,
        val_nll=evaluate(val_idx),
        epochs=config.epochs,
        seconds=time.perf_counter() - started,
    )
