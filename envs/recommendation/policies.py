"""Production recommenders: the baselines, and the reference policy of the KL leash.

Numpy policies (:class:`RandomPolicy`, :class:`PopularityPolicy`, :class:`GreedyClickPolicy`) map
observations ``[D]`` or ``[N, D]`` to actions of the env's action space: the ``slate_size``
highest-scoring candidates in score order (one candidate for the ``Discrete`` variant). They read
only what the observation shows (the user's consumption profile and the candidates' topics,
lengths and popularity), as a deployed recommender would.

:class:`ProductionPolicy` is the same scoring as a torch ``nn.Module`` with a softmax over the
candidates at a temperature. It has the methods of ``agents.policies.Policy`` (``act``,
``evaluate``, ``log_prob``, ``value``; duck-typed: ``envs`` does not import ``agents``), so it can
be PPO-KL's frozen ``ref_policy``: the agent is leashed to the production recommender as an RLHF
policy is leashed to its SFT model. It reads *raw* observations, so train PPO-KL with
``norm_obs=False`` when it is the reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from envs.recommendation.simulator import ObsLayout

__all__ = [
    "GreedyClickPolicy",
    "PopularityPolicy",
    "ProductionPolicy",
    "RandomPolicy",
    "ScorePolicy",
    "env_spaces",
    "top_slots",
]

_EPS = 1e-6


def env_spaces(env: Any) -> tuple[spaces.Box, spaces.Space]:
    """The single-user (observation, action) spaces of an env or vector env."""
    obs_space = getattr(env, "single_observation_space", env.observation_space)
    act_space = getattr(env, "single_action_space", env.action_space)
    return obs_space, act_space


def _layout_and_slate(
    obs_space: spaces.Box, act_space: spaces.Space
) -> tuple[ObsLayout, int | None]:
    if isinstance(act_space, spaces.Discrete):
        return ObsLayout.infer(int(obs_space.shape[0]), int(act_space.n)), None
    if isinstance(act_space, spaces.MultiDiscrete) and act_space.nvec.ndim == 1:
        c = int(act_space.nvec[0])
        return ObsLayout.infer(int(obs_space.shape[0]), c), int(act_space.nvec.shape[0])
    raise TypeError(f"not a recommendation action space: {act_space!r}")


def top_slots(scores: np.ndarray, slate_size: int | None) -> np.ndarray:
    """Best candidates first: ``[N, C]`` scores -> ``[N, S]`` slots, or ``[N]`` if ``None``."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return order[:, 0] if slate_size is None else order[:, :slate_size]


