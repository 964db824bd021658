"""Running observation normalisation and return-based reward scaling (SB3 VecNormalize style)."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

ObsArray = np.ndarray | dict[str, np.ndarray]


class RunningMeanStd:
    """Streaming mean/variance (parallel algorithm of Chan et al.), float64."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4) -> None:
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = float(epsilon)

    def update(self, batch: np.ndarray) -> None:
        """Fold in a batch ``[B, *shape]``."""
        if batch.shape[0] == 0:
            return
        b_mean = batch.mean(axis=0)
        b_var = batch.var(axis=0)
        b_count = batch.shape[0]
        delta = b_mean - self.mean
        total = self.count + b_count
        self.mean = self.mean + delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "var": self.var.tolist(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean = np.asarray(state["mean"], dtype=np.float64).reshape(self.mean.shape)
        self.var = np.asarray(state["var"], dtype=np.float64).reshape(self.var.shape)
        self.count = float(state["count"])


class ObsNormalizer:
    """``clip((obs - mean) / sqrt(var + eps), -clip, clip)`` for the Box entries of a space.

    Non-Box entries (token ids, one-hot categories, masks) pass through unchanged.
    """

    def __init__(self, space: spaces.Space, clip: float = 10.0, eps: float = 1e-8) -> None:
        self.clip = clip
        self.eps = eps
        if isinstance(space, spaces.Dict):
            subspaces = dict(space.spaces.items())
        else:
            subspaces = {"": space}
        self.rms = {
            k: RunningMeanStd(sub.shape)
            for k, sub in subspaces.items()
            if isinstance(sub, spaces.Box)
        }

    def _items(self, obs: ObsArray) -> dict[str, np.ndarray]:
        return obs if isinstance(obs, dict) else {"": obs}

    def update(self, obs: ObsArray) -> None:
        """Fold in a batch of observations ``[B, ...]``."""
        items = self._items(obs)
        for k, rms in self.rms.items():
            rms.update(np.asarray(items[k], dtype=np.float64))

    def normalize(self, obs: ObsArray) -> ObsArray:
        """Normalised copy (float32 for Box entries)."""
        items = dict(self._items(obs))
        for k, rms in self.rms.items():
            x = (items[k] - rms.mean) / np.sqrt(rms.var + self.eps)
            items[k] = np.clip(x, -self.clip, self.clip).astype(np.float32)
        return items if isinstance(obs, dict) else items[""]

    def state_dict(self) -> dict[str, Any]:
        return {k: rms.state_dict() for k, rms in self.rms.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, rms in self.rms.items():
            rms.load_state_dict(state[k])


class ReturnScaler:
    """Divide rewards by the running std of the discounted return, then clip (VecNormalize).

    ``ret = gamma * ret + r`` per env; the std of ``ret`` is tracked and reset at episode ends.
    Masked (reset) steps neither update the statistics nor the running return.
    """

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, eps: float = 1e-8) -> None:
        self.gamma = gamma
        self.clip = clip
        self.eps = eps
        self.rms = RunningMeanStd(())
        self.returns = np.zeros(num_envs, dtype=np.float64)

    def __call__(self, rewards: np.ndarray, dones: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Scale ``[N]`` rewards of one step; ``dones`` end episodes; ``valid`` masks reset steps."""
        self.returns = np.where(valid, self.returns * self.gamma + rewards, self.returns)
        self.rms.update(self.returns[valid])
        scaled = np.clip(rewards / np.sqrt(self.rms.var + self.eps), -self.clip, self.clip)
        self.returns[dones] = 0.0
        return scaled.astype(np.float32)

    def reset_returns(self) -> None:
        """Forget the running returns of episodes in flight (after an env reset)."""
        self.returns[:] = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"rms": self.rms.state_dict(), "returns": self.returns.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rms.load_state_dict(state["rms"])
        self.returns = np.asarray(state["returns"], dtype=np.float64)
