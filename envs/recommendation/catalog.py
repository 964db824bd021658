"""The world the simulated users live in: the model's parameters and the item catalog.

:class:`SimConfig` holds every parameter of the catalog and the user model (see
:mod:`envs.recommendation.simulator` for the model). :class:`Catalog` is the shared item
catalog: generated RecSim-style from a seed (:meth:`Catalog.generate`) or fitted to ratings
(:mod:`envs.recommendation.ratings`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Catalog", "SimConfig", "sigmoid"]


@dataclass(frozen=True)
class SimConfig:
    """Parameters of the catalog and the user model, validated on construction.

    Attributes:
        n_items: catalog size.
        n_topics: topic clusters K (RecSim: 20).
        n_candidates: items drawn from the catalog per step and shown to the agent (C).
        horizon: steps before a session is truncated.
        time_budget: initial session budget in minutes; the user leaves when it runs out.
        trashy_fraction: share of clusters whose quality mean lies in [-3, 0].
        quality_std: spread of item quality around its cluster mean (RecSim: 0.1).
        length_range: item lengths (minutes) are uniform on this interval.
        topic_purity: weight of an item's own cluster in its topic vector (rest: Dirichlet mix).
        clickbait_appeal: extra click logit of the worst items, ``a_j = this * sigmoid(-q_j)``.
        popularity_noise: std of the noise in the observable popularity's logit.
        affinity_scale: scale of the affinity term in the click and engagement logits.
        no_click_logit: logit of the no-click option.
        position_bias: multiplicative click weight per slot position (``position_bias ** k``);
            1.0 disables the position bias (SARDINE uses 0.85).
        drift_rate: step of the interests toward a consumed item's topic vector.
        profile_decay: per-step decay of the consumption profile (boredom memory).
        boredom_weight: how much the profile lowers the affinity to the same topics.
        refund_rate: budget refund per minute watched per unit quality (RecSim: 0.9 / 3.4).
        no_click_cost: budget spent by a step without a click (RecSim: 0.5).
    """

    n_items: int = 2000
    n_topics: int = 20
    n_candidates: int = 10
    horizon: int = 50
    time_budget: float = 40.0
    trashy_fraction: float = 0.5
    quality_std: float = 0.1
    length_range: tuple[float, float] = (1.0, 5.0)
    topic_purity: float = 0.8
    clickbait_appeal: float = 2.0
    popularity_noise: float = 0.5
    affinity_scale: float = 3.0
    no_click_logit: float = 1.0
    position_bias: float = 0.85
    drift_rate: float = 0.1
    profile_decay: float = 0.8
    boredom_weight: float = 0.15
    refund_rate: float = 0.9 / 3.4
    no_click_cost: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "length_range", tuple(float(x) for x in self.length_range))
        for name in ("n_items", "n_topics", "n_candidates", "horizon"):
            value = getattr(self, name)
            if not (isinstance(value, (int, np.integer)) and value >= 1):
                raise ValueError(f"SimConfig.{name} must be an int >= 1, got {value!r}")
        if self.n_candidates > self.n_items:
            raise ValueError(
                f"SimConfig.n_candidates ({self.n_candidates}) exceeds n_items ({self.n_items}): "
                "the candidates of a step are distinct catalog items"
            )
        lo, hi = self.length_range
        if not 0 < lo <= hi:
            raise ValueError(f"SimConfig.length_range must satisfy 0 < low <= high, got {(lo, hi)}")
        checks = {
            "time_budget": self.time_budget > 0,
            "trashy_fraction": 0.0 <= self.trashy_fraction <= 1.0,
            "quality_std": self.quality_std >= 0,
            "topic_purity": 0.0 <= self.topic_purity <= 1.0,
            "popularity_noise": self.popularity_noise >= 0,
            "position_bias": 0.0 < self.position_bias <= 1.0,
            "drift_rate": 0.0 <= self.drift_rate <= 1.0,
            "profile_decay": 0.0 <= self.profile_decay < 1.0,
            "no_click_cost": self.no_click_cost >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"SimConfig fields out of range: {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}"
                " (see the SimConfig docstring for each valid range)"
            )


@dataclass(frozen=True)
class Catalog:
    """The item catalog (N items, K topics); arrays are read-only.

    Attributes:
        topics: ``[N, K]`` topic vectors (non-negative, rows sum to 1).
        cluster: ``[N]`` main topic cluster of each item.
        quality: ``[N]`` quality (hidden from the agent; drives satisfaction and the budget).
        length: ``[N]`` length in minutes.
        appeal: ``[N]`` clickbait click-logit bonus (hidden).
        popularity: ``[N]`` observable popularity in (0, 1), a noisy view of the appeal.
    """

    topics: np.ndarray
    cluster: np.ndarray
    quality: np.ndarray
    length: np.ndarray
    appeal: np.ndarray
    popularity: np.ndarray

    def __post_init__(self) -> None:
        n = self.topics.shape[0]
        for name in ("cluster", "quality", "length", "appeal", "popularity"):
            if getattr(self, name).shape != (n,):
                raise ValueError(
                    f"Catalog.{name} must have shape ({n},) like topics' first axis, "
                    f"got {getattr(self, name).shape}"
                )
        for name in ("topics", "cluster", "quality", "length", "appeal", "popularity"):
            getattr(self, name).setflags(write=False)

    @property
    def n_items(self) -> int:
        return int(self.topics.shape[0])

    @property
    def n_topics(self) -> int:
        return int(self.topics.shape[1])

    @classmethod
    def generate(cls, config: SimConfig, rng: np.random.Generator) -> Catalog:
        """Draw a RecSim-style catalog of ``config.n_items`` items from ``rng``."""
        n, k = config.n_items, config.n_topics
        n_trashy = int(round(config.trashy_fraction * k))
        # Cluster quality means: trashy clusters spread over [-3, 0], nutritious over [0, 3].
        means = np.concatenate(
            [np.linspace(-3.0, 0.0, n_trashy), np.linspace(0.0, 3.0, k - n_trashy)]
        )
        cluster = rng.integers(0, k, size=n)
        mix = rng.dirichlet(np.full(k, 0.5), size=n)
        topics = (1.0 - config.topic_purity) * mix
        topics[np.arange(n), cluster] += config.topic_purity
        quality = means[cluster] + config.quality_std * rng.standard_normal(n)
        length = rng.uniform(*config.length_range, size=n)
        appeal = config.clickbait_appeal * sigmoid(-quality)
        pop_logit = appeal - 0.5 * config.clickbait_appeal
        popularity = sigmoid(pop_logit + config.popularity_noise * rng.standard_normal(n))
        return cls(topics, cluster, quality, length, appeal, popularity)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function ``1 / (1 + exp(-x))``, elementwise."""
    return 1.0 / (1.0 + np.exp(-x))
