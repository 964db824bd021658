"""Single per-step reward networks: the MLP (B-Pref defaults) and an adapter for any user module.

A network maps a batch of transitions ``(obs [N, D_o], acts [N, D_a], next_obs [N, D_o])`` of flat
features (see :class:`prefenv.spaces.FlatSpec`) to ``[N]`` rewards. Two sides, kept apart:

- training (torch): ``forward`` (differentiable, validated) and ``segment_returns``;
- inference (numpy): ``predictor()``, a frozen :class:`prefenv.predictors.RewardPredictor`
  snapshot for the reward wrappers, stale after further training until asked for again.

The default network follows B-Pref (Lee et al. 2021): an MLP with 3 hidden layers of 256
LeakyReLU units and a tanh output. Ensembles of them live in :mod:`prefenv.reward_models`.
"""

from __future__ import annotations

import copy
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces as gym_spaces
from torch import Tensor, nn

from prefenv.predictors import RewardPredictor, check_finite, check_transitions
from prefenv.records import Segment
from prefenv.reward_checkpoints import save_checkpoint
from prefenv.segment_batch import SegmentBatch
from prefenv.spaces import FlatSpec
from prefenv.step_predictors import NUMPY_ACTIVATIONS, NumpyMLPPredictor, TorchPredictor

__all__ = [
    "RewardNetwork",
    "MLPRewardModel",
    "ModuleRewardModel",
    "module_device",
    "frozen_copy",
    "numpy_predictor",
]


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter or buffer (CPU for a module without any)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def frozen_copy(module: ModuleT) -> ModuleT:
    """A deep copy in eval mode without gradients: a snapshot that later training cannot reach."""
    snapshot = copy.deepcopy(module)
    snapshot.requires_grad_(False)
    return snapshot.eval()


class RewardNetwork(nn.Module, ABC):
    """One reward network: validated ``forward``, ``segment_returns`` and ``predictor``.

    Subclasses set ``obs_dim``, ``act_dim``, ``spaces`` and implement ``_reward`` (the
    unvalidated forward pass).
    """

    obs_dim: int
    act_dim: int
    spaces: dict[str, Any] | None

    @abstractmethod
    def _reward(self, obs: Tensor, acts: Tensor, next_obs: Tensor) -> Tensor:
        """``[N]`` rewards of already validated ``[N, D]`` tensors."""

    def forward(self, obs: Tensor, acts: Tensor, next_obs: Tensor) -> Tensor:
        """``[N]`` rewards of ``[N, D_o]``, ``[N, D_a]``, ``[N, D_o]`` transitions."""
        check_transitions(obs, acts, next_obs, self.obs_dim, self.act_dim, self.spaces)
        return self._reward(obs, acts, next_obs)

    def segment_returns(self, segments: Sequence[Segment]) -> Tensor:
        """``[B]`` differentiable returns; segments may differ in length."""
        batch = SegmentBatch.from_segments(segments, module_device(self))
        returns = batch.sum_steps(self(*batch.flat()))
        check_finite(returns)
        return returns

    def predictor(self) -> RewardPredictor:
        """A frozen snapshot of the current weights for the env-step path (``std`` is None).

        The snapshot does not follow later training: ask for a new one after a refit.
        """
        snapshot = frozen_copy(self)
        return TorchPredictor(
            snapshot._reward,
            obs_dim=self.obs_dim,
            act_dim=self.act_dim,
            members=1,
            ensemble=False,
            device=module_device(self),
            spaces=self.spaces,
        )


# Activations are plain functions, so the weights are the only submodules (nn.Linear) and the
# state-dict keys stay ``layers.<i>.weight/bias`` whatever activation is chosen.
_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = dict(
    leaky_relu=F.leaky_relu, relu=F.relu, tanh=torch.tanh, elu=F.elu, gelu=F.gelu, silu=F.silu
)  # leaky_relu: negative slope 0.01, as nn.LeakyReLU in B-Pref
_OUTPUT_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = dict(
    tanh=torch.tanh, sigmoid=torch.sigmoid
)


