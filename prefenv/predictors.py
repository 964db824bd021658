"""The one inference contract between a trained reward model and the reward wrappers.

Training writes a reward model; the wrappers never read the live model. They hold a
:class:`RewardPredictor`: a frozen, gradient-free snapshot made by ``model.predictor()`` after a
fit and handed to the wrapper explicitly (``wrapper.set_predictor(model.predictor())``, or
``wrapper.refresh()``; the preference loop does this after every refit). Nothing is cached behind
the caller's back: a snapshot keeps the weights it was made from, so after more training it is
stale until someone asks the model for a new one.

``predict`` returns a :class:`Prediction`: the member mean and, for ensembles, the member std.
Uncertainty shaping (``mean + k * std``) is applied by the wrapper alone.

Per-step models (control, recommendation) score every transition and ignore ``done``. Episode-level
models (text: a score of the whole (prompt, completion)) score only the rows where ``done`` is
True and return 0 elsewhere, so the same wrapper gives text its terminal reward in one batched
call per vector step.

The step predictors of prefenv's own torch reward models (a numpy copy of MLPs and a frozen
torch fallback) live in :mod:`prefenv.step_predictors`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # torch is imported where a tensor is touched: the wrappers, and so
    # `import prefenv` and a task env that never scores a learned reward, stay torch-free
    from torch import Tensor

__all__ = [
    "Prediction",
    "RewardPredictor",
    "PredictorSource",
    "RewardModelError",
    "check_transitions",
    "check_finite",
    "non_finite_error",
]


class RewardModelError(RuntimeError):
    """The reward model produced unusable output (NaN or inf)."""


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
        ensemble: True if ``predict`` returns a member std (an ensemble), False if ``std`` is
            None (one model). The wrappers read it to reject uncertainty shaping without a std.
    """

    obs_dim: int
    act_dim: int
    episode_level: bool
    ensemble: bool

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

        Raises:
            ValueError: inputs of the wrong shape (the message names the expected one).
            RewardModelError: the model produced NaN or inf.
        """
        ...


@runtime_checkable
class PredictorSource(Protocol):
    """A trainable reward model that can snapshot itself for inference."""

    def predictor(self) -> RewardPredictor:
        """A frozen snapshot of the current weights (stale after further training)."""
        ...


def check_transitions(
    obs: np.ndarray | Tensor,
    acts: np.ndarray | Tensor,
    next_obs: np.ndarray | Tensor,
    obs_dim: int,
    act_dim: int,
    spaces: Mapping[str, Any] | None = None,
) -> None:
    """Check ``[N, D_o]``, ``[N, D_a]``, ``[N, D_o]`` inputs (arrays or tensors).

    Raises:
        ValueError: naming the input, the expected and given shapes, and ``spaces`` (the
            ``FlatSpec.describe()`` of the training env) when known.
    """
    if (
        obs.ndim == 2
        and acts.ndim == 2
        and next_obs.ndim == 2
        and obs.shape[1] == obs_dim
        and next_obs.shape[1] == obs_dim
        and acts.shape[1] == act_dim
        and obs.shape[0] == acts.shape[0] == next_obs.shape[0]
    ):
        return  # the per-step path: one expression, no allocation
    trained = f" (trained for: {dict(spaces)})" if spaces else ""
    for name, value, dim in (
        ("obs", obs, obs_dim),
        ("acts", acts, act_dim),
        ("next_obs", next_obs, obs_dim),
    ):
        if value.ndim != 2:
            raise ValueError(
                f"reward model expects {name} as a batch of shape [N, {dim}], got "
                f"{tuple(value.shape)}: pass x[None] for a single step{trained}"
            )
        if value.shape[1] != dim:
            raise ValueError(
                f"reward model expects {name} of shape ({dim},), got {tuple(value.shape[1:])}: "
                f"was it trained on another environment?{trained}"
            )
    raise ValueError(
        f"obs, acts and next_obs must hold the same number of steps, got {obs.shape[0]}, "
        f"{acts.shape[0]} and {next_obs.shape[0]}"
    )


def non_finite_error(bad: int, total: int) -> RewardModelError:
    return RewardModelError(
        f"reward model produced NaN/inf for {bad} of {total} inputs: check input normalisation / "
        "lower the learning rate / load the last good checkpoint"
    )


def check_finite(values: Tensor) -> None:
    """Raise :class:`RewardModelError` if the tensor ``values`` holds NaN or inf."""
    import torch

    finite = torch.isfinite(values)
    if not bool(finite.all()):
        raise non_finite_error(int((~finite).sum()), values.numel())
