"""Configuration of the PPO-with-KL agent.

Every field's docstring is its command-line help. Defaults follow Stable-Baselines3's PPO for
control tasks (see ../shared/REFERENCES.md, "Control PPO defaults (SB3)"), so a run with the
default config is comparable with ``stable_baselines3.PPO("MlpPolicy", env)``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

KLEstimator = Literal["k1", "k3"]
Activation = Literal["tanh", "relu"]


@dataclass(frozen=True)
class PPOKLConfig:
    """Hyperparameters of :class:`agents.ppo_kl.PPOKL`, validated on construction."""

    learning_rate: float = 3e-4
    """Adam learning rate (constant)."""
    n_steps: int = 2048
    """Steps collected per environment per iteration (batch = n_steps * num_envs)."""
    batch_size: int = 64
    """Minibatch size of the PPO update."""
    n_epochs: int = 10
    """Passes over the rollout batch per iteration."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda (bias/variance trade-off of the advantage estimate)."""
    clip_coef: float = 0.2
    """PPO ratio clipping epsilon."""
    clip_vloss: float | None = None
    """Value clipping range around the rollout-time values; None disables value clipping."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value loss coefficient (the value loss is the mean squared error, SB3 scale)."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    normalize_advantage: bool = True
    """Normalise advantages per minibatch (mean 0, std 1)."""
    norm_obs: bool = False
    """Running mean/std observation normalisation (Box entries only), clipped to +-clip_obs."""
    norm_reward: bool = False
    """Scale env rewards by the running std of the discounted return (like SB3 VecNormalize)."""
    clip_obs: float = 10.0
    """Clip of normalised observations."""
    clip_reward: float = 10.0
    """Clip of scaled rewards."""
    target_kl: float | None = None
    """Stop the update early once the approximate KL to the rollout policy exceeds 1.5 * target_kl."""
    kl_coef: float = 0.0
    """Initial beta of the per-step KL penalty to the reference; 0 = plain PPO. The reward the
    advantages see is r'_t - beta * KL_t: KL_t is the per-step estimate in nats (kl_estimator), and
    r'_t the env reward as the agent scales it: divided by the running std of its discounted return
    and clipped to +-clip_reward with norm_reward on (every prefenv train run: learned rewards
    change scale at each refit), unscaled with it off. The penalty is subtracted after that scaling
    and is itself neither scaled nor clipped. So beta is always nats traded against a reward whose
    return has about unit standard deviation: the text pipeline whitens its reward-model score to
    unit std (norm_reward off) and means the same beta."""
    kl_estimator: KLEstimator = "k1"
    """Per-step KL estimator: k1 = logp - ref_logp, k3 = (exp(ref_logp - logp) - 1) - (ref_logp - logp)."""
    adaptive_kl: bool = False
    """Adapt beta toward kl_target (Ziegler et al. 2019); needs kl_coef > 0."""
    kl_target: float = 6.0
    """Target KL for the adaptive controller, in nats per episode (per sequence), not per step."""
    kl_horizon: int = 10000
    """Horizon of the adaptive controller (beta *= 1 + e * n_episodes / horizon)."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the actor and of the (separate) critic MLP."""
    activation: Activation = "tanh"
    """Hidden activation of the MLPs."""
    ortho_init: bool = True
    """Orthogonal initialisation (gain sqrt(2) hidden, 0.01 policy head, 1 value head)."""
    log_std_init: float = 0.0
    """Initial log standard deviation of the Gaussian policy (Box actions)."""
    seed: int = 0
    """Seed of the agent's own torch and numpy RNG streams (init, sampling, shuffling)."""
    env_seed: int | None = None
    """Seed of the first env reset; the env restarts at checkpoints use its spawned children
    (numpy SeedSequence). None = seed."""
    device: str = "cpu"
    """Torch device of the policy and the update."""
    torch_threads: int | None = 1
    """torch.set_num_threads at construction (process-wide!); 1 suits small MLPs (intra-op threads
    only add overhead there and thrash a loaded machine); raise it for large (LM) policies; None
    leaves torch's setting alone."""

    def __post_init__(self) -> None:
        # Normalise sequences so a config built from CLI lists stays hashable and comparable.
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        positive = {
            "learning_rate": self.learning_rate,
            "n_steps": self.n_steps,
            "batch_size": self.batch_size,
            "n_epochs": self.n_epochs,
            "clip_coef": self.clip_coef,
            "max_grad_norm": self.max_grad_norm,
            "clip_obs": self.clip_obs,
            "clip_reward": self.clip_reward,
            "kl_target": self.kl_target,
            "kl_horizon": self.kl_horizon,
        }
        for name, value in positive.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"PPOKLConfig.{name} must be a finite number > 0, got {value!r}")
        for name in ("gamma", "gae_lambda"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"PPOKLConfig.{name} must lie in [0, 1], got {value!r}")
        for name in ("ent_coef", "vf_coef", "kl_coef"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"PPOKLConfig.{name} must be a finite number >= 0, got {value!r}")
        for name in ("clip_vloss", "target_kl"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"PPOKLConfig.{name} must be > 0 or None (off), got {value!r}")
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(
                f"PPOKLConfig.kl_estimator must be 'k1' or 'k3', got {self.kl_estimator!r}"
            )
        if self.adaptive_kl and self.kl_coef == 0:
            raise ValueError(
                "PPOKLConfig.adaptive_kl needs kl_coef > 0: the controller multiplies beta, so it "
                "would stay 0; set an initial kl_coef such as 0.2"
            )
        if self.activation not in ("tanh", "relu"):
            raise ValueError(
                f"PPOKLConfig.activation must be 'tanh' or 'relu', got {self.activation!r}"
            )
        if not self.hidden_sizes or any(h <= 0 for h in self.hidden_sizes):
            raise ValueError(
                f"PPOKLConfig.hidden_sizes must be positive ints, got {self.hidden_sizes}"
            )
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(
                f"PPOKLConfig.torch_threads must be >= 1 or None, got {self.torch_threads}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON/checkpoint friendly)."""
        out = dataclasses.asdict(self)
        out["hidden_sizes"] = list(self.hidden_sizes)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PPOKLConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise a clear error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown PPOKLConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)