class MLPRewardModel(RewardNetwork):
    """MLP reward ``r(obs, act[, next_obs])`` with a stored input normaliser (B-Pref defaults).

    Args:
        obs_dim: flat observation size ``D_o``.
        act_dim: flat action size ``D_a``.
        hidden_sizes: widths of the hidden layers (B-Pref: 3 x 256).
        activation: hidden activation, one of ``leaky_relu, relu, tanh, elu, gelu, silu``.
        use_next_obs: also feed ``next_obs`` (input becomes ``[obs, act, next_obs]``).
        output_activation: ``"tanh"`` (B-Pref, rewards in [-1, 1]), ``"sigmoid"`` or ``None``.
        spaces: ``FlatSpec.describe()`` of the env it is trained for (checked on load).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: Sequence[int] = (256, 256, 256),
        activation: str = "leaky_relu",
        use_next_obs: bool = False,
        output_activation: str | None = "tanh",
        spaces: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if obs_dim < 1 or act_dim < 0:
            raise ValueError(f"need obs_dim >= 1 and act_dim >= 0, got {obs_dim} and {act_dim}")
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}"
            )
        if output_activation is not None and output_activation not in _OUTPUT_ACTIVATIONS:
            raise ValueError(
                f"output_activation must be one of {sorted(_OUTPUT_ACTIVATIONS)} or None, "
                f"got {output_activation!r}"
            )
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        self.activation = activation
        self.use_next_obs = bool(use_next_obs)
        self.output_activation = output_activation
        self.spaces = spaces
        in_dim = self.obs_dim * (2 if self.use_next_obs else 1) + self.act_dim
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))
        widths = [in_dim, *self.hidden_sizes, 1]
        self.layers = nn.ModuleList(
            nn.Linear(i, o) for i, o in zip(widths[:-1], widths[1:], strict=True)
        )
        self._act = _ACTIVATIONS[activation]
        self._out_act = _OUTPUT_ACTIVATIONS.get(output_activation or "")

    @classmethod
    def for_spaces(
        cls,
        observation_space: gym_spaces.Space,
        action_space: gym_spaces.Space,
        **hyperparameters: Any,
    ) -> MLPRewardModel:
        """A model sized for one env's (single, not vector) spaces, remembering their description.

        ``hyperparameters`` are the constructor's (``hidden_sizes``, ``activation``, ...).
        """
        spec = FlatSpec(observation_space, action_space)
        return cls(spec.obs_dim, spec.act_dim, spaces=spec.describe(), **hyperparameters)

    def _features(self, obs: Tensor, acts: Tensor, next_obs: Tensor) -> Tensor:
        parts = (obs, acts, next_obs) if self.use_next_obs else (obs, acts)
        return torch.cat(parts, dim=-1)

    def embed(self, obs: Tensor, acts: Tensor, next_obs: Tensor | None = None) -> Tensor:
        """The last hidden layer's activations ``[..., hidden_sizes[-1]]``: the representation
        the output layer weighs (REED trains it, :mod:`prefenv.self_predictive`)."""
        h = (self._features(obs, acts, next_obs) - self.input_mean) / self.input_std  # type: ignore[arg-type]
        for layer in self.layers[:-1]:
            h = self._act(F.linear(h, layer.weight, layer.bias))
        return h

    def _reward(self, obs: Tensor, acts: Tensor, next_obs: Tensor) -> Tensor:
        last = self.layers[-1]
        h = F.linear(self.embed(obs, acts, next_obs), last.weight, last.bias).squeeze(-1)
        return h if self._out_act is None else self._out_act(h)

    def predictor(self) -> RewardPredictor:
        """A frozen snapshot for the env-step path: numpy on CPU, else torch (``std`` is None).

        The snapshot copies the weights: it does not follow later training (ask again).
        """
        return numpy_predictor([self], ensemble=False) or super().predictor()

    @torch.no_grad()
    def fit_normalizer(self, obs: np.ndarray, acts: np.ndarray, next_obs: np.ndarray) -> None:
        """Set the input mean/std from ``[N, D]`` numpy transitions (constant features keep std 1)."""
        device = self.input_mean.device
        tensors = [
            torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)
            for x in (obs, acts, next_obs)
        ]
        check_transitions(*tensors, self.obs_dim, self.act_dim, self.spaces)
        x = self._features(*tensors).double()
        std = x.std(dim=0, correction=0)
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
        self.input_mean.copy_(x.mean(dim=0))
        self.input_std.copy_(std)

    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments (what ``save_pretrained`` writes)."""
        return {
            "class": type(self).__name__,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "hidden_sizes": list(self.hidden_sizes),
            "activation": self.activation,
            "use_next_obs": self.use_next_obs,
            "output_activation": self.output_activation,
            "spaces": self.spaces,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MLPRewardModel:
        """The model :meth:`config` describes (fresh weights)."""
        kwargs = {k: v for k, v in config.items() if k not in ("class", "schema", "weights_sha256")}
        return cls(**kwargs)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` + ``model.safetensors`` to ``directory`` atomically."""
        return save_checkpoint(self, self.config(), Path(directory))


def _stack(tensors: Iterable[Tensor]) -> np.ndarray:
    """``[K, ...]`` numpy copy (``np.stack`` copies: no memory shared with the live model)."""
    return np.stack([t.detach().cpu().numpy() for t in tensors])


def numpy_predictor(members: Sequence[nn.Module], ensemble: bool) -> NumpyMLPPredictor | None:
    """A :class:`NumpyMLPPredictor` copy of ``members``, or ``None`` if numpy cannot run them.

    Numpy runs plain :class:`MLPRewardModel` s (not subclasses) on the CPU that share their
    hyperparameters and use an activation of :data:`prefenv.predictors.NUMPY_ACTIVATIONS`.
    """
    if not all(type(m) is MLPRewardModel for m in members):
        return None
    mlps: list[MLPRewardModel] = list(members)  # type: ignore[arg-type]
    first = mlps[0]
    shapes = {(m.hidden_sizes, m.activation, m.output_activation, m.use_next_obs) for m in mlps}
    if (
        len(shapes) > 1
        or first.activation not in NUMPY_ACTIVATIONS
        or any(module_device(m).type != "cpu" for m in mlps)
    ):
        return None
    layers = range(len(first.layers))
    return NumpyMLPPredictor(
        [_stack(m.layers[i].weight.T for m in mlps) for i in layers],
        [_stack(m.layers[i].bias for m in mlps) for i in layers],
        _stack(m.input_mean for m in mlps),
        _stack(m.input_std for m in mlps),
        activation=first.activation,
        output_activation=first.output_activation,
        use_next_obs=first.use_next_obs,
        obs_dim=first.obs_dim,
        act_dim=first.act_dim,
        ensemble=ensemble,
        spaces=first.spaces,
    )


class ModuleRewardModel(RewardNetwork):
    """A user module with ``forward(obs, acts, next_obs) -> [N]`` given the network interface.

    Args:
        module: owned as a submodule, so training this trains ``module`` in place.
        obs_dim: flat observation size ``D_o``.
        act_dim: flat action size ``D_a``.
        spaces: optional ``FlatSpec.describe()`` of the env, for error messages.
    """

    def __init__(
        self,
        module: nn.Module,
        obs_dim: int,
        act_dim: int,
        spaces: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.module = module
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.spaces = spaces

    def _reward(self, obs: Tensor, acts: Tensor, next_obs: Tensor) -> Tensor:
        rewards = self.module(obs, acts, next_obs)
        if rewards.shape != (obs.shape[0],):
            if rewards.shape == (obs.shape[0], 1):
                return rewards.squeeze(-1)
            raise ValueError(
                f"{type(self.module).__name__}.forward must return rewards of shape "
                f"({obs.shape[0]},) for {obs.shape[0]} steps, got {tuple(rewards.shape)}"
            )
        return rewards
