"""Frozen records that flow through the preference pipeline.

Every array in these records is a *flat feature* array: observations and actions have been
passed through :class:`prefenv.spaces.FlatSpec` (Box -> float vector, Discrete -> one-hot,
Dict -> concatenation), so one reward model and one Bradley-Terry trainer serve every task.

Shapes use ``T`` for an episode's length, ``H`` for a segment's length, ``D_o`` and ``D_a`` for the
flat observation and action sizes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Trajectory", "Segment", "Comparison", "VALID_LABELS", "labelled"]

VALID_LABELS = (0.0, 0.5, 1.0)
"""Labels a comparison may carry: 0 = first segment preferred, 1 = second, 0.5 = equally good."""


def _as_float_array(name: str, value: Any, ndim: int) -> np.ndarray:
    array = np.asarray(value, dtype=np.float32)
    if array.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf: record only finite values")
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class Trajectory:
    """One recorded episode (or the unfinished tail of one).

    Attributes:
        obs: ``[T + 1, D_o]`` flat observations; ``obs[t + 1]`` is the observation after ``acts[t]``.
        acts: ``[T, D_a]`` flat actions.
        true_rewards: ``[T]`` the task's hidden reward (what the teacher judges).
        terminated: whether the episode ended in a terminal state (False for a time limit cut).
        context: optional task context such as a prompt or a user id.
    """

    obs: np.ndarray
    acts: np.ndarray
    true_rewards: np.ndarray
    terminated: bool = False
    context: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "obs", _as_float_array("obs", self.obs, 2))
        object.__setattr__(self, "acts", _as_float_array("acts", self.acts, 2))
        object.__setattr__(
            self, "true_rewards", _as_float_array("true_rewards", self.true_rewards, 1)
        )
        steps = len(self.acts)
        if len(self.obs) != steps + 1 or len(self.true_rewards) != steps:
            raise ValueError(
                f"trajectory of {steps} actions needs {steps + 1} observations and {steps} "
                f"rewards, got {len(self.obs)} and {len(self.true_rewards)}"
            )

    def __len__(self) -> int:
        return len(self.acts)

    @property
    def true_return(self) -> float:
        """Undiscounted sum of the hidden reward."""
        return float(self.true_rewards.sum())

    def segment(self, start: int, length: int) -> Segment:
        """Cut ``[start, start + length)`` out of this trajectory."""
        if start < 0 or length < 1 or start + length > len(self):
            raise ValueError(
                f"segment [{start}, {start + length}) does not fit a trajectory of {len(self)} steps"
            )
        return Segment(
            obs=self.obs[start : start + length + 1],
            acts=self.acts[start : start + length],
            true_rewards=self.true_rewards[start : start + length],
            context=self.context,
        )


@dataclass(frozen=True, eq=False)
class Segment:
    """A fixed-length piece of a trajectory, the unit a teacher compares.

    Attributes:
        obs: ``[H + 1, D_o]``; step ``t`` goes from ``obs[t]`` to ``obs[t + 1]``.
        acts: ``[H, D_a]``.
        true_rewards: ``[H]`` hidden per-step reward.
        context: optional task context (prompt, completion text, user id, ...).
    """

    obs: np.ndarray
    acts: np.ndarray
    true_rewards: np.ndarray
    context: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "obs", _as_float_array("obs", self.obs, 2))
        object.__setattr__(self, "acts", _as_float_array("acts", self.acts, 2))
        object.__setattr__(
            self, "true_rewards", _as_float_array("true_rewards", self.true_rewards, 1)
        )
        steps = len(self.acts)
        if steps == 0:
            raise ValueError("a segment needs at least one step")
        if len(self.obs) != steps + 1 or len(self.true_rewards) != steps:
            raise ValueError(
                f"segment of {steps} actions needs {steps + 1} observations and {steps} rewards, "
                f"got {len(self.obs)} and {len(self.true_rewards)}"
            )

    def __len__(self) -> int:
        return len(self.acts)

    @property
    def next_obs(self) -> np.ndarray:
        """``[H, D_o]`` observation after each step."""
        return self.obs[1:]

    @property
    def true_return(self) -> float:
        return float(self.true_rewards.sum())


@dataclass(frozen=True, eq=False)
class Comparison:
    """One labelled (or skipped) pair of segments.

    Attributes:
        segment0: the first segment shown.
        segment1: the second segment shown.
        label: ``1.0`` if ``segment1`` is preferred, ``0.0`` if ``segment0`` is, ``0.5`` for "equally
            good", ``None`` if the teacher skipped the query (it still counts against the budget).
        teacher: name of whoever labelled it (a synthetic preset or a human annotator id).
        created: Unix time of the label.
    """

    segment0: Segment
    segment1: Segment
    label: float | None
    teacher: str = "unknown"
    created: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.label is not None:
            label = float(self.label)
            if label not in VALID_LABELS:
                raise ValueError(
                    f"comparison label must be one of {VALID_LABELS} or None (skipped), "
                    f"got {self.label!r}"
                )
            object.__setattr__(self, "label", label)
        if self.segment0.obs.shape[1:] != self.segment1.obs.shape[1:] or (
            self.segment0.acts.shape[1:] != self.segment1.acts.shape[1:]
        ):
            raise ValueError(
                "both segments of a comparison must come from the same spaces: got obs "
                f"{self.segment0.obs.shape[1:]} vs {self.segment1.obs.shape[1:]} and acts "
                f"{self.segment0.acts.shape[1:]} vs {self.segment1.acts.shape[1:]}"
            )

    @property
    def skipped(self) -> bool:
        return self.label is None


def labelled(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The comparisons that carry a label (skipped ones removed)."""
    return [c for c in comparisons if c.label is not None]
