"""PPO's pure pieces: GAE and the losses, each checkable against hand-computed values."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    next_values: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    valid: np.ndarray,
    gamma: float,
    gae_lambda: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation over a ``[T, N]`` rollout (T steps, N envs).

    For step t: ``delta_t = r_t + gamma * (1 - terminated_t) * next_values_t - values_t`` and
    ``A_t = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}`` with ``done = terminated | truncated``.
    So ``terminated`` does not bootstrap, while ``truncated`` bootstraps from ``next_values_t``,
    which must then be the value of the *final* observation of the episode (under Gymnasium's
    NEXT_STEP autoreset that is simply the value of the observation returned by the done step),
    and no advantage flows across an episode boundary.

    Steps with ``valid == False`` (the reset step that follows a done under NEXT_STEP autoreset:
    the env ignores its action) get advantage 0 and must be masked out of the loss.

    Args:
        rewards: ``[T, N]`` rewards (already KL-penalised / scaled).
        values: ``[T, N]`` V(s_t) at rollout time.
        next_values: ``[T, N]`` V(s_{t+1}); for a truncated step the value of the final obs.
        terminated: ``[T, N]`` bool.
        truncated: ``[T, N]`` bool.
        valid: ``[T, N]`` bool; False marks masked steps.
        gamma: discount.
        gae_lambda: GAE lambda.

    Returns:
        advantages ``[T, N]`` and returns ``[T, N]`` (= advantages + values), float32.
    """
    n_steps = rewards.shape[0]
    not_terminated = 1.0 - terminated.astype(np.float32)
    not_done = 1.0 - (terminated | truncated).astype(np.float32)
    deltas = rewards + gamma * not_terminated * next_values - values
    deltas = np.where(valid, deltas, 0.0).astype(np.float32)
    advantages = np.zeros_like(deltas)
    last = np.zeros(rewards.shape[1:], dtype=np.float32)
    for t in range(n_steps - 1, -1, -1):
        last = deltas[t] + gamma * gae_lambda * not_done[t] * last
        advantages[t] = last
    return advantages, (advantages + values).astype(np.float32)


def normalize_advantages(advantages: Tensor, eps: float = 1e-8) -> Tensor:
    """Shift to mean 0 and scale to std 1 (unbiased std, as SB3); one element is left as is."""
    if advantages.numel() < 2:
        return advantages
    return (advantages - advantages.mean()) / (advantages.std() + eps)


def ppo_clip_loss(log_ratio: Tensor, advantages: Tensor, clip_coef: float) -> Tensor:
    """Clipped surrogate loss ``mean(max(-A * r, -A * clip(r, 1 - eps, 1 + eps)))``.

    Args:
        log_ratio: ``[B]`` log pi(a|s) - log pi_old(a|s).
        advantages: ``[B]``.
        clip_coef: epsilon.
    """
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_coef, 1.0 + clip_coef)
    return torch.maximum(unclipped, clipped).mean()


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, clip_coef: float | None
) -> Tensor:
    """Mean squared value error, optionally clipped around the rollout-time values.

    Unclipped: ``mean((V - R)^2)`` (SB3's scale; there is no 1/2). Clipped (PPO2/CleanRL):
    ``mean(max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2))``.
    """
    unclipped = (values - returns).square()
    if clip_coef is None:
        return unclipped.mean()
    v_clipped = old_values + torch.clamp(values - old_values, -clip_coef, clip_coef)
    return torch.maximum(unclipped, (v_clipped - returns).square()).mean()


def entropy_loss(entropy: Tensor) -> Tensor:
    """Negative mean entropy (minimising it maximises entropy)."""
    return -entropy.mean()


def approx_kl_and_clip_fraction(log_ratio: Tensor, clip_coef: float) -> tuple[Tensor, Tensor]:
    """Diagnostics without gradient: ``mean((r - 1) - log r)`` and the fraction with |r - 1| > eps."""
    with torch.no_grad():
        ratio = torch.exp(log_ratio)
        approx_kl = ((ratio - 1.0) - log_ratio).mean()
        clip_fraction = ((ratio - 1.0).abs() > clip_coef).float().mean()
    return approx_kl, clip_fraction


def explained_variance(predictions: np.ndarray, targets: np.ndarray) -> float:
    """1 - Var[targets - predictions] / Var[targets] (nan when targets are constant)."""
    var = float(np.var(targets))
    return float("nan") if var == 0 else 1.0 - float(np.var(targets - predictions)) / var
