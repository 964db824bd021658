"""Preallocated rollout storage ``[T, N, ...]`` and the typed batch handed to the update."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from agents.policies import Obs

ObsArray = np.ndarray | dict[str, np.ndarray]


def _obs_dtype(space: spaces.Space) -> np.dtype:
    if isinstance(space, (spaces.Discrete, spaces.MultiDiscrete)):
        return np.dtype(np.int64)
    return np.dtype(np.float32)


def _alloc_obs(space: spaces.Space, lead: tuple[int, ...]) -> ObsArray:
    if isinstance(space, spaces.Dict):
        return {k: _alloc_obs(sub, lead) for k, sub in space.spaces.items()}  # type: ignore[misc]
    return np.zeros((*lead, *space.shape), dtype=_obs_dtype(space))


def _action_dtype(space: spaces.Space) -> np.dtype:
    return np.dtype(np.float32) if isinstance(space, spaces.Box) else np.dtype(np.int64)


def obs_to_tensor(obs: ObsArray, space: spaces.Space, device: torch.device | str) -> Obs:
    """numpy batch -> tensor batch with the buffer dtypes (dict of tensors for Dict spaces)."""
    if isinstance(space, spaces.Dict):
        assert isinstance(obs, dict)
        return {k: obs_to_tensor(obs[k], sub, device) for k, sub in space.spaces.items()}  # type: ignore[misc]
    return torch.as_tensor(np.asarray(obs, dtype=_obs_dtype(space)), device=device)


class RolloutBatch(NamedTuple):
    """Flattened valid transitions of one rollout, B = number of unmasked steps.

    Attributes:
        obs: ``[B, ...]`` (dict of tensors for Dict spaces), as seen by the policy.
        actions: ``[B, *action_shape]`` unclipped sampled actions.
        log_probs: ``[B]`` behaviour log-probs at rollout time.
        values: ``[B]`` values at rollout time.
        advantages: ``[B]`` GAE advantages (not normalised).
        returns: ``[B]`` value targets (advantages + values).
    """

    obs: Obs
    actions: Tensor
    log_probs: Tensor
    values: Tensor
    advantages: Tensor
    returns: Tensor


class RolloutBuffer:
    """Numpy arrays of shape ``[n_steps, num_envs, ...]``, allocated once and overwritten."""

    def __init__(
        self,
        n_steps: int,
        num_envs: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
    ) -> None:
        self.n_steps, self.num_envs = n_steps, num_envs
        self.observation_space = observation_space
        lead = (n_steps, num_envs)
        self.obs = _alloc_obs(observation_space, lead)
        self.actions = np.zeros((*lead, *action_space.shape), dtype=_action_dtype(action_space))
        self.log_probs = np.zeros(lead, dtype=np.float32)
        self.values = np.zeros(lead, dtype=np.float32)
        self.rewards = np.zeros(lead, dtype=np.float32)
        self.kl = np.zeros(lead, dtype=np.float32)
        self.terminated = np.zeros(lead, dtype=bool)
        self.truncated = np.zeros(lead, dtype=bool)
        self.valid = np.zeros(lead, dtype=bool)

    def add_obs(self, t: int, obs: ObsArray) -> None:
        """Store the (normalised) observations the policy acted on at step t."""
        if isinstance(self.obs, dict):
            assert isinstance(obs, dict)
            for k, arr in self.obs.items():
                arr[t] = obs[k]
        else:
            self.obs[t] = obs

    def batch(
        self, advantages: np.ndarray, returns: np.ndarray, device: torch.device | str
    ) -> RolloutBatch:
        """Select the valid steps and convert them to tensors on ``device``."""
        mask = self.valid.reshape(-1)

        def pick(a: np.ndarray) -> np.ndarray:
            return a.reshape(-1, *a.shape[2:])[mask]

        if isinstance(self.obs, dict):
            obs_np: ObsArray = {k: pick(v) for k, v in self.obs.items()}
        else:
            obs_np = pick(self.obs)

        def t(a: np.ndarray) -> Tensor:
            return torch.as_tensor(pick(a), device=device)

        return RolloutBatch(
            obs=obs_to_tensor(obs_np, self.observation_space, device),
            actions=t(self.actions),
            log_probs=t(self.log_probs),
            values=t(self.values),
            advantages=t(advantages),
            returns=t(returns),
        )
