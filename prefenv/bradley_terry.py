"""The Bradley-Terry loss on pairs of predicted returns, and how often a pair is ordered rightly.

:func:`bradley_terry_loss` is what :func:`prefenv.reward_training.train_reward_model` minimises,
with its options: a margin, a return-centring term (TRL), the likelihood of a teacher who is
wrong with a known probability, and label smoothing.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["bradley_terry_loss", "pair_accuracy"]


def bradley_terry_loss(
    returns0: Tensor,
    returns1: Tensor,
    labels: Tensor,
    margin: float | Tensor = 0.0,
    centering_coef: float = 0.0,
    label_noise: float = 0.0,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Mean Bradley-Terry cross-entropy over a batch of pairs.

    ``loss = -p log sigmoid(R1 - R0 - m) - (1 - p) log sigmoid(R0 - R1 - m)
    + c * mean((R0 + R1)^2)``, with ``p = labels`` the probability that segment 1 is preferred.
    For a hard label this is ``-log sigmoid(R_w - R_l - m)``; a tie (p = 0.5) pulls R0 and R1
    together. The centring term (TRL uses c = 1e-2) keeps returns near zero.

    With ``label_noise = e > 0`` the likelihood is that of a teacher who answers at random with
    probability ``2e`` (so the label is wrong with probability ``e`` whatever the two returns):
    ``sigmoid(x)`` becomes ``e + (1 - 2e) sigmoid(x)`` on both sides. A label the model is sure is
    wrong then costs at most ``-log e`` and its gradient vanishes, where the plain loss grows
    with the model's confidence and keeps pulling. (B-Pref's ``mistake`` teacher is this model.)

    Args:
        returns0: ``[B]`` predicted returns of the first segments.
        returns1: ``[B]`` predicted returns of the second segments.
        labels: ``[B]`` soft labels in [0, 1].
        margin: the preferred segment must win by this much (scalar or ``[B]``).
        centering_coef: weight ``c`` of the centring term.
        label_noise: assumed probability ``e`` in [0, 0.5) that a label is wrong.
        label_smoothing: ``s`` in [0, 1): labels are pulled ``s`` of the way to 0.5.
    """
    logits = returns1 - returns0
    labels = labels.to(logits.dtype)
    if label_smoothing:
        labels = labels * (1.0 - label_smoothing) + 0.5 * label_smoothing
    log_p = F.logsigmoid if not label_noise else functools.partial(_noisy_logsigmoid, e=label_noise)
    loss = -labels * log_p(logits - margin) - (1.0 - labels) * log_p(-logits - margin)
    loss = loss.mean()
    if centering_coef:
        loss = loss + centering_coef * ((returns0 + returns1) ** 2).mean()
    return loss


def _noisy_logsigmoid(x: Tensor, e: float) -> Tensor:
    """``log(e + (1 - 2e) sigmoid(x))``, stable for any ``x``."""
    return torch.logaddexp(torch.full_like(x, math.log(e)), math.log1p(-2.0 * e) + F.logsigmoid(x))


def pair_accuracy(returns0: Tensor, returns1: Tensor, labels: Tensor) -> float:
    """Share of non-tie pairs where sign(R1 - R0) agrees with the label (NaN if none)."""
    decided = labels != 0.5
    if not bool(decided.any()):
        return math.nan
    agree = (returns1 > returns0) == (labels > 0.5)
    agree &= returns1 != returns0
    return float(agree[decided].float().mean())
