"""SURF: confident pseudo-labels on unlabelled segment pairs, and temporal cropping.

SURF (Park et al., "SURF: Semi-supervised Reward Learning with Data Augmentation for
Feedback-efficient Preference-based Reinforcement Learning", ICLR 2022; code:
github.com/alinlab/SURF, ``reward_model_semi_dataaug.py``) adds two things to Bradley-Terry
training, both applied at every gradient step:

- **Pseudo-labels.** Next to each labelled minibatch of ``B`` pairs, ``mu * B`` unlabelled pairs
  are drawn (cycling through a shuffled pool). The network being trained predicts
  ``p = sigmoid(R1 - R0)`` on each, without gradient and on the uncropped segments; pairs with
  confidence ``max(p, 1 - p) >= threshold`` get the hard label ``1[p > 0.5]``. The loss gains
  ``lambda * mean_i(mask_i * CE(p_i^crop, pseudo_i))``, the mean taken over *all* ``mu * B``
  drawn pairs as in SURF's code (unconfident pairs contribute zero).
- **Temporal crop.** Both segments of a pair (labelled or unlabelled) are cut to one common
  length ``L`` at independent uniform starts. SURF samples segments ``S = H + 2w`` steps long
  around the ``H`` steps the teacher judged (``H = 50``, window ``w = 5``) and crops
  ``L ~ U{H - c, ..., H + c}`` (``crop_range c = 5``) at starts ``U{0, ..., S - L}``: it removes
  ``2w - c .. 2w + c`` (5 to 15) steps of the window. Our segments are exactly what the teacher
  judged, with no extra steps around them, so the window is the segment itself (``S = H``) and
  the crop keeps ``L ~ U{S - 2w - c, ..., S - 2w + c}`` steps (35 to 45 of 50), clipped to
  ``[1, S]``. Left whole: pairs whose segments differ in length (a window cut at a termination
  carries its meaning in where it ends) and segments without numeric features (text segments,
  scored from their context by a text reward model).

The preference loop supplies the unlabelled pairs (SURF draws ``inv_label_ratio`` unlabelled
pairs per query from the same trajectories the queries come from).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from prefenv.records import Segment

__all__ = ["Surf", "UnlabelledBatches", "crop_length_range", "crop_pair", "pseudo_labels"]

SegmentReturns = Callable[[Sequence[Segment]], Tensor]
"""``segment_returns`` of a reward model: ``B`` segments -> ``[B]`` differentiable returns."""


@dataclass(frozen=True)
class Surf:
    """SURF's settings; defaults from its README commands (DMC walker and Meta-world hammer)."""

    threshold: float = 0.99
    """Confidence ``max(p, 1 - p)`` at or above which an unlabelled pair is pseudo-labelled
    (README: ``threshold_u=0.99``; the config file's default is 0.95)."""
    weight: float = 1.0
    """Weight ``lambda`` of the pseudo-label loss (``lambda_u: 1``)."""
    unlabelled_ratio: int = 4
    """``mu``: unlabelled pairs per labelled pair in each minibatch (README: ``mu=4``)."""
    unlabelled_per_label: int = 10
    """Unlabelled pairs the *loop* should sample per labelled one (``inv_label_ratio``: 10 in
    the config and on Meta-world, 100 on DMC with 100 labels). The trainer does not read it."""
    crop: bool = True
    """Crop every pair at every step (SURF's temporal augmentation)."""
    window: int = 5
    """SURF's ``dataaug_window`` ``w`` (see the module docstring for the crop rule)."""
    crop_range: int = 5
    """SURF's ``crop_range`` ``c``."""

    def __post_init__(self) -> None:
        if not 0.5 < self.threshold <= 1:
            raise ValueError(
                f"Surf: threshold must be in (0.5, 1], got {self.threshold}: it is the confidence "
                "max(p, 1 - p) a pseudo-label needs (SURF: 0.95 to 0.99)"
            )
        if self.weight < 0:
            raise ValueError(f"Surf: weight must be >= 0, got {self.weight}")
        for name in ("unlabelled_ratio", "unlabelled_per_label"):
            if getattr(self, name) < 1:
                raise ValueError(f"Surf: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("window", "crop_range"):
            if getattr(self, name) < 0:
                raise ValueError(f"Surf: {name} must be >= 0, got {getattr(self, name)}")


def crop_length_range(length: int, config: Surf) -> tuple[int, int]:
    """``(low, high)`` inclusive crop lengths for a pair of ``length``-step segments."""
    centre = length - 2 * config.window
    low = min(max(1, centre - config.crop_range), length)
    high = min(max(1, centre + config.crop_range), length)
    return low, high


def _croppable(segment0: Segment, segment1: Segment) -> bool:
    featureless = segment0.obs.shape[1] == 0 and segment0.acts.shape[1] == 0
    return len(segment0) == len(segment1) and len(segment0) > 1 and not featureless


def _cut(segment: Segment, start: int, length: int) -> Segment:
    return Segment(
        obs=segment.obs[start : start + length + 1],
        acts=segment.acts[start : start + length],
        true_rewards=segment.true_rewards[start : start + length],
        context=segment.context,
    )


def crop_pair(
    segment0: Segment, segment1: Segment, config: Surf, rng: np.random.Generator
) -> tuple[Segment, Segment]:
    """Both segments cut to one random length at independent random starts (SURF's crop).

    Pairs of different lengths, one-step segments and featureless (text) segments come back
    unchanged, and so does every pair when ``config.crop`` is off.
    """
    if not config.crop or not _croppable(segment0, segment1):
        return segment0, segment1
    steps = len(segment0)
    low, high = crop_length_range(steps, config)
    length = int(rng.integers(low, high + 1))
    start0, start1 = rng.integers(0, steps - length + 1, size=2)
    return _cut(segment0, int(start0), length), _cut(segment1, int(start1), length)


def pseudo_labels(logits: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """``([B] hard labels, [B] bool confident)`` from ``[B]`` logits ``R1 - R0``.

    A pair is confident when ``max(p, 1 - p) >= threshold`` with ``p = sigmoid(logit)`` (SURF:
    ``pred_max >= threshold_u``); its label is 1 when ``p > 0.5``.
    """
    p = torch.sigmoid(logits)
    confident = torch.maximum(p, 1 - p) >= threshold
    return (p > 0.5).to(logits.dtype), confident


class UnlabelledBatches:
    """One network's SURF state in one refit: the unlabelled pool in shuffled batches, the crop.

    Args:
        config: SURF's settings.
        pairs: the unlabelled segment pairs (may be empty: then only the crop applies).
        batch_size: the labelled minibatch size ``B``; unlabelled batches hold ``mu * B`` pairs.
        rng: the source of the shuffles and the crops.
    """

    def __init__(
        self,
        config: Surf,
        pairs: Sequence[tuple[Segment, Segment]],
        batch_size: int,
        rng: np.random.Generator,
    ) -> None:
        self.config, self.pairs, self.rng = config, list(pairs), rng
        self.size = config.unlabelled_ratio * batch_size
        self._order = np.zeros(0, dtype=np.int64)
        self._next = 0

    def crop(
        self, segments0: Sequence[Segment], segments1: Sequence[Segment]
    ) -> tuple[list[Segment], list[Segment]]:
        """Each pair ``(segments0[i], segments1[i])`` through :func:`crop_pair`."""
        cropped = [
            crop_pair(a, b, self.config, self.rng)
            for a, b in zip(segments0, segments1, strict=True)
        ]
        return [a for a, _ in cropped], [b for _, b in cropped]

    def _batch(self) -> list[tuple[Segment, Segment]]:
        """The next ``mu * B`` pairs; the last batch of a pass may be shorter (as in SURF)."""
        if self._next >= len(self._order):
            self._order, self._next = self.rng.permutation(len(self.pairs)), 0
        index = self._order[self._next : self._next + self.size]
        self._next += self.size
        return [self.pairs[i] for i in index]

    def loss(self, segment_returns: SegmentReturns) -> tuple[Tensor | None, int]:
        """``(lambda * mean(mask * CE), confident count)`` on the next unlabelled batch.

        The loss is ``None`` when there are no unlabelled pairs or none is confident.
        """
        if not self.pairs:
            return None, 0
        batch = self._batch()
        n = len(batch)
        segments0, segments1 = [a for a, _ in batch], [b for _, b in batch]
        # the uncropped pass labels; without the crop it also carries the gradient
        with torch.set_grad_enabled(not self.config.crop):
            returns = segment_returns(segments0 + segments1)
        logits = returns[n:] - returns[:n]
        labels, confident = pseudo_labels(logits.detach(), self.config.threshold)
        n_confident = int(confident.sum())
        if n_confident == 0:
            return None, 0
        if self.config.crop:
            segments0, segments1 = self.crop(segments0, segments1)
            returns = segment_returns(segments0 + segments1)
            logits = returns[n:] - returns[:n]
        losses = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return self.config.weight * (losses * confident).mean(), n_confident
