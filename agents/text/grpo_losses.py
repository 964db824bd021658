"""GRPO, Dr. GRPO and RLOO as small pure functions: advantages of a group, the clipped loss.

A *group* is the ``G`` completions sampled for one prompt; rewards arrive as ``[P, G]`` (``P``
prompts). With ``r`` one group's rewards, ``eps = 1e-4``:

- **GRPO** (Shao et al., 2024): ``A_i = (r_i - mean(r)) / (std(r) + eps)`` with the *unbiased*
  (Bessel-corrected, ``G - 1``) std, as TRL 1.16's ``GRPOTrainer`` computes it (``nanstd``) with
  ``scale_rewards="group"``;
- **Dr. GRPO** (Liu et al., 2025): ``A_i = r_i - mean(r)`` (``scale="none"``: no std, whose
  division up-weights the groups that barely differ);
- **RLOO** (Ahmadian et al., 2024): ``A_i = r_i - mean_{j != i} r_j``, the leave-one-out
  baseline, equal to ``G / (G - 1) * (r_i - mean(r))``; no std (TRL's ``normalize_advantages``
  is off by default).

:func:`grpo_loss` is PPO's clipped ratio objective applied per completion token, with the
sequence's advantage on each of its tokens; there is no value head. With ``d = log pi_ref -
log pi`` per token, the KL to the reference enters the loss by the k3 estimator
``exp(d) - d - 1`` (unbiased, always >= 0) times ``beta``. The alternative, KL as a reward
penalty, happens before the advantages (:func:`kl_penalised_rewards`);
:attr:`agents.text.grpo.GRPOConfig.kl_coefs` is the one place that chooses between the two.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "ADV_EPS",
    "GRPOLossOutput",
    "LengthNorm",
    "group_advantages",
    "grpo_loss",
    "kl_penalised_rewards",
    "rloo_advantages",
]

ADV_EPS = 1e-4
"""Added to the group std before dividing (TRL 1.16's value)."""

LengthNorm = Literal["sequence", "constant"]


def _check_groups(rewards: Tensor) -> None:
    """``rewards`` is ``[P, G]`` with ``P >= 1``, ``G >= 2`` and no NaN."""
    if rewards.ndim != 2:
        raise ValueError(
            f"rewards must be [prompts, group] (one row per prompt), got shape "
            f"{tuple(rewards.shape)}: reshape with rewards.view(-1, num_generations)"
        )
    prompts, group = rewards.shape
    if prompts == 0 or group == 0:
        raise ValueError(
            f"empty group: rewards have shape {tuple(rewards.shape)}; sample num_generations >= 2 "
            "completions for at least one prompt"
        )
    if group < 2:
        raise ValueError(
            f"a group needs G >= 2 completions per prompt (got G={group}): with one there is "
            "nothing to compare it with, so its advantage is undefined; raise num_generations"
        )
    bad = torch.isnan(rewards)
    if bool(bad.any()):
        rows = torch.nonzero(bad.any(1)).flatten().tolist()
        raise ValueError(
            f"NaN reward(s) in the groups of prompt rows {rows[:5]}: the reward function must "
            "score every completion (check it on empty or truncated completions)"
        )


def group_advantages(rewards: Tensor, scale: Literal["std", "none"] = "std") -> Tensor:
    """Group-relative advantages: GRPO (``scale="std"``) or Dr. GRPO (``"none"``).

    Args:
        rewards: ``[P, G]`` rewards, one row per prompt's group of ``G`` completions.
        scale: ``"std"``: divide by the group's unbiased std plus :data:`ADV_EPS` (TRL 1.16's
            ``GRPOTrainer``); ``"none"``: only subtract the group mean (Dr. GRPO).

    Returns:
        ``[P, G]`` advantages (0 for every member of a group whose rewards are all equal).

    Raises:
        ValueError: ``G < 2``, an empty group, NaN rewards or an unknown ``scale``.
    """
    _check_groups(rewards)
    centred = rewards - rewards.mean(1, keepdim=True)
    if scale == "none":
        return centred
    if scale == "std":
        return centred / (rewards.std(1, unbiased=True, keepdim=True) + ADV_EPS)
    raise ValueError(f"unknown advantage scale {scale!r}: 'std' (GRPO) or 'none' (Dr. GRPO)")


def rloo_advantages(rewards: Tensor) -> Tensor:
    """Leave-one-out advantages ``r_i - mean_{j != i} r_j`` of ``[P, G]`` rewards (RLOO).

    Raises:
        ValueError: ``G < 2``, an empty group or NaN rewards.
    """
    _check_groups(rewards)
    group = rewards.shape[1]
    others = (rewards.sum(1, keepdim=True) - rewards) / (group - 1)
    return rewards - others


def kl_penalised_rewards(
    rewards: Tensor, old_logps: Tensor, ref_logps: Tensor, mask: Tensor, beta: float
) -> Tensor:
    """KL as a reward penalty: ``r_i - beta * sum_t (log pi_old - log pi_ref)`` (k1, per sequence).

    The estimator of TRL's ``RLOOTrainer`` and of Ahmadian et al.: the summed log-ratio of the
    sampled tokens, whose expectation is the sequence KL (one sample may be negative).

    Args:
        rewards: ``[N]`` rewards of the completions.
        old_logps: ``[N, T]`` per-token log-probs under the sampling policy.
        ref_logps: ``[N, T]`` the same under the reference.
        mask: ``[N, T]``, 1 on completion tokens.
        beta: the penalty's coefficient.

    Returns:
        ``[N]`` penalised rewards.
    """
    return rewards - beta * ((old_logps - ref_logps) * mask).sum(-1)


class GRPOLossOutput(NamedTuple):
    """What :func:`grpo_loss` returns.

    Attributes:
        loss: scalar to minimise (with gradients).
        kl: masked token mean of the k3 KL estimate to the reference (detached; nan without one).
        clip_fraction: fraction of completion tokens whose ratio the clip held (detached).
    """

    loss: Tensor
    kl: Tensor
    clip_fraction: Tensor


def grpo_loss(
    logps: Tensor,
    old_logps: Tensor,
    ref_logps: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    beta: float = 0.04,
    length_norm: LengthNorm = "sequence",
    max_length: int | None = None,
) -> GRPOLossOutput:
    """The clipped, per-token GRPO objective with the k3 KL term, masked and length-normalised.

    Per completion token ``t`` of sequence ``i``, with ``ratio = exp(logps - old_logps)``::

        l_it = -min(ratio * A_i, clip(ratio, 1 - clip_eps, 1 + clip_eps) * A_i)
               + beta * (exp(ref - logps) - (ref - logps) - 1)

    ``length_norm="sequence"`` (GRPO): the mean of ``l`` over each sequence's tokens, then over
    sequences; ``"constant"`` (Dr. GRPO): the sum over all tokens divided by
    ``N * max_length``, so a long completion's tokens weigh as much as a short one's.

    Args:
        logps: ``[N, T]`` per-token log-probs of the sampled tokens under the policy (grad).
        old_logps: ``[N, T]`` the same under the policy that sampled them (no grad).
        ref_logps: ``[N, T]`` the same under the reference; may be None when ``beta == 0``.
        advantages: ``[N]`` one advantage per sequence.
        mask: ``[N, T]``, 1 on the tokens the policy sampled (EOS included), 0 on padding and
            on a dialogue's user tokens. Masked positions are neutralised before the ratio
            (ratio 1, k3 0), so no value there, however large, reaches the loss or its gradient.
        clip_eps: the ratio's clip range.
        beta: coefficient of the KL term in the loss (0: KL elsewhere or nowhere).
        length_norm: ``"sequence"`` or ``"constant"`` (see above).
        max_length: the constant of ``"constant"`` (the completion length cap).

    Raises:
        ValueError: mismatched shapes, ``beta > 0`` without ``ref_logps``, or ``"constant"``
            without ``max_length``.
    """
    if logps.ndim != 2 or old_logps.shape != logps.shape or mask.shape != logps.shape:
        raise ValueError(
            f"logps, old_logps and mask must all be [N, T], got {tuple(logps.shape)}, "
            f"{tuple(old_logps.shape)} and {tuple(mask.shape)}"
        )
    if advantages.shape != logps.shape[:1]:
        raise ValueError(f"advantages must be [N] = [{logps.shape[0]}], got "
                         f"{tuple(advantages.shape)}: one advantage per sequence")  # fmt: skip
    if beta > 0 and ref_logps is None:
        raise ValueError("beta > 0 puts the KL in the loss, which needs ref_logps")
    keep = mask > 0
    logps = torch.where(keep, logps, old_logps)
    if ref_logps is not None:
        ref_logps = torch.where(keep, ref_logps, logps)
    mask = mask.to(logps.dtype)
    adv = advantages[:, None]
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl = torch.full((), math.nan, device=logps.device)
    n_tokens = mask.sum().clamp(min=1.0)
    if ref_logps is not None:
        log_ref_ratio = ref_logps - logps
        k3 = torch.exp(log_ref_ratio) - log_ref_ratio - 1
        kl = (k3 * mask).sum().detach() / n_tokens
        if beta > 0:
            per_token = per_token + beta * k3
    if length_norm == "sequence":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif length_norm == "constant":
        if max_length is None or max_length < 1:
            raise ValueError(f"length_norm='constant' needs max_length >= 1, got {max_length}")
        loss = (per_token * mask).sum() / (logps.shape[0] * max_length)
    else:
        raise ValueError(f"unknown length_norm {length_norm!r}: 'sequence' or 'constant'")
    held = ((ratio < 1 - clip_eps) & (adv < 0)) | ((ratio > 1 + clip_eps) & (adv > 0))
    clip_fraction = (held.to(mask.dtype) * mask).sum().detach() / n_tokens
    return GRPOLossOutput(loss, kl, clip_fraction)
