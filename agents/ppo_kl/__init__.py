"""PPO with a KL leash to a frozen reference policy: the one agent every prefenv task uses.

Quick start::

    import gymnasium as gym
    from agents.ppo_kl import PPOKL, PPOKLConfig

    env = gym.make_vec("HalfCheetah-v5", num_envs=8, vectorization_mode="sync")
    agent = PPOKL(env, PPOKLConfig(n_steps=256, kl_coef=0.0), log_dir="runs/ppo")
    metrics = agent.learn(100_000)      # call again to continue the same run
    agent.save("runs/ppo/ckpt")      # PPOKL.load("runs/ppo/ckpt", env) resumes

Rollouts on Ray actors: ``PPOKL(env, config, rollouts=RayRollouts(env_factory, 2, env.num_envs))``
(see :mod:`agents.ppo_kl.rollout_workers`).
"""

from agents.ppo_kl.buffer import RolloutBatch, RolloutBuffer
from agents.ppo_kl.checkpoint import SCHEMA_VERSION, CheckpointError
from agents.ppo_kl.config import PPOKLConfig
from agents.ppo_kl.kl import KLController, kl_estimate, kl_penalized_rewards
from agents.ppo_kl.logger import IterationMetrics, MetricsLogger
from agents.ppo_kl.losses import (
    compute_gae,
    entropy_loss,
    normalize_advantages,
    ppo_clip_loss,
    value_loss,
)
from agents.ppo_kl.normalize import ObsNormalizer, ReturnScaler, RunningMeanStd
from agents.ppo_kl.optim import ClippedAdam
from agents.ppo_kl.ray_rollouts import RayRollouts, RemoteEnvs
from agents.ppo_kl.rollout_workers import RolloutWorker, WorkerEnv
from agents.ppo_kl.trainer import PPOKL
from agents.ppo_kl.update import UpdateStats, ppo_update

__all__ = [
    "PPOKL",
    "SCHEMA_VERSION",
    "CheckpointError",
    "ClippedAdam",
    "IterationMetrics",
    "KLController",
    "MetricsLogger",
    "ObsNormalizer",
    "PPOKLConfig",
    "RayRollouts",
    "RemoteEnvs",
    "ReturnScaler",
    "RolloutBatch",
    "RolloutBuffer",
    "RolloutWorker",
    "RunningMeanStd",
    "UpdateStats",
    "WorkerEnv",
    "compute_gae",
    "entropy_loss",
    "kl_estimate",
    "kl_penalized_rewards",
    "normalize_advantages",
    "ppo_clip_loss",
    "ppo_update",
    "value_loss",
]
