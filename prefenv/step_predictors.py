"""Step predictors of prefenv's torch reward models: the snapshots ``model.predictor()`` returns.

Both implement :class:`prefenv.predictors.RewardPredictor` for per-step models:

- :class:`NumpyMLPPredictor`: CPU MLPs copied into stacked float32 numpy arrays, all members in
  one ``np.matmul`` per layer (on the handful of rows of an env step, torch's per-op dispatch
  would cost about 0.5 ms for B-Pref's 3 x (3 x 256) ensemble, numpy tens of microseconds).
- :class:`TorchPredictor`: a frozen deep copy of any other module (a user module, a GPU model,
  an activation numpy does not implement here), run under ``torch.inference_mode``.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np
from threadpoolctl import ThreadpoolController

from prefenv.predictors import Prediction, check_transitions, non_finite_error

if TYPE_CHECKING:  # torch is imported inside TorchPredictor: numpy snapshots need none of it
    import torch
    from torch import Tensor

__all__ = ["NUMPY_ACTIVATIONS", "NumpyMLPPredictor", "TorchPredictor"]


class _StepPredictor(ABC):
    """``predict`` shared by both predictors: validate once, score ``[K, N]``, reduce.

    Args:
        obs_dim: flat observation size ``D_o``.
        act_dim: flat action size ``D_a``.
        members: ``K``, the rows ``member_rewards`` returns (1 for a single model).
        ensemble: report the std across members (else ``std`` is None and ``K`` must be 1).
        spaces: ``FlatSpec.describe()`` of the env the model was trained for (error messages).
    """

    episode_level = False

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        members: int,
        ensemble: bool,
        spaces: Mapping[str, Any] | None,
    ) -> None:
        if members < 1 or (not ensemble and members != 1):
            raise ValueError(
                f"a predictor needs K >= 1 members, and K = 1 unless it is an ensemble; got "
                f"K = {members}, ensemble={ensemble}"
            )
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.ensemble = bool(ensemble)
        self.spaces = spaces
        self._average = np.full(members, 1.0 / members, dtype=np.float32)  # [K] member weights

    @abstractmethod
    def member_rewards(self, obs: np.ndarray, acts: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
        """``[K, N]`` float32 rewards of validated float32 ``[N, D]`` inputs."""

    def predict(
        self,
        obs: np.ndarray,
        acts: np.ndarray,
        next_obs: np.ndarray,
        done: np.ndarray | None = None,
    ) -> Prediction:
        """Rewards of ``[N, D_o]``, ``[N, D_a]``, ``[N, D_o]`` transitions; ``done`` is ignored."""
        obs = np.asarray(obs, dtype=np.float32)  # no copy for float32 input
        acts = np.asarray(acts, dtype=np.float32)
        next_obs = np.asarray(next_obs, dtype=np.float32)
        check_transitions(obs, acts, next_obs, self.obs_dim, self.act_dim, self.spaces)
        rewards = self.member_rewards(obs, acts, next_obs)
        # Few numpy calls on purpose: between two env steps the caches are cold and each call
        # costs microseconds. A NaN/inf in any member makes the mean, and its sum, non-finite.
        mean = rewards[0] if not self.ensemble else self._average @ rewards
        if not math.isfinite(np.add.reduce(mean)):
            bad = int((~np.isfinite(rewards)).any(axis=0).sum())
            if bad:  # (else the sum overflowed: the rewards themselves are finite)
                raise non_finite_error(bad, rewards.shape[1])
        if not self.ensemble:
            return Prediction(mean, None)
        deviation = rewards - mean
        deviation *= deviation
        variance = self._average @ deviation  # population variance across members
        return Prediction(mean, np.sqrt(variance, out=variance))


_HIDDEN: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "leaky_relu": lambda x: np.maximum(x, 0.01 * x, out=x),  # negative slope 0.01, as torch
    "relu": lambda x: np.maximum(x, 0.0, out=x),
    "tanh": lambda x: np.tanh(x, out=x),
}
_OUTPUT: dict[str | None, Callable[[np.ndarray], np.ndarray]] = {
    None: lambda x: x,
    "tanh": lambda x: np.tanh(x, out=x),
    "sigmoid": lambda x: 0.5 * (np.tanh(0.5 * x) + 1.0),  # = 1 / (1 + e^-x), no exp overflow
}
NUMPY_ACTIVATIONS: frozenset[str] = frozenset(_HIDDEN)
"""Hidden activations :class:`NumpyMLPPredictor` implements (others use :class:`TorchPredictor`)."""

# OpenBLAS runs an sgemm on one thread when m * n * k is at most SMP_THRESHOLD_MIN (65536) times
# GEMM_MULTITHREAD_THRESHOLD (4), and splits it across threads above that.
_OPENBLAS_THREADED_MNK = 65536 * 4
_PINNED_MAX_ROWS = 256  # env-step sized calls; larger batches (replay relabelling) keep threads


@functools.cache
def _blas_controllers() -> tuple[Any, ...]:
    """threadpoolctl's handles on the loaded BLAS libraries (looked up once per process)."""
    return tuple(ThreadpoolController().select(user_api="blas").lib_controllers)


@contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Run numpy's BLAS on one thread for the block, then restore its setting.

    Env-step matmuls are small ([K, 8, 256] x [K, 256, 256]) but above OpenBLAS's threading
    threshold; on a busy 2-core machine its threads made them 3x slower than one (490 vs 150 us).
    A switch is a few ctypes calls, made only for calls that would otherwise be threaded.
    """
    controllers = _blas_controllers()
    previous = [controller.num_threads for controller in controllers]
    for controller in controllers:
        controller.set_num_threads(1)
    try:
        yield
    finally:
        for controller, n in zip(controllers, previous, strict=True):
            controller.set_num_threads(n)


class NumpyMLPPredictor(_StepPredictor):
    """``K`` same-shaped MLP reward networks as stacked float32 numpy arrays (a frozen copy).

    Computes ``out(W_L h_{L-1} + b_L)`` with ``h_0 = (x - mean) / std`` and
    ``h_l = act(W_l h_{l-1} + b_l)``, ``x = [obs, acts(, next_obs)]``: the forward pass of
    :class:`prefenv.reward_models.MLPRewardModel`. The ``1 / std`` scale is folded into the first
    layer's weights at construction.

    Args:
        weights: per layer ``[K, in_l, out_l]`` (torch's ``weight.T`` stacked over members);
            the last layer has ``out_L = 1``. Copied.
        biases: per layer ``[K, out_l]``. Copied.
        input_mean: ``[K, in_1]`` input normaliser mean.
        input_std: ``[K, in_1]`` input normaliser std (positive).
        activation: hidden activation, one of :data:`NUMPY_ACTIVATIONS`.
        output_activation: ``"tanh"``, ``"sigmoid"`` or ``None``.
        use_next_obs: the input is ``[obs, acts, next_obs]`` rather than ``[obs, acts]``.
        obs_dim: flat observation size ``D_o``.
        act_dim: flat action size ``D_a``.
        ensemble: report the member std (False: ``K`` must be 1 and ``std`` is None).
        spaces: ``FlatSpec.describe()`` of the training env, for error messages.
    """

    def __init__(
        self,
        weights: Sequence[np.ndarray],
        biases: Sequence[np.ndarray],
        input_mean: np.ndarray,
        input_std: np.ndarray,
        *,
        activation: str,
        output_activation: str | None,
        use_next_obs: bool,
        obs_dim: int,
        act_dim: int,
        ensemble: bool,
        spaces: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(obs_dim, act_dim, len(input_mean), ensemble, spaces)
        if activation not in _HIDDEN or output_activation not in _OUTPUT:
            raise ValueError(
                f"NumpyMLPPredictor runs hidden activations {sorted(NUMPY_ACTIVATIONS)} and "
                f"outputs tanh/sigmoid/None, got {activation!r}/{output_activation!r}: use "
                "TorchPredictor for this model"
            )
        self.use_next_obs = bool(use_next_obs)
        self._hidden, self._output = _HIDDEN[activation], _OUTPUT[output_activation]
        mean = np.asarray(input_mean, dtype=np.float32)
        # one [in] mean when the members share it (an ensemble fit on the same data), so the
        # centred input is computed once and broadcast; else [K, 1, in]
        self._mean = mean[0].copy() if (mean == mean[:1]).all() else mean[:, None, :].copy()
        scale = 1.0 / np.asarray(input_std, dtype=np.float64)  # [K, in], folded into W_1
        first = (np.asarray(weights[0], dtype=np.float64) * scale[:, :, None]).astype(np.float32)
        self._weights = [first] + [np.array(w, dtype=np.float32, order="C") for w in weights[1:]]
        self._biases = [np.asarray(b, dtype=np.float32)[:, None, :].copy() for b in biases]
        self._max_fan = max(w.shape[1] * w.shape[2] for w in self._weights)

    def member_rewards(self, obs: np.ndarray, acts: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
        """``[K, N]`` float32 rewards of validated float32 ``[N, D]`` inputs."""
        parts = (obs, acts, next_obs) if self.use_next_obs else (obs, acts)
        # [N, in], or [K, N, in] by broadcasting when the members' means differ
        h = np.concatenate(parts, axis=1) - self._mean
        rows = obs.shape[0]
        threaded = rows * self._max_fan > _OPENBLAS_THREADED_MNK and rows <= _PINNED_MAX_ROWS
        last = len(self._weights) - 1
        with _one_blas_thread() if threaded else nullcontext():
            for i, (w, b) in enumerate(zip(self._weights, self._biases, strict=True)):
                h = np.matmul(h, w)  # [K, N, out]; the first layer broadcasts [N, in] over K
                h += b
                if i < last:
                    h = self._hidden(h)
        return self._output(h[..., 0])


class TorchPredictor(_StepPredictor):
    """A frozen torch module run under ``torch.inference_mode`` (the general fallback).

    Args:
        rewards: ``(obs, acts, next_obs) -> [K, N]`` member rewards (``ensemble``) or ``[N]``
            rewards of ``[N, D]`` tensors on ``device``; a bound method of a module the caller
            has deep-copied, so that later training does not reach the snapshot.
        obs_dim: flat observation size ``D_o``.
        act_dim: flat action size ``D_a``.
        members: ``K`` (1 for a single model).
        ensemble: ``rewards`` returns ``[K, N]`` and the std is reported.
        device: where the module's weights live; inputs are moved there.
        spaces: ``FlatSpec.describe()`` of the training env, for error messages.
    """

    def __init__(
        self,
        rewards: Callable[[Tensor, Tensor, Tensor], Tensor],
        *,
        obs_dim: int,
        act_dim: int,
        members: int,
        ensemble: bool,
        device: torch.device,
        spaces: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(obs_dim, act_dim, members, ensemble, spaces)
        self._rewards = rewards
        self.device = device

    def member_rewards(self, obs: np.ndarray, acts: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
        """``[K, N]`` float32 rewards of validated float32 ``[N, D]`` inputs."""
        import torch

        # torch cannot share read-only arrays (recorded trajectories): np.require copies those
        arrays = [np.require(x, requirements="CW") for x in (obs, acts, next_obs)]
        tensors = [torch.from_numpy(x).to(self.device) for x in arrays]
        with torch.inference_mode():
            rewards = self._rewards(*tensors)
        rewards = rewards if self.ensemble else rewards[None]
        return rewards.detach().to("cpu", torch.float32).numpy()
