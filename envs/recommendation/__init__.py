"""Recommendation as Gymnasium environments: simulated users with evolving interests.

- :mod:`~envs.recommendation.simulator`: the vectorised user model (:class:`UserBatchSimulator`,
  :class:`Catalog`, :class:`SimConfig`, the multinomial-logit :func:`choice_probabilities`).
- :mod:`~envs.recommendation.env`: :class:`RecommendationEnv` (one user; registered as
  ``prefenv/RecSlate-v0`` and ``prefenv/RecSingle-v0``) and the native batched
  :class:`RecommendationVectorEnv`.
- :mod:`~envs.recommendation.policies`: production recommenders (random, popularity,
  greedy-click) as numpy policies, and :class:`ProductionPolicy`, a torch module with the
  ``agents.policies.Policy`` methods, usable as PPO-KL's ``ref_policy``.
"""

from envs.recommendation.env import (
    DEFAULT_OBJECTIVE_WEIGHTS,
    OBJECTIVES,
    REWARDS,
    RecommendationEnv,
    RecommendationVectorEnv,
    check_slates,
)
from envs.recommendation.simulator import (
    Catalog,
    ObsLayout,
    SimConfig,
    StepOutcome,
    UserBatchSimulator,
    choice_probabilities,
    sample_choices,
)

__all__ = [
    "DEFAULT_OBJECTIVE_WEIGHTS",
    "OBJECTIVES",
    "REWARDS",
    "Catalog",
    "ObsLayout",
    "RecommendationEnv",
    "RecommendationVectorEnv",
    "SimConfig",
    "StepOutcome",
    "UserBatchSimulator",
    "check_slates",
    "choice_probabilities",
    "sample_choices",
]
