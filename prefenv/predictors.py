"""The one inference contract between a trained reward model and the reward wrappers.

Training writes a reward model; the wrappers never read the live model. They hold a
:class:`RewardPredictor`: a frozen, gradient-free snapshot made by ``model.predictor()`` after a
fit and handed to the wrapper explicitly (``wrapper.set_predictor(model.predictor())``; the
preference loop does this after every refit). Nothing is cached behind the caller's back.

``predict`` returns a :class:`Prediction`: the member mean and, for ensembles, the member std.
Uncertainty shaping (``mean + k * std``) is applied by the wrapper alone.

Per-step models (control, recommendation) score every transition and ignore ``done``. Episode-level
models (text: a score of the whole (prompt, completion)) score only the rows where ``done`` is
True and return 0 elsewhere, so the same wrapper gives text its terminal reward in one batched
call per vector step.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

__all__ = ["Prediction", "RewardPredictor"]


class Prediction(NamedTuple):
    """Learned rewards of ``N`` transitions.

    Attributes:
        mean: ``[N]`` float32 reward (the member mean for an ensemble).
        std: ``[N]`` float32 population std across ensemble members; ``None`` for one model.
    """

    mean: np.ndarray
    std: np.ndarray | None


@runtime_checkable
class RewardPredictor(Protocol):
    """A frozen snapshot of a reward model for the env-step path.

    Attributes:
        obs_dim: flat observation size ``D_o`` it expects.
        act_dim: flat action size ``D_a`` it expects.
        episode_level: True if it scores whole episodes on their last step (text), False if it
            scores every step.
    """

    obs_dim: int
    act_dim: int
    episode_level: bool

    def predict(
        self,
        obs: np.ndarray,
        acts: np.ndarray,
        next_obs: np.ndarray,
        done: np.ndarray | None = None,
    ) -> Prediction:
        """Rewards of ``[N, D_o]``, ``[N, D_a]``, ``[N, D_o]`` flat transitions.

        Args:
            done: ``[N]`` bool, True where the transition ends its episode (terminated or
                truncated). Required by episode-level predictors; per-step ones ignore it.
        """
        ...
