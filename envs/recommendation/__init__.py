"""Recommendation as Gymnasium environments: simulated users with evolving interests.

- :mod:`~envs.recommendation.simulator`: the vectorised user model (:class:`UserBatchSimulator`);
  its parameters and item catalog are in :mod:`~envs.recommendation.catalog` (:class:`SimConfig`,
  :class:`Catalog`), its multinomial-logit choice (:func:`choice_probabilities`) and candidate
  draws in :mod:`~envs.recommendation.choice`.
- :mod:`~envs.recommendation.task`: what both envs share (objectives, reward choice, spaces,
  slate validation with :func:`check_slates`).
- :mod:`~envs.recommendation.ratings`: a catalog and users fitted to a ``user,item,rating`` CSV.
- :mod:`~envs.recommendation.env`: :class:`RecommendationEnv` (one user; registered as
  ``prefenv/RecSlate-v0`` and ``prefenv/RecSingle-v0``) and the native batched
  :class:`RecommendationVectorEnv`.
- :mod:`~envs.recommendation.policies`: production recommenders (random, popularity,
  greedy-click) as numpy policies, and :class:`ProductionPolicy`, a torch module with the
  ``agents.policies.Policy`` methods, usable as PPO-KL's ``ref_policy``.
"""

from envs.recommendation.catalog import Catalog, SimConfig
from envs.recommendation.choice import choice_probabilities, sample_choices
from envs.recommendation.env import RecommendationEnv, RecommendationVectorEnv
from envs.recommendation.simulator import ObsLayout, StepOutcome, UserBatchSimulator
from envs.recommendation.task import DEFAULT_OBJECTIVE_WEIGHTS, OBJECTIVES, REWARDS, check_slates

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
