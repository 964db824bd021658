"""The KL leash to a frozen reference policy: estimators, the penalised reward, the controller.

``kl_penalized_rewards`` is the one place where the penalty enters the reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def kl_estimate(logp: np.ndarray, ref_logp: np.ndarray, estimator: str = "k1") -> np.ndarray:
    """Per-step estimate of KL(pi || pi_ref) from the sampled action's log-probs.

    ``logp`` is log pi(a_t|s_t) of the behaviour policy at rollout time (a_t ~ pi), ``ref_logp``
    the frozen reference's log-prob of the same action.

    - ``k1 = logp - ref_logp``: unbiased, can be negative for a single sample.
    - ``k3 = (exp(ref_logp - logp) - 1) - (ref_logp - logp)``: unbiased and always >= 0.

    Args:
        logp: ``[...]`` log-probs under the policy.
        ref_logp: ``[...]`` log-probs under the reference.
        estimator: ``"k1"`` or ``"k3"``.
    """
    log_ratio = ref_logp - logp
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return np.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; use 'k1' or 'k3'")


def kl_penalized_rewards(rewards: np.ndarray, kl: np.ndarray, kl_coef: float) -> np.ndarray:
    """Per-step RLHF reward ``r_t - beta * KL_t`` (Ziegler et al. 2019; Ouyang et al. 2022).

    This is the only place the KL penalty is added to the reward. ``rewards`` ``[T, N]`` are the
    env rewards as the trainer stores them, already scaled by the return scaler when
    ``norm_reward`` is on; ``kl`` ``[T, N]`` is in nats and is not scaled (see
    :attr:`PPOKLConfig.kl_coef` for what beta is relative to). With ``kl_coef == 0`` the rewards
    are returned unchanged (the trainer then never computes ``kl`` at all).
    """
    if kl_coef == 0:
        return rewards
    return (rewards - kl_coef * kl).astype(rewards.dtype, copy=False)


@dataclass
class KLController:
    """Fixed or adaptive KL coefficient beta.

    Adaptive rule (Ziegler et al. 2019, lm-human-preferences ``AdaptiveKLController``):
    ``e = clip(KL / target - 1, -0.2, 0.2)``; ``beta *= 1 + e * n_episodes / horizon``, where KL
    is the mean over the batch's finished episodes of the *per-episode (per-sequence) sum* of the
    per-step KL, so ``target`` is in nats per episode, not per step. A batch in which no episode
    finished leaves beta unchanged.
    """

    kl_coef: float
    adaptive: bool = False
    target: float = 6.0
    horizon: int = 10000

    def update(self, episode_kl: float, n_episodes: int) -> float:
        """Apply one controller step; returns the new beta."""
        if self.adaptive and n_episodes > 0 and np.isfinite(episode_kl):
            error = float(np.clip(episode_kl / self.target - 1.0, -0.2, 0.2))
            self.kl_coef *= 1.0 + error * n_episodes / self.horizon
        return self.kl_coef

    def state_dict(self) -> dict[str, Any]:
        return {"kl_coef": self.kl_coef}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kl_coef = float(state["kl_coef"])
