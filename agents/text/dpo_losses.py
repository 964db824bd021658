"""The DPO family's losses as small pure functions, and the ensemble rule of uncertainty-aware DPO.

Notation: ``pi_c``/``pi_r`` are the policy's summed completion log-probs of the chosen and the
rejected completion, ``ref_c``/``ref_r`` the frozen reference's, ``n_c``/``n_r`` the completions'
token counts (EOS included), and ``eps`` a per-pair label smoothing (the probability the label
is flipped; 0.5 for a tie). Every pairwise loss returns ``(losses, chosen_rewards,
rejected_rewards)``, each ``[B]``, the rewards detached.

=========  ========================================================================  ===========
loss       per pair (``eps = 0``)                                                     reference
=========  ========================================================================  ===========
sigmoid    ``-log sigmoid(beta * h)``, ``h = (pi_c - ref_c) - (pi_r - ref_r)``         yes
ipo        ``(h_avg - 1 / (2 beta))^2``, ``h_avg`` the per-token average of ``h``      yes
robust     ``[(1 - e) l(h) - e l(-h)] / (1 - 2e)``, ``l(h) = -log sigmoid(beta h)``    yes
simpo      ``-log sigmoid(beta * (pi_c / n_c - pi_r / n_r) - gamma)``                 no
kto        unpaired: ``lambda_D (1 - sigmoid(beta (r - z0)))`` for a desirable        yes
           completion, ``lambda_U (1 - sigmoid(beta (z0 - r)))`` for an undesirable
           one, ``r = pi - ref``, ``z0`` the batch's KL estimate
=========  ========================================================================  ===========

Each is checked against TRL 1.16 (``DPOTrainer`` loss types ``sigmoid``, ``ipo``, ``robust``;
``CPOTrainer``'s ``simpo``; ``KTOTrainer``'s ``kto``) at ``eps = 0``; where these functions go
further (soft labels for ties in IPO and SimPO) the docstring says so.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LOSSES",
    "dpo_loss",
    "ipo_loss",
    "kto_kl_estimate",
    "kto_loss",
    "robust_dpo_loss",
    "simpo_loss",
    "uncertainty_weights",
]

LOSSES = ("sigmoid", "ipo", "simpo", "robust", "kto")
"""The losses :class:`~agents.text.dpo.DPOConfig` trains with (its ``loss`` field)."""


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    label_smoothing: float | Tensor = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """The DPO sigmoid loss per pair (Rafailov et al., 2023), and the implicit rewards.

    ``losses = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)`` with
    ``h = (pi_c - ref_c) - (pi_r - ref_r)``: the cross-entropy against the soft label
    ``1 - eps`` (cDPO / TRL's ``label_smoothing``). ``eps = 0.5`` (a tie) is minimised at
    ``h = 0``.

    Args:
        policy_chosen_logps: ``[B]`` summed completion log-probs of the chosen completions.
        policy_rejected_logps: ``[B]`` the same for the rejected ones.
        ref_chosen_logps: ``[B]`` reference model log-probs of the chosen completions.
        ref_rejected_logps: ``[B]`` the same for the rejected ones.
        beta: KL strength (inverse temperature of the implicit reward).
        label_smoothing: ``eps`` in ``[0, 0.5]``, a float or a ``[B]`` tensor (per-pair: 0.5
            for ties, 0 otherwise).

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``[B]``; the rewards are
        ``beta * (policy - ref)`` and detached.
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    logits = beta * (chosen_logratios - rejected_logratios)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    beta: float = 0.1,
    label_smoothing: float | Tensor = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """IPO (Azar et al., 2023): regress the log-ratio difference onto ``1 / (2 beta)``.

    ``h = (pi_c - ref_c) / n_c - (pi_r - ref_r) / n_r``: each log-ratio is averaged per
    completion token, as TRL 1.16 does (its comment: the IPO authors confirmed their results use
    this length-normalised form; summed log-ratios make the square grow with length), and
    ``losses = (h - 1 / (2 beta))^2``. ``beta`` is the paper's ``tau``: larger keeps the policy
    closer to the reference. A soft label mixes the two orders,
    ``(1 - eps) (h - c)^2 + eps (h + c)^2 = (h - (1 - 2 eps) c)^2 + const`` with
    ``c = 1 / (2 beta)``, so a tie (``eps = 0.5``) regresses ``h`` onto 0 (TRL has no soft IPO
    labels; at ``eps = 0`` the two agree).

    Args:
        policy_chosen_logps: ``[B]`` summed completion log-probs of the chosen completions.
        policy_rejected_logps: ``[B]`` the same for the rejected ones.
        ref_chosen_logps: ``[B]`` reference model log-probs of the chosen completions.
        ref_rejected_logps: ``[B]`` the same for the rejected ones.
        chosen_lengths: ``[B]`` completion token counts of the chosen completions (>= 1).
        rejected_lengths: ``[B]`` the same for the rejected ones.
        beta: regularisation (``tau``); the target margin is ``1 / (2 beta)``.
        label_smoothing: ``eps``, a float or a ``[B]`` tensor.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``; rewards ``beta * (policy - ref)`` of the
        summed log-probs (as :func:`dpo_loss`), detached.
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    chosen_per_token = chosen_logratios / chosen_lengths.clamp(min=1)
    rejected_per_token = rejected_logratios / rejected_lengths.clamp(min=1)
    h = chosen_per_token - rejected_per_token
    target = 1 / (2 * beta)
    losses = (1 - label_smoothing) * (h - target) ** 2 + label_smoothing * (h + target) ** 2
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def robust_dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    flip_rate: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Robust DPO (Chowdhury et al., 2024; TRL's ``robust``): unbiased under label flips.

    If each label is flipped with probability ``e`` (``flip_rate``), the loss
    ``[(1 - e) l(h) - e l(-h)] / (1 - 2e)`` with ``l(h) = -log sigmoid(beta h)`` has, in
    expectation over the flips, the clean DPO loss's value. ``e = 0`` is :func:`dpo_loss`.
    Unlike cDPO's soft label (which is minimised at a finite ``h``), it keeps pushing ``h`` up;
    it has no form for ties (``1 - 2e`` would be 0 at ``e = 0.5``).

    Args:
        policy_chosen_logps: ``[B]`` summed completion log-probs of the chosen completions.
        policy_rejected_logps: ``[B]`` the same for the rejected ones.
        ref_chosen_logps: ``[B]`` reference model log-probs of the chosen completions.
        ref_rejected_logps: ``[B]`` the same for the rejected ones.
        beta: KL strength.
        flip_rate: ``e`` in ``[0, 0.5)``, the assumed probability that a label is wrong.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)`` as :func:`dpo_loss`.

    Raises:
        ValueError: ``flip_rate`` outside ``[0, 0.5)``.
    """
    if not 0 <= flip_rate < 0.5:
        raise ValueError(f"robust DPO's flip_rate must be in [0, 0.5), got {flip_rate}")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    logits = beta * (chosen_logratios - rejected_logratios)
    clean = -(1 - flip_rate) * F.logsigmoid(logits)
    flipped = -flip_rate * F.logsigmoid(-logits)
    losses = (clean - flipped) / (1 - 2 * flip_rate)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def simpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    beta: float = 2.0,
    gamma_beta_ratio: float = 0.5,
    label_smoothing: float | Tensor = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """SimPO (Meng et al., 2024): length-normalised log-probs, a target margin, no reference.

    ``losses = -log sigmoid(beta * (pi_c / n_c - pi_r / n_r) - gamma)`` with
    ``gamma = beta * gamma_beta_ratio`` (defaults beta 2.0 and ratio 0.5, the paper's; TRL's
    ``CPOConfig(loss_type="simpo", cpo_alpha=0)`` spells the margin ``simpo_gamma = gamma``). A
    soft label weighs the reversed order with the same margin,
    ``-(1 - eps) log sigmoid(beta d - gamma) - eps log sigmoid(-beta d - gamma)``
    (``d = pi_c / n_c - pi_r / n_r``), so a tie is symmetric in ``d`` (TRL's CPO smooths
    ``beta d - gamma`` itself; the two agree at ``eps = 0``).

    Args:
        policy_chosen_logps: ``[B]`` summed completion log-probs of the chosen completions.
        policy_rejected_logps: ``[B]`` the same for the rejected ones.
        chosen_lengths: ``[B]`` completion token counts of the chosen completions (>= 1).
        rejected_lengths: ``[B]`` the same for the rejected ones.
        beta: scale of the average log-prob reward (2.0 to 2.5 in the paper).
        gamma_beta_ratio: ``gamma / beta``, the target margin in average log-prob.
        label_smoothing: ``eps``, a float or a ``[B]`` tensor.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``; the rewards are ``beta`` times the
        average log-probs, detached.
    """
    chosen_rewards = beta * policy_chosen_logps / chosen_lengths.clamp(min=1)
    rejected_rewards = beta * policy_rejected_logps / rejected_lengths.clamp(min=1)
    gamma = beta * gamma_beta_ratio
    difference = chosen_rewards - rejected_rewards
    losses = -(1 - label_smoothing) * F.logsigmoid(difference - gamma) - (
        label_smoothing * F.logsigmoid(-difference - gamma)
    )
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def kto_kl_estimate(policy_kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:
    """KTO's reference point ``z0``: the batch-mean log-ratio of *mismatched* completions, >= 0.

    ``z0 = max(0, mean(pi(y' | x) - ref(y' | x)))`` over ``(x, y')`` rows that pair a prompt with
    another example's completion: an estimate of ``KL(pi || ref)`` that is detached (no
    gradient flows through the baseline) and clamped at 0, as TRL's ``KTOTrainer`` does.

    Args:
        policy_kl_logps: ``[B]`` summed policy log-probs of the mismatched completions.
        ref_kl_logps: ``[B]`` the reference's.

    Returns:
        A 0-d tensor.
    """
    return (policy_kl_logps - ref_kl_logps).mean().detach().clamp(min=0)


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    kl: Tensor | float,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """KTO (Ethayarajh et al., 2024) on unpaired examples, and their implicit rewards.

    With ``r = pi - ref`` (summed log-probs) and the reference point ``z0 = kl``
    (:func:`kto_kl_estimate`)::

        desirable:   lambda_D * (1 - sigmoid(beta * (r - z0)))
        undesirable: lambda_U * (1 - sigmoid(beta * (z0 - r)))

    TRL's ``KTOTrainer`` (``loss_type="kto"``) concatenates the two groups and averages; the
    mean of these per-example losses is the same number.

    Args:
        policy_logps: ``[N]`` summed completion log-probs under the policy.
        ref_logps: ``[N]`` the reference's.
        desirable: ``[N]`` bool, True for a desirable completion.
        kl: ``z0``, a 0-d tensor or a float (treated as a constant).
        beta: KL strength.
        desirable_weight: ``lambda_D``.
        undesirable_weight: ``lambda_U``.

    Returns:
        ``(losses, rewards)``, each ``[N]``; the rewards are ``beta * r``, detached.
    """
    logratios = policy_logps - ref_logps
    sign = torch.where(desirable, 1.0, -1.0).to(logratios.dtype)
    weight = torch.where(desirable, desirable_weight, undesirable_weight).to(logratios.dtype)
    losses = weight * (1 - torch.sigmoid(beta * sign * (logratios - kl)))
    return losses, beta * logratios.detach()


def uncertainty_weights(
    member_margins: np.ndarray, flip_z: float = 2.0, scale: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Uncertainty-aware DPO: per-pair weights and relabels from a reward-model ensemble.

    ``member_margins[k, n]`` is member ``k``'s score of pair ``n``'s chosen completion minus its
    score of the rejected one. With ``mu_n`` their mean and ``sigma_n`` their (population) std
    over members, the rule is:

    1. **Relabel** (flip chosen and rejected) the pairs the ensemble confidently contradicts:
       ``mu_n < -flip_z * sigma_n``, i.e. the members' mean prefers the rejected completion by
       more than ``flip_z`` (default 2) member standard deviations.
    2. **Down-weight** disagreement: ``w_n = 1 / (1 + (sigma_n / s)^2)`` with ``s = scale``,
       by default the mean ``sigma`` over the pairs (a pair of average disagreement weighs half
       as much as one the members agree on exactly, one with 3x the average a tenth), then
       normalised so that the weights average 1 (the loss keeps its scale; only the emphasis
       moves). If no pair has any disagreement every weight is 1.

    Args:
        member_margins: ``[K, N]`` score margins of ``K >= 2`` members on ``N`` pairs.
        flip_z: relabel threshold in member standard deviations (> 0; ``inf`` never flips).
        scale: ``s``; None: the mean of ``sigma`` over the pairs.

    Returns:
        ``(weights, flip)``: ``[N]`` float64 weights (mean 1) and ``[N]`` bool relabels.

    Raises:
        ValueError: fewer than 2 members, no pairs, non-finite margins or a bad threshold.
    """
    margins = np.asarray(member_margins, dtype=np.float64)
    if margins.ndim != 2 or margins.shape[0] < 2 or margins.shape[1] < 1:
        raise ValueError(
            "uncertainty weights need [K, N] score margins of K >= 2 reward-model members on "
            f"N >= 1 pairs, got shape {margins.shape}: train the reward model as an ensemble "
            "(TextRewardEnsemble; `prefenv text rm --rm-ensemble 3`)"
        )
    if not np.isfinite(margins).all():
        raise ValueError("the ensemble's score margins contain NaN or inf: check the reward model")
    if not flip_z > 0:
        raise ValueError(f"flip_z must be > 0 member standard deviations, got {flip_z}")
    if scale is not None and not scale > 0:
        raise ValueError(f"scale must be > 0 (or None: the mean disagreement), got {scale}")
    mu, sigma = margins.mean(0), margins.std(0)
    flip = mu < -flip_z * sigma
    s = float(sigma.mean()) if scale is None else scale
    raw = np.ones_like(sigma) if s == 0 else 1 / (1 + (sigma / s) ** 2)
    return raw / raw.mean(), flip
