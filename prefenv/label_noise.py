"""Label-noise-robust Bradley-Terry training: RIME's dynamic loss threshold (trust, flip or drop).

RIME (Cheng et al., "RIME: Robust Preference-based Reinforcement Learning with Noisy
Preferences", ICML 2024; code: github.com/CJReinforce/RIME_ICML2024, ``reward_model_RIME.py``)
filters the labelled pairs before every training epoch by their loss under the current model.
With ``p = P(segment 1 preferred) = sigmoid(R1 - R0)`` and label ``y``, a pair's loss is the
cross-entropy ``l = -y ln p - (1 - y) ln(1 - p)`` (RIME calls it the KL divergence between the
predicted and the annotated label: the same number for hard labels). Then, each epoch:

- **trusted** if ``l < tau_lower``, with
  ``tau_lower = -ln(rho) + alpha * rho + min(beta_t * s, 3)``, where ``rho`` is an exponential
  moving average (rate 0.1) of the largest loss among the pairs trusted in earlier epochs,
  ``s`` the pooled variance of those losses (RIME's code uses the variance where the paper
  writes a standard deviation; we follow the code), and
  ``beta_t = max(beta_min, beta_max - (beta_max - beta_min) * t / k)`` decays linearly with the
  epoch count ``t``. The first term is the paper's bound: a pair whose true label has loss at
  most ``rho`` has loss at least ``-ln(rho) + rho / 2`` under the flipped label. The second
  term tolerates the model's own uncertainty early on.
- **flipped** (label ``y -> 1 - y`` for this epoch only) if ``l > tau_upper = -ln(flip_tau)``:
  the model is almost sure the teacher is wrong.
- **dropped** from this epoch's loss otherwise.

Before any pair was trusted, ``rho = 0`` and ``tau_lower = -ln(1e-8) ~ 18.4``: the first epoch
trusts every pair (RIME's first update does the same). The statistics are updated with the
losses of the trusted pairs after each split.

Deviations, each for a reason:

- RIME scores every pair with the ensemble-mean probability because it trains its members in
  lockstep. :func:`prefenv.reward_training.train_reward_model` trains members one after another,
  so each network filters its own (bootstrap) training pairs with its own prediction.
- RIME keeps ``rho``, ``s`` and ``t`` on its reward-model object for the whole run (one "update"
  is one pass over the data, ``k = 60`` of them on DMC). Here one refit is a whole training run
  of up to ``max_epochs`` epochs, and a :class:`LabelNoiseFilter` lives for one refit: ``t``
  counts that refit's epochs. Keeping one filter per network for the whole run, as RIME does,
  was measured and is worse here (benchmarks/RESULTS.md, "RIME's statistics kept for the run"):
  on HalfCheetah with the mistake teacher (1,000 labels) the return fell from 2,966 / 2,867 to
  1,382 / 2,175 at eps 0.2 and from 4,523 / 3,445 to 4,103 / 2,550 at eps 0.1 (seeds 22 / 23).
  A refit's first epochs on every label anchor the unbounded (linear-output) model; with a bound
  already tight from earlier refits it trains on a shrinking set of easy pairs, its returns and
  its validation loss grow, and early stopping ends the refit sooner.
- A pair over both bounds (possible while ``tau_lower > tau_upper``) is flipped, not also
  trained on with its given label (RIME's index lists would hold it twice, both times flipped).
- If no pair falls under ``tau_lower``, every pair that is not flipped is trusted for that epoch
  (RIME would train on the flipped pairs alone) and the statistics are left unchanged.

RIME also warm-starts the reward model from its intrinsic-reward pre-training. Here the refits
already continue from the current weights (the trainer never re-initialises the model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch.nn.functional as F
from torch import Tensor

__all__ = ["RobustLabels", "LabelSplit", "LabelNoiseFilter", "pair_losses"]

_LOG_EPS = 1e-8
"""Added to ``rho`` inside the logarithm (``reward_model_RIME.py``: ``-np.log(x + 1e-8)``)."""


@dataclass(frozen=True)
class RobustLabels:
    """RIME's filter settings; defaults are the ones its ``run_parallel.sh`` runs on DMC."""

    alpha: float = 0.5
    """Weight ``alpha`` of ``rho`` in ``tau_lower`` (``--threshold_alpha=0.5``)."""
    beta_max: float = 3.0
    """Initial weight ``beta`` of the uncertainty term (``--threshold_beta_init=3.0``)."""
    beta_min: float = 1.0
    """Final weight of the uncertainty term (``--threshold_beta_min=1.0``)."""
    decay_epochs: int = 60
    """Epochs ``k`` over which ``beta`` decays linearly to ``beta_min`` (``train_RIME.py``:
    ``k = 60`` on DMC, 600 on Meta-world)."""
    max_uncertainty: float = 3.0
    """Cap on the uncertainty term ``beta_t * s`` (``reward_model_RIME.py``: ``min(..., 3.0)``)."""
    flip_tau: float = 1e-3
    """Flip a label when the model gives it probability below this: ``tau_upper = -ln(flip_tau)``
    (``train_RIME.py``: ``tau = 0.001``, so ``tau_upper ~ 6.91``)."""
    ema_rate: float = 0.1
    """Rate of the moving average of the largest trusted loss (``RunningMeanStd(mode='fixed',
    lr=0.1)`` in RIME's ``utils.py``)."""

    def __post_init__(self) -> None:
        for name in ("alpha", "beta_max", "beta_min", "max_uncertainty"):
            if getattr(self, name) < 0:
                raise ValueError(f"RobustLabels: {name} must be >= 0, got {getattr(self, name)}")
        if self.beta_min > self.beta_max:
            raise ValueError(
                f"RobustLabels: beta_min ({self.beta_min}) must not exceed beta_max "
                f"({self.beta_max}): beta decays from beta_max to beta_min"
            )
        if self.decay_epochs < 1:
            raise ValueError(f"RobustLabels: decay_epochs must be >= 1, got {self.decay_epochs}")
        if not 0 < self.flip_tau < 0.5:
            raise ValueError(
                f"RobustLabels: flip_tau must be in (0, 0.5), got {self.flip_tau}: it is the "
                "probability below which the model overrules a label (RIME: 0.001)"
            )
        if not 0 < self.ema_rate <= 1:
            raise ValueError(f"RobustLabels: ema_rate must be in (0, 1], got {self.ema_rate}")

    @property
    def tau_upper(self) -> float:
        """Loss above which a label is flipped, ``-ln(flip_tau)``."""
        return -math.log(self.flip_tau)


