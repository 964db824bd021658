"""Segments stacked into padded tensors: the input of every segment-return computation.

A reward model's segment return is the sum of its step rewards. :class:`SegmentBatch` stacks
``B`` segments of up to ``H`` steps into ``[B, H, D]`` tensors once (padding shorter ones and
masking the padding out of the sums), so the Bradley-Terry trainer and the query sampler run one
forward pass over ``B * H`` steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from prefenv.records import Segment

__all__ = ["SegmentBatch"]


class SegmentBatch(NamedTuple):
    """Segments stacked into padded tensors, built once and indexed into minibatches.

    Attributes:
        obs: ``[B, H, D_o]`` observation before each step.
        acts: ``[B, H, D_a]``.
        next_obs: ``[B, H, D_o]`` observation after each step.
        mask: ``[B, H]`` 1 for real steps, 0 for padding; ``None`` when all segments have length H.
    """

    obs: Tensor
    acts: Tensor
    next_obs: Tensor
    mask: Tensor | None

    @classmethod
    def from_segments(
        cls, segments: Sequence[Segment], device: torch.device | str | None = None
    ) -> SegmentBatch:
        """Stack ``B`` segments of one env (lengths may differ) on ``device``.

        Raises:
            ValueError: no segments, or segments of different flat sizes.
        """
        if len(segments) == 0:
            raise ValueError("need at least one segment")
        obs_dims = {s.obs.shape[1] for s in segments}
        act_dims = {s.acts.shape[1] for s in segments}
        if len(obs_dims) > 1 or len(act_dims) > 1:
            raise ValueError(
                f"segments come from different spaces (obs sizes {sorted(obs_dims)}, action sizes "
                f"{sorted(act_dims)}): stack segments of one environment only"
            )
        lengths = np.array([len(s) for s in segments])
        horizon = int(lengths.max())
        if np.all(lengths == horizon):
            all_obs = np.stack([s.obs for s in segments])
            acts = np.stack([s.acts for s in segments])
            mask = None
        else:  # pad to the longest segment; padded steps are masked out of the sums
            all_obs = np.zeros((len(segments), horizon + 1, obs_dims.pop()), dtype=np.float32)
            acts = np.zeros((len(segments), horizon, act_dims.pop()), dtype=np.float32)
            for i, s in enumerate(segments):
                all_obs[i, : len(s) + 1] = s.obs
                acts[i, : len(s)] = s.acts
            mask = torch.from_numpy(np.arange(horizon)[None, :] < lengths[:, None]).float()
            mask = mask.to(device)
        obs_t = torch.from_numpy(all_obs).to(device)
        return cls(
            obs_t[:, :-1].contiguous(),
            torch.from_numpy(acts).to(device),
            obs_t[:, 1:].contiguous(),
            mask,
        )

    def __len__(self) -> int:
        return self.acts.shape[0]

    def take(self, index: Tensor) -> SegmentBatch:
        """The segments at ``index`` (``[b]`` long tensor)."""
        mask = None if self.mask is None else self.mask[index]
        return SegmentBatch(self.obs[index], self.acts[index], self.next_obs[index], mask)

    def flat(self) -> tuple[Tensor, Tensor, Tensor]:
        """``([B*H, D_o], [B*H, D_a], [B*H, D_o])`` step inputs for one forward pass."""
        steps = self.acts.shape[0] * self.acts.shape[1]
        return (
            self.obs.reshape(steps, -1),
            self.acts.reshape(steps, -1),
            self.next_obs.reshape(steps, -1),
        )

    def sum_steps(self, rewards: Tensor) -> Tensor:
        """Sum ``[..., B*H]`` step rewards into ``[..., B]`` segment returns."""
        rewards = rewards.reshape(*rewards.shape[:-1], *self.acts.shape[:2])
        if self.mask is not None:
            rewards = rewards * self.mask
        return rewards.sum(-1)
