"""Policies for the PPO-with-KL agent: a small protocol and an MLP actor-critic.

The :class:`Policy` protocol is the whole contract between :class:`agents.ppo_kl.PPOKL` and a
policy; the MLP actor-critic here and the causal-LM policy of the text tasks both implement it.
A policy is a ``torch.nn.Module`` (the trainer optimises ``parameters()`` and checkpoints
``state_dict()``) with four methods:

- ``act(obs)`` samples actions for a batch of N observations, without gradients;
- ``evaluate(obs, actions)`` gives log-probabilities, entropies and values in one forward pass
  (the PPO minibatch step);
- ``log_prob(obs, actions)`` is what a frozen reference policy is asked for (the KL leash);
- ``value(obs)`` bootstraps the last state of a rollout.

Observations are a ``Tensor[N, ...]`` or, for ``Dict`` spaces, a ``dict[str, Tensor[N, ...]]``.
Actions are ``Tensor[N, *action_shape]`` (float for Box, int64 for Discrete ``[N]`` and
MultiDiscrete ``[N, k]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn
from torch.nn import functional as F

from prefenv.spaces import flat_dim

Obs = Tensor | dict[str, Tensor]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@runtime_checkable
class Policy(Protocol):
    """What the PPO-KL trainer needs from a policy (implementations are ``nn.Module``)."""

    def act(self, obs: Obs, deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Sample (or take the mode of) actions without gradients.

        Returns:
            actions ``[N, *action_shape]``, log_probs ``[N]`` of those actions, values ``[N]``.
        """
        ...

    def evaluate(self, obs: Obs, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Log-probs ``[N]``, entropies ``[N]`` and values ``[N]`` with gradients, one forward."""
        ...

    def log_prob(self, obs: Obs, actions: Tensor) -> Tensor:
        """Log-probabilities ``[N]`` of ``actions`` (used on the frozen reference policy)."""
        ...

    def value(self, obs: Obs) -> Tensor:
        """State values ``[N]``."""
        ...


# ----------------------------------------------------------------------------- observations


def _check_obs_space(space: spaces.Space, nested: bool = False) -> int:
    """Validate an observation space; return its flat feature count."""
    if isinstance(space, spaces.Dict):
        if nested:
            raise TypeError(
                "MLPActorCritic supports flat Dict observations only, got a nested Dict; wrap the "
                "env with gymnasium.wrappers.FlattenObservation (or flatten the inner Dict)"
            )
        return sum(_check_obs_space(sub, nested=True) for sub in space.spaces.values())
    if isinstance(space, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
        return flat_dim(space)
    raise TypeError(
        f"MLPActorCritic does not support observation space {space!r}; use Box, Discrete, "
        "MultiDiscrete, MultiBinary or a flat Dict of those (gymnasium.wrappers.FlattenObservation "
        "turns Tuple/nested spaces into a Box)"
    )


def _one_hot(x: Tensor, n: int) -> Tensor:
    return nn.functional.one_hot(x.long(), n).to(torch.float32)


def preprocess_obs(obs: Obs, space: spaces.Space) -> Tensor:
    """Turn a batch of observations into float features ``[N, F]``.

    Box and MultiBinary are flattened, Discrete and MultiDiscrete one-hot encoded, flat Dict
    entries concatenated in the space's key order.
    """
    if isinstance(space, spaces.Dict):
        if not isinstance(obs, dict):
            raise TypeError(
                f"expected a dict of tensors for a Dict space, got {type(obs).__name__}"
            )
        return torch.cat([preprocess_obs(obs[k], sub) for k, sub in space.spaces.items()], dim=-1)
    assert isinstance(obs, Tensor)
    if isinstance(space, spaces.Discrete):
        return _one_hot(obs.reshape(-1) - int(space.start), int(space.n))
    if isinstance(space, spaces.MultiDiscrete):
        flat = obs.reshape(obs.shape[0], -1).long() - torch.as_tensor(space.start.reshape(-1))
        nvec = space.nvec.reshape(-1).tolist()
        return torch.cat([_one_hot(flat[:, i], int(n)) for i, n in enumerate(nvec)], dim=-1)
    return obs.reshape(obs.shape[0], -1).to(torch.float32)


# ----------------------------------------------------------------------------- distributions


def gaussian_log_prob(actions: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Log-density ``[N]`` of a diagonal Gaussian, summed over action dims ``[N, D]``."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.square() - log_std - _LOG_SQRT_2PI).sum(-1)


def gaussian_entropy(log_std: Tensor, n: int) -> Tensor:
    """Entropy ``[N]`` of a diagonal Gaussian with state-independent ``log_std`` ``[D]``."""
    return (0.5 + _LOG_SQRT_2PI + log_std).sum().expand(n)


def categorical_log_prob_entropy(logits: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
    """Log-prob ``[N]`` of ``actions`` ``[N]`` and entropy ``[N]`` of categorical ``logits`` ``[N, K]``."""
    log_p = torch.log_softmax(logits, dim=-1)
    lp = log_p.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return lp, entropy


# ----------------------------------------------------------------------------- MLP actor-critic


def _linears(sizes: Sequence[int]) -> nn.ModuleList:
    return nn.ModuleList(nn.Linear(i, o) for i, o in zip(sizes[:-1], sizes[1:], strict=True))


def _ortho(module: nn.Module, gain: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.orthogonal_(m.weight, gain=gain)
            nn.init.zeros_(m.bias)


class MLPActorCritic(nn.Module):
    """Separate actor and critic MLPs (SB3 ``MlpPolicy`` layout) implementing :class:`Policy`.

    Action heads: Box -> diagonal Gaussian with a state-independent ``log_std`` (actions are
    sampled unbounded; the trainer clips them to the bounds before ``env.step``); Discrete ->
    categorical; MultiDiscrete -> independent categoricals (log-probs and entropies summed).

    Args:
        observation_space: single-env observation space (Box, Discrete, MultiDiscrete,
            MultiBinary or a flat Dict of those).
        action_space: single-env action space (Box, Discrete or 1-D MultiDiscrete).
        hidden_sizes: hidden layer sizes of each network.
        activation: ``"tanh"`` or ``"relu"``.
        ortho_init: orthogonal init with SB3 gains (sqrt(2) hidden, 0.01 policy, 1 value).
        log_std_init: initial Gaussian log standard deviation.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        ortho_init: bool = True,
        log_std_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.observation_space = observation_space
        self.action_space = action_space
        n_features = _check_obs_space(observation_space)
        if activation not in ("tanh", "relu"):
            raise ValueError(f"activation must be 'tanh' or 'relu', got {activation!r}")
        self._activation = torch.tanh if activation == "tanh" else torch.relu
        sizes = [n_features, *hidden_sizes]
        self.actor_body = _linears(sizes)
        self.critic_body = _linears(sizes)
        self.value_head = nn.Linear(sizes[-1], 1)
        self._kind, self._splits, n_out = self._action_layout(action_space)
        self.policy_head = nn.Linear(sizes[-1], n_out)
        if self._kind == "box":
            self.log_std = nn.Parameter(torch.full((n_out,), float(log_std_init)))
        if ortho_init:
            _ortho(self.actor_body, math.sqrt(2))
            _ortho(self.critic_body, math.sqrt(2))
            _ortho(self.policy_head, 0.01)
            _ortho(self.value_head, 1.0)

    @staticmethod
    def _action_layout(space: spaces.Space) -> tuple[str, list[int], int]:
        if isinstance(space, spaces.Box):
            return "box", [], int(np.prod(space.shape))
        if isinstance(space, spaces.Discrete):
            return "discrete", [int(space.n)], int(space.n)
        if isinstance(space, spaces.MultiDiscrete) and space.nvec.ndim == 1:
            splits = [int(n) for n in space.nvec]
            return "multidiscrete", splits, sum(splits)
        raise TypeError(
            f"MLPActorCritic does not support action space {space!r}; use Box, Discrete or a 1-D "
            "MultiDiscrete (reshape a multi-dimensional MultiDiscrete with an ActionWrapper)"
        )

    # -- forward pieces -------------------------------------------------------------------

    def _features(self, obs: Obs) -> Tensor:
        return preprocess_obs(obs, self.observation_space)

    def _body(self, layers: nn.ModuleList, x: Tensor) -> Tensor:
        # F.linear directly: the minibatch loop is overhead-bound, module calls add up.
        for layer in layers:
            x = self._activation(F.linear(x, layer.weight, layer.bias))
        return x

    def action_params(self, obs: Obs) -> Tensor:
        """Gaussian means ``[N, D]`` (Box) or concatenated logits ``[N, sum(n)]`` (categorical)."""
        head = self.policy_head
        return F.linear(self._body(self.actor_body, self._features(obs)), head.weight, head.bias)

    def _heads(self, obs: Obs) -> tuple[Tensor, Tensor]:
        """Action-head output ``[N, A]`` and values ``[N]`` from one pass over both networks."""
        x = self._features(obs)
        out = F.linear(
            self._body(self.actor_body, x), self.policy_head.weight, self.policy_head.bias
        )
        v = F.linear(self._body(self.critic_body, x), self.value_head.weight, self.value_head.bias)
        return out, v.squeeze(-1)

    def _log_prob_entropy(self, out: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        n = out.shape[0]
        if self._kind == "box":
            lp = gaussian_log_prob(actions.reshape(n, -1), out, self.log_std)
            return lp, gaussian_entropy(self.log_std, n)
        if self._kind == "discrete":
            return categorical_log_prob_entropy(out, actions)
        lps, ents = zip(
            *(
                categorical_log_prob_entropy(logits, actions[:, i])
                for i, logits in enumerate(out.split(self._splits, dim=-1))
            ),
            strict=True,
        )
        return torch.stack(lps, -1).sum(-1), torch.stack(ents, -1).sum(-1)

    def _sample(self, out: Tensor, deterministic: bool) -> Tensor:
        n = out.shape[0]
        if self._kind == "box":
            if deterministic:
                actions = out
            else:
                actions = out + torch.exp(self.log_std) * torch.randn_like(out)
            return actions.reshape(n, *self.action_space.shape)
        picks = []
        for logits in out.split(self._splits, dim=-1):
            if deterministic:
                picks.append(logits.argmax(-1))
            else:
                probs = torch.softmax(logits, dim=-1)
                picks.append(torch.multinomial(probs, 1).squeeze(-1))
        if self._kind == "discrete":
            return picks[0]
        return torch.stack(picks, -1)

    # -- Policy protocol ------------------------------------------------------------------

    @torch.no_grad()
    def act(self, obs: Obs, deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Actions ``[N, *action_shape]``, their log-probs ``[N]`` and values ``[N]`` (no grad)."""
        out, values = self._heads(obs)
        actions = self._sample(out, deterministic)
        log_probs, _ = self._log_prob_entropy(out, actions)
        return actions, log_probs, values

    def evaluate(self, obs: Obs, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Log-probs ``[N]``, entropies ``[N]`` and values ``[N]`` with gradients."""
        out, values = self._heads(obs)
        log_probs, entropy = self._log_prob_entropy(out, actions)
        return log_probs, entropy, values

    def log_prob(self, obs: Obs, actions: Tensor) -> Tensor:
        """Log-probs ``[N]`` of ``actions`` (actor network only)."""
        return self._log_prob_entropy(self.action_params(obs), actions)[0]

    def value(self, obs: Obs) -> Tensor:
        """Values ``[N]`` (critic network only)."""
        x = self._body(self.critic_body, self._features(obs))
        return F.linear(x, self.value_head.weight, self.value_head.bias).squeeze(-1)