def pair_losses(returns0: Tensor, returns1: Tensor, labels: Tensor) -> Tensor:
    """``[B]`` per-pair Bradley-Terry cross-entropy (no margin, no centring), RIME's ``l``.

    Args:
        returns0: ``[B]`` predicted returns of the first segments.
        returns1: ``[B]`` predicted returns of the second segments.
        labels: ``[B]`` labels in [0, 1] (1 = segment 1 preferred).
    """
    logits = returns1 - returns0
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")


@dataclass(frozen=True)
class LabelSplit:
    """One epoch's verdict on ``N`` pairs.

    Attributes:
        trusted: ``[N]`` bool, train on the label as given.
        flipped: ``[N]`` bool, train on ``1 - label`` (never also trusted).
        tau_lower: the trust bound used.
        tau_upper: the flip bound used.
    """

    trusted: np.ndarray
    flipped: np.ndarray
    tau_lower: float
    tau_upper: float

    @property
    def dropped(self) -> np.ndarray:
        """``[N]`` bool, left out of this epoch's loss."""
        return ~(self.trusted | self.flipped)


class LabelNoiseFilter:
    """RIME's dynamic threshold for one network over one refit (see the module docstring).

    Call :meth:`split` once per epoch with the current per-pair losses: it classifies them, then
    updates the statistics from the trusted ones and advances the epoch count.
    """

    def __init__(self, config: RobustLabels) -> None:
        self.config = config
        self.epoch = 0
        # RunningMeanStd(mean=0, std=1.0, mode="fixed") as RIME constructs it: "std" lands in var
        self.mean, self.var, self.max, self.count = 0.0, 1.0, 0.0, 0

    @property
    def beta(self) -> float:
        """``beta_t``, linear from ``beta_max`` to ``beta_min`` over ``decay_epochs``."""
        c = self.config
        return max(c.beta_min, c.beta_max - (c.beta_max - c.beta_min) * self.epoch / c.decay_epochs)

    @property
    def tau_lower(self) -> float:
        """``-ln(rho) + alpha * rho + min(beta_t * s, cap)`` with ``rho`` the EMA of the max."""
        c = self.config
        rho = self.max
        uncertainty = min(self.beta * self.var, c.max_uncertainty)
        return -math.log(rho + _LOG_EPS) + c.alpha * rho + uncertainty

    def split(self, losses: np.ndarray) -> LabelSplit:
        """Classify ``[N]`` per-pair losses, then update the statistics from the trusted ones.

        Raises:
            ValueError: ``losses`` is not a 1-D array of finite numbers.
        """
        losses = np.asarray(losses, dtype=np.float64)
        if losses.ndim != 1 or not np.all(np.isfinite(losses)):
            raise ValueError(
                f"LabelNoiseFilter.split needs a 1-D array of finite losses, got shape "
                f"{losses.shape}: compute them with prefenv.label_noise.pair_losses"
            )
        tau_lower, tau_upper = self.tau_lower, self.config.tau_upper
        flipped = losses > tau_upper
        trusted = (losses < tau_lower) & ~flipped
        if trusted.any():
            self._update(losses[trusted])
        else:
            trusted = ~flipped
        self.epoch += 1
        return LabelSplit(trusted, flipped, tau_lower, tau_upper)

    def _update(self, trusted_losses: np.ndarray) -> None:
        """RIME's ``RunningMeanStd.update`` in ``mode='fixed'``: EMA mean and max, pooled var."""
        rate = self.config.ema_rate
        batch_mean, batch_var = float(trusted_losses.mean()), float(trusted_losses.var())
        n = len(trusted_losses)
        delta = batch_mean - self.mean
        total = self.count + n
        pooled = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean += delta * rate
        self.max += (float(trusted_losses.max()) - self.max) * rate
        self.var, self.count = pooled / total, total