class ScorePolicy:
    """A recommender that shows the top-scored candidates; subclasses define :meth:`scores`.

    Args:
        layout: the observation layout (``ObsLayout(n_topics, n_candidates)``).
        slate_size: items per slate, or None for the single-item (``Discrete``) variant.
    """

    def __init__(self, layout: ObsLayout, slate_size: int | None) -> None:
        self.layout = layout
        self.slate_size = slate_size

    @classmethod
    def for_env(cls, env: Any, **kwargs: Any) -> ScorePolicy:
        """Build the policy for a ``RecommendationEnv`` / vector env (or a wrapper of one)."""
        layout, slate_size = _layout_and_slate(*env_spaces(env))
        return cls(layout, slate_size, **kwargs)

    def scores(self, obs: np.ndarray) -> np.ndarray:
        """``[N, D]`` observations -> ``[N, C]`` candidate scores (higher is shown first)."""
        raise NotImplementedError

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Actions for one observation ``[D]`` or a batch ``[N, D]``."""
        obs = np.asarray(obs, dtype=np.float64)
        single = obs.ndim == 1
        actions = top_slots(self.scores(obs.reshape(-1, self.layout.dim)), self.slate_size)
        return actions[0] if single else actions


class RandomPolicy(ScorePolicy):
    """Distinct candidates in random order (``rng``: the policy's own generator)."""

    def __init__(
        self, layout: ObsLayout, slate_size: int | None, rng: np.random.Generator | None = None
    ) -> None:
        super().__init__(layout, slate_size)
        self.rng = rng if rng is not None else np.random.default_rng()

    def scores(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.random((obs.shape[0], self.layout.n_candidates))


class PopularityPolicy(ScorePolicy):
    """The most popular candidates first (popularity is in the observation)."""

    def scores(self, obs: np.ndarray) -> np.ndarray:
        return self.layout.split(obs)[2][:, :, 1]


def _greedy_click_scores(profile: Any, topics: Any, popularity: Any, affinity_weight: float) -> Any:
    """Shared numpy/torch formula: ``logit(popularity) + w * cos(profile, topic)``."""
    norm_p = (profile * profile).sum(-1, keepdims=True) ** 0.5
    norm_t = (topics * topics).sum(-1) ** 0.5
    cosine = (topics * profile[:, None, :]).sum(-1) / (norm_t * norm_p + _EPS)
    p = popularity.clip(_EPS, 1.0 - _EPS)
    logit = torch.log(p / (1.0 - p)) if isinstance(p, Tensor) else np.log(p / (1.0 - p))
    return logit + affinity_weight * cosine


class GreedyClickPolicy(ScorePolicy):
    """Myopic click maximiser: popular candidates close to what the user just consumed.

    Score = ``logit(popularity) + affinity_weight * cos(profile, topic)``: a click-through-rate
    model that loves clickbait (popular) and more of the same (the profile), and ignores what
    the session will feel like later.
    """

    def __init__(
        self, layout: ObsLayout, slate_size: int | None, affinity_weight: float = 3.0
    ) -> None:
        super().__init__(layout, slate_size)
        self.affinity_weight = affinity_weight

    def scores(self, obs: np.ndarray) -> np.ndarray:
        profile, topics, extras = self.layout.split(obs)
        return _greedy_click_scores(profile, topics, extras[:, :, 1], self.affinity_weight)


class ProductionPolicy(nn.Module):
    """A production recommender as a stochastic torch policy (``agents.policies.Policy`` API).

    Each slate slot is an independent categorical over the C candidates with logits
    ``scores / temperature`` (the layout of ``MLPActorCritic``'s MultiDiscrete head; repeats are
    shown once by the env's default ``on_duplicate="ignore"``). ``act(deterministic=True)`` shows
    the top-scored distinct candidates. It has no critic: ``value`` is 0.

    Args:
        observation_space: the single-user observation space.
        action_space: the single-user action space (``Discrete(C)`` or ``MultiDiscrete([C] * S)``).
        kind: ``"greedy_click"`` or ``"popularity"`` scores (see the numpy policies).
        temperature: softmax temperature (> 0); lower is closer to the deterministic recommender.
        affinity_weight: profile weight of the greedy-click score.
    """

    def __init__(
        self,
        observation_space: spaces.Box,
        action_space: spaces.Space,
        kind: str = "greedy_click",
        temperature: float = 1.0,
        affinity_weight: float = 3.0,
    ) -> None:
        super().__init__()
        if kind not in ("greedy_click", "popularity"):
            raise ValueError(f"kind must be 'greedy_click' or 'popularity', got {kind!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.layout, self.slate_size = _layout_and_slate(observation_space, action_space)
        self.observation_space, self.action_space = observation_space, action_space
        self.kind = kind
        self.temperature = float(temperature)
        self.affinity_weight = float(affinity_weight)

    @classmethod
    def for_env(cls, env: Any, **kwargs: Any) -> ProductionPolicy:
        """Build the policy from an env's (or vector env's) single-user spaces."""
        return cls(*env_spaces(env), **kwargs)

    def logits(self, obs: Tensor) -> Tensor:
        """``[N, D]`` raw observations -> ``[N, C]`` candidate logits."""
        obs = obs.reshape(obs.shape[0], -1).to(torch.float32)
        profile, topics, extras = self.layout.split(obs)
        if self.kind == "popularity":
            # logit(popularity), so a temperature of 1 is a sensible spread.
            scores = _greedy_click_scores(profile, topics, extras[:, :, 1], 0.0)
        else:
            scores = _greedy_click_scores(profile, topics, extras[:, :, 1], self.affinity_weight)
        return scores / self.temperature

    def _positions(self) -> int:
        return 1 if self.slate_size is None else self.slate_size

    def _log_prob_entropy(self, logits: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        log_p = torch.log_softmax(logits, dim=-1)  # [N, C]
        acts = actions.long().reshape(logits.shape[0], self._positions())
        lp = log_p.gather(-1, acts).sum(-1)
        entropy = -(log_p.exp() * log_p).sum(-1) * self._positions()
        return lp, entropy

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Actions ``[N]`` or ``[N, S]``, their log-probs ``[N]`` and zero values ``[N]``."""
        logits = self.logits(obs)
        n, s = logits.shape[0], self._positions()
        if deterministic:
            actions = torch.argsort(logits, dim=-1, descending=True, stable=True)[:, :s]
        else:
            actions = torch.multinomial(torch.softmax(logits, -1), s, replacement=True)
        lp, _ = self._log_prob_entropy(logits, actions)
        actions = actions[:, 0] if self.slate_size is None else actions
        return actions, lp, torch.zeros(n)

    def evaluate(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Log-probs, entropies and (zero) values ``[N]``."""
        logits = self.logits(obs)
        lp, entropy = self._log_prob_entropy(logits, actions)
        return lp, entropy, torch.zeros(logits.shape[0])

    def log_prob(self, obs: Tensor, actions: Tensor) -> Tensor:
        """Log-probabilities ``[N]`` of ``actions`` (what PPO-KL asks its reference)."""
        return self._log_prob_entropy(self.logits(obs), actions)[0]

    def value(self, obs: Tensor) -> Tensor:
        """Zeros ``[N]``: a production recommender has no critic."""
        return torch.zeros(obs.shape[0])
