"""Exploration schedules for uncertainty shaping: ``k_t`` in ``r = mean + k_t * std``.

The reward wrappers (:mod:`prefenv.wrappers`) score each step with a reward ensemble's member
mean and its member std, and add ``k_t * std``. ``k_t`` comes from a :class:`ShapingSchedule`
evaluated at ``t``, the agent env steps taken so far (summed over sub-envs):

- :class:`ConstantShaping`: ``k_t = k``. Negative is conservative (penalises what the ensemble
  is unsure about), positive explores; 0 is the plain mean. A plain float given to a wrapper
  means this.
- :class:`RuneSchedule`: RUNE (Liang et al., ICLR 2022, ``rll-research/rune``): an exploration
  bonus ``beta_t * std`` with ``beta_t = beta0 * (1 - rho)^t``. Early on the agent is drawn to the
  transitions the reward ensemble disagrees about (where a label teaches the most); as ``t``
  grows the bonus fades and the agent optimises the learned reward alone.

What RUNE's std is, and how it is used (read in ``rll-research/rune``): the population std
(``np.std``, ``ddof = 0``) across ensemble members of the *per-step* reward ``r_k(s, a)`` (each
member's tanh output), added to the member mean without any normalisation (only the state-entropy
reward of unsupervised pre-training is normalised there, not this bonus). prefenv's
:class:`~prefenv.predictors.Prediction` ``std`` is that same quantity (population std of the
members' per-step rewards), so the wrapper applies ``mean + k_t * std`` unchanged.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "ConstantShaping",
    "RuneSchedule",
    "ShapingSchedule",
    "as_schedule",
    "shapes_never",
]


@runtime_checkable
class ShapingSchedule(Protocol):
    """``k_t``, the weight of the ensemble std in ``mean + k_t * std``, after ``t`` env steps."""

    def value(self, steps: int) -> float:
        """``k_t`` after ``steps`` agent env steps (summed over sub-envs), ``steps >= 0``."""
        ...


@dataclass(frozen=True)
class ConstantShaping:
    """``k_t = k`` at every step: what a wrapper's plain float ``shaping`` means.

    Attributes:
        k: the weight of the std; negative is conservative, positive explores, 0 is off.
    """

    k: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.k):
            raise ValueError(f"shaping k must be a finite number, got {self.k}")

    def value(self, steps: int) -> float:
        """``k`` whatever ``steps`` is."""
        return self.k


@dataclass(frozen=True)
class RuneSchedule:
    """RUNE's decaying exploration weight ``beta_t = beta0 * (1 - decay)^t``.

    Defaults are RUNE's (Liang et al. 2022, ``config/agent/sac_explore.yaml``: ``beta_init 0.05``,
    ``beta_decay 0.00001``, ``beta_schedule linear_decay``): the weight halves about every 69,000
    steps and is about ``2e-6`` after 1M steps. (RUNE's PrefPPO script defaults to
    ``beta_init 0.01``, ``beta_decay 0.0001``, where ``t`` is also the env steps summed over its
    16 sub-envs.)

    Attributes:
        beta0: ``beta_0``, the weight at ``t = 0`` (positive explores).
        decay: ``rho`` in ``(1 - rho)^t``, in ``[0, 1)``; 0 keeps ``beta0`` for ever.
    """

    beta0: float = 0.05  # RUNE sac_explore.yaml beta_init
    decay: float = 1e-5  # RUNE sac_explore.yaml beta_decay

    def __post_init__(self) -> None:
        if not math.isfinite(self.beta0):
            raise ValueError(f"RuneSchedule beta0 must be a finite number, got {self.beta0}")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(
                f"RuneSchedule decay must be in [0, 1) (the per-step factor is 1 - decay), got "
                f"{self.decay}: RUNE uses 1e-5"
            )

    def value(self, steps: int) -> float:
        """``beta0 * (1 - decay) ** steps``.

        Raises:
            ValueError: ``steps`` is negative.
        """
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        return self.beta0 * (1.0 - self.decay) ** steps


def as_schedule(shaping: float | ShapingSchedule) -> ShapingSchedule:
    """A schedule from a wrapper's ``shaping`` argument: a float ``k`` is :class:`ConstantShaping`.

    Raises:
        TypeError: ``shaping`` is neither a number nor a :class:`ShapingSchedule`.
    """
    if isinstance(shaping, ShapingSchedule):
        return shaping
    if isinstance(shaping, numbers.Real) and not isinstance(shaping, bool):
        return ConstantShaping(float(shaping))
    raise TypeError(
        f"shaping must be a number k (mean + k * std) or a ShapingSchedule with value(steps), "
        f"got {type(shaping).__name__}: e.g. prefenv.exploration.RuneSchedule(beta0=0.05)"
    )


def shapes_never(schedule: ShapingSchedule) -> bool:
    """True if ``schedule`` is known to give ``k_t = 0`` at every step (no std needed).

    Only a zero :class:`ConstantShaping` or a zero-``beta0`` :class:`RuneSchedule` is known to;
    any other schedule is assumed to shape, so the wrapper asks for a reward ensemble.
    """
    if isinstance(schedule, ConstantShaping):
        return schedule.k == 0.0
    if isinstance(schedule, RuneSchedule):
        return schedule.beta0 == 0.0
    return False
