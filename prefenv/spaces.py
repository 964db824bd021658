"""Flat feature views of Gymnasium spaces, batched.

Reward models see every observation and action as a float vector. :class:`FlatSpec` turns a batch
of space elements into ``[N, D]`` float32 arrays in one vectorised call: Box is reshaped,
Discrete and MultiDiscrete become one-hot blocks, MultiBinary becomes 0/1 floats, and a flat Dict
(one level of the above) becomes the concatenation of its entries in key order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

__all__ = ["FlatSpec", "flat_dim", "describe_space"]


def _check_flattenable(space: spaces.Space, where: str) -> None:
    if isinstance(space, spaces.Dict):
        for key, sub in space.spaces.items():
            if isinstance(sub, (spaces.Dict, spaces.Tuple)):
                raise TypeError(
                    f"{where} is a nested Dict (entry {key!r} is a {type(sub).__name__}): prefenv "
                    "reward models take flat Dict spaces only; flatten it with "
                    "gymnasium.wrappers.FlattenObservation or give the entry its own Box"
                )
            _check_flattenable(sub, f"{where}[{key!r}]")
    elif not isinstance(
        space, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
    ):
        raise TypeError(
            f"{where} is a {type(space).__name__}, which prefenv cannot turn into a feature vector: "
            "use Box, Discrete, MultiDiscrete, MultiBinary or a flat Dict of these"
        )


def flat_dim(space: spaces.Space) -> int:
    """Length of the flat feature vector of one element of ``space``."""
    if isinstance(space, spaces.Box):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiDiscrete):
        return int(np.sum(space.nvec))
    if isinstance(space, spaces.MultiBinary):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.Dict):
        return sum(flat_dim(sub) for sub in space.spaces.values())
    raise TypeError(f"unsupported space {space!r}")


def describe_space(space: spaces.Space) -> dict[str, Any]:
    """A JSON-able description used to check a saved reward model against an env."""
    if isinstance(space, spaces.Box):
        return {"type": "Box", "shape": list(space.shape)}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": np.asarray(space.nvec).ravel().tolist()}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "shape": list(space.shape)}
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {k: describe_space(s) for k, s in space.spaces.items()}}
    raise TypeError(f"unsupported space {space!r}")


def _one_hot(index: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((index.shape[0], n), dtype=np.float32)
    out[np.arange(index.shape[0]), index] = 1.0
    return out


def _flatten_batch(space: spaces.Space, batch: Any, n: int) -> np.ndarray:
    if isinstance(space, spaces.Box) or isinstance(space, spaces.MultiBinary):
        return np.asarray(batch, dtype=np.float32).reshape(n, -1)
    if isinstance(space, spaces.Discrete):
        index = np.asarray(batch, dtype=np.int64).reshape(n) - int(space.start)
        if np.any(index < 0) or np.any(index >= space.n):
            raise ValueError(f"Discrete({space.n}) value out of range in batch {batch!r}")
        return _one_hot(index, int(space.n))
    if isinstance(space, spaces.MultiDiscrete):
        values = np.asarray(batch, dtype=np.int64).reshape(n, -1)
        nvec = np.asarray(space.nvec).ravel()
        return np.concatenate([_one_hot(values[:, i], int(k)) for i, k in enumerate(nvec)], axis=1)
    if isinstance(space, spaces.Dict):
        if not isinstance(batch, Mapping):
            raise TypeError(f"expected a dict batch for a Dict space, got {type(batch).__name__}")
        return np.concatenate(
            [_flatten_batch(sub, batch[key], n) for key, sub in space.spaces.items()], axis=1
        )
    raise TypeError(f"unsupported space {space!r}")


@dataclass(frozen=True)
class FlatSpec:
    """Batched flattening of one env's observation and action spaces.

    Attributes:
        observation_space: the single-env observation space.
        action_space: the single-env action space.
    """

    observation_space: spaces.Space
    action_space: spaces.Space

    def __post_init__(self) -> None:
        _check_flattenable(self.observation_space, "observation space")
        _check_flattenable(self.action_space, "action space")

    @property
    def obs_dim(self) -> int:
        return flat_dim(self.observation_space)

    @property
    def act_dim(self) -> int:
        return flat_dim(self.action_space)

    def obs(self, batch: Any, n: int) -> np.ndarray:
        """``[n, obs_dim]`` float32 features of a batch of ``n`` observations."""
        return _flatten_batch(self.observation_space, batch, n)

    def acts(self, batch: Any, n: int) -> np.ndarray:
        """``[n, act_dim]`` float32 features of a batch of ``n`` actions."""
        return _flatten_batch(self.action_space, batch, n)

    def describe(self) -> dict[str, Any]:
        return {
            "observation_space": describe_space(self.observation_space),
            "action_space": describe_space(self.action_space),
        }
