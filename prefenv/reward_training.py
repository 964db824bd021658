"""Bradley-Terry training of reward models from pairwise comparisons.

One trainer serves every :class:`prefenv.reward_models.RewardModel`: a segment's predicted return
is the sum of its step rewards, and the probability that segment 1 is preferred is
``sigmoid(R1 - R0)`` (Bradley-Terry). The loss is the cross-entropy between that probability and
the label (1 = segment 1 preferred, 0 = segment 0, 0.5 = equally good).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prefenv.records import Comparison
from prefenv.reward_models import (
    RewardEnsemble,
    RewardModelError,
    SegmentBatch,
    _module_device,
    check_finite,
)

__all__ = [
    "bradley_terry_loss",
    "RewardTrainConfig",
    "MemberTrainMetrics",
    "RewardTrainMetrics",
    "train_reward_model",
    "evaluate_reward_model",
    "split_comparisons",
    "training_metrics",
]

_EVAL_CHUNK = 1024  # pairs per no-grad forward when evaluating


def bradley_terry_loss(
    returns0: Tensor,
    returns1: Tensor,
    labels: Tensor,
    margin: float | Tensor = 0.0,
    centering_coef: float = 0.0,
) -> Tensor:
    """Mean Bradley-Terry cross-entropy over a batch of pairs.

    ``loss = -p log sigmoid(R1 - R0 - m) - (1 - p) log sigmoid(R0 - R1 - m)
    + c * mean((R0 + R1)^2)``, with ``p = labels`` the probability that segment 1 is preferred.
    For a hard label this is ``-log sigmoid(R_w - R_l - m)``; a tie (p = 0.5) pulls R0 and R1
    together. The centring term (TRL uses c = 1e-2) keeps returns near zero.

    Args:
        returns0: ``[B]`` predicted returns of the first segments.
        returns1: ``[B]`` predicted returns of the second segments.
        labels: ``[B]`` soft labels in [0, 1].
        margin: the preferred segment must win by this much (scalar or ``[B]``).
        centering_coef: weight ``c`` of the centring term.
    """
    logits = returns1 - returns0
    labels = labels.to(logits.dtype)
    loss = -labels * F.logsigmoid(logits - margin) - (1.0 - labels) * F.logsigmoid(-logits - margin)
    loss = loss.mean()
    if centering_coef:
        loss = loss + centering_coef * ((returns0 + returns1) ** 2).mean()
    return loss


def _accuracy(returns0: Tensor, returns1: Tensor, labels: Tensor) -> float:
    """Share of non-tie pairs where sign(R1 - R0) agrees with the label (NaN if none)."""
    decided = labels != 0.5
    if not bool(decided.any()):
        return math.nan
    agree = (returns1 > returns0) == (labels > 0.5)
    agree &= returns1 != returns0
    return float(agree[decided].float().mean())


@dataclass(frozen=True)
class RewardTrainConfig:
    """Hyperparameters of :func:`train_reward_model` (defaults follow B-Pref: Adam, lr 3e-4)."""

    lr: float = 3e-4
    """Adam(W) learning rate."""
    batch_size: int = 128
    """Comparisons per gradient step."""
    max_epochs: int = 200
    """Upper bound on passes over the training comparisons."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW); 0 is plain Adam."""
    val_fraction: float = 0.1
    """Share of the comparisons held out for early stopping when no validation set is given."""
    patience: int = 10
    """Epochs without a validation-loss improvement before stopping (best weights are restored)."""
    bootstrap: bool = True
    """Train each ensemble member on its own bootstrap resample of the training comparisons."""
    seed: int = 0
    """Seed of the split, the bootstrap resamples and the minibatch order."""
    progress: bool = False
    """Show a tqdm progress bar over epochs."""
    margin: float = 0.0
    """Bradley-Terry margin (see :func:`bradley_terry_loss`)."""
    centering_coef: float = 0.0
    """Weight of the return-centring term (TRL: 1e-2)."""
    max_grad_norm: float = 0.0
    """Clip the gradient's global norm to this before each step; 0 disables clipping."""

    def __post_init__(self) -> None:
        checks = [
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.max_grad_norm >= 0, f"max_grad_norm must be >= 0, got {self.max_grad_norm}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.max_epochs >= 1, f"max_epochs must be >= 1, got {self.max_epochs}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (
                0 <= self.val_fraction < 1,
                f"val_fraction must be in [0, 1), got {self.val_fraction}",
            ),
            (self.patience >= 1, f"patience must be >= 1, got {self.patience}"),
            (self.margin >= 0, f"margin must be >= 0, got {self.margin}"),
            (self.centering_coef >= 0, f"centering_coef must be >= 0, got {self.centering_coef}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"RewardTrainConfig: {message}")


@dataclass(frozen=True)
class MemberTrainMetrics:
    """How one network (an ensemble member, or the single model) trained."""

    train_loss: float
    val_loss: float
    val_accuracy: float
    epochs: int
    best_epoch: int


@dataclass(frozen=True)
class RewardTrainMetrics:
    """Result of :func:`train_reward_model`; losses and accuracies of the final (restored) model.

    Accuracies count non-tie pairs only; ``val_*`` are NaN when there is no validation split.
    """

    train_loss: float
    val_loss: float
    train_accuracy: float
    val_accuracy: float
    epochs: int
    n_train: int
    n_val: int
    members: tuple[MemberTrainMetrics, ...]
    seconds: float


class _Pairs:
    """Comparisons pre-stacked into tensors once; minibatches are index lookups."""

    def __init__(self, comparisons: Sequence[Comparison], device: torch.device) -> None:
        self.segments0 = SegmentBatch.from_segments([c.segment0 for c in comparisons], device)
        self.segments1 = SegmentBatch.from_segments([c.segment1 for c in comparisons], device)
        labels = [c.label for c in comparisons]
        self.labels = torch.tensor(labels, dtype=torch.float32, device=device)

    def __len__(self) -> int:
        return len(self.labels)

    def returns(self, model: nn.Module, index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``([b], [b])`` predicted returns of both sides, one forward pass when lengths match."""
        s0, s1 = self.segments0, self.segments1
        if index is not None:
            s0, s1 = s0.take(index), s1.take(index)
        if s0.acts.shape[1] != s1.acts.shape[1]:
            return s0.sum_steps(model(*s0.flat())), s1.sum_steps(model(*s1.flat()))
        if s0.mask is None and s1.mask is None:
            mask = None
        else:
            ones = torch.ones(s0.acts.shape[:2], device=s0.acts.device)
            mask = torch.cat([ones if s.mask is None else s.mask for s in (s0, s1)])
        both = SegmentBatch(*(torch.cat([a, b]) for a, b in zip(s0[:3], s1[:3], strict=True)), mask)
        returns = both.sum_steps(model(*both.flat()))
        return returns[: len(s0)], returns[len(s0) :]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, config: RewardTrainConfig) -> tuple[float, float]:
        """``(loss, accuracy)`` over all pairs, in chunks, without gradients."""
        if len(self) == 0:
            return math.nan, math.nan
        chunks = torch.arange(len(self), device=self.labels.device).split(_EVAL_CHUNK)
        returns = [self.returns(model, chunk) for chunk in chunks]
        returns0 = torch.cat([r[0] for r in returns])
        returns1 = torch.cat([r[1] for r in returns])
        check_finite(torch.cat([returns0, returns1]))
        loss = bradley_terry_loss(
            returns0, returns1, self.labels, config.margin, config.centering_coef
        )
        return float(loss), _accuracy(returns0, returns1, self.labels)


class _EmptyPairs(_Pairs):
    """No validation split: evaluates to NaN and has length 0."""

    def __init__(self, device: torch.device) -> None:
        self.labels = torch.zeros(0, device=device)


def _labelled(comparisons: Sequence[Comparison]) -> list[Comparison]:
    return [c for c in comparisons if c.label is not None]


def _training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    pairs: _Pairs,
    index: Tensor,
    config: RewardTrainConfig,
) -> float:
    returns0, returns1 = pairs.returns(model, index)
    loss = bradley_terry_loss(
        returns0, returns1, pairs.labels[index], config.margin, config.centering_coef
    )
    if not torch.isfinite(loss):
        check_finite(torch.cat([returns0, returns1]).detach())
        raise RewardModelError(
            "Bradley-Terry loss is NaN/inf: lower the learning rate or check the labels"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), config.max_grad_norm)
    optimizer.step()
    return loss.item()


def _train_member(
    model: nn.Module,
    train: _Pairs,
    sample: np.ndarray,
    val: _Pairs,
    config: RewardTrainConfig,
    rng: np.random.Generator,
    progress: object | None,
) -> MemberTrainMetrics:
    """Minibatch Adam over ``train[sample]`` with early stopping on ``val`` (or train) loss."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    device = train.labels.device
    best_loss, best_epoch, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
    epoch = 0
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        order = torch.from_numpy(rng.permutation(sample)).to(device)
        epoch_losses = [
            _training_step(model, optimizer, train, index, config)
            for index in order.split(config.batch_size)
        ]
        model.eval()
        monitored = val.evaluate(model, config)[0] if len(val) else float(np.mean(epoch_losses))
        if progress is not None:
            progress.update(1)  # type: ignore[attr-defined]
            progress.set_postfix(train=np.mean(epoch_losses), val=monitored)  # type: ignore[attr-defined]
        if monitored < best_loss - 1e-6:
            best_loss, best_epoch = monitored, epoch
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= config.patience:
            break
    model.load_state_dict(best_state)
    train_loss, _ = train.evaluate(model, config)
    val_loss, val_accuracy = val.evaluate(model, config)
    return MemberTrainMetrics(train_loss, val_loss, val_accuracy, epoch, best_epoch)


def _split(
    comparisons: list[Comparison], config: RewardTrainConfig, rng: np.random.Generator
) -> tuple[list[Comparison], list[Comparison]]:
    n_val = int(len(comparisons) * config.val_fraction)
    if n_val == 0 or n_val == len(comparisons):
        return comparisons, []
    order = rng.permutation(len(comparisons))
    return [comparisons[i] for i in order[n_val:]], [comparisons[i] for i in order[:n_val]]


def split_comparisons(
    comparisons: Sequence[Comparison],
    config: RewardTrainConfig,
    rng: np.random.Generator,
    val_comparisons: Sequence[Comparison] | None = None,
) -> tuple[list[Comparison], list[Comparison]]:
    """``(train, validation)`` labelled comparisons: ``val_comparisons`` when given, else a random
    ``config.val_fraction`` share held out. Skipped comparisons are dropped.

    Raises:
        ValueError: none of ``comparisons`` is labelled.
    """
    labelled = _labelled(comparisons)
    if not labelled:
        raise ValueError(
            f"no labelled comparisons to train on ({len(comparisons)} given, all skipped or "
            "none): collect more feedback or lower the teacher's skip threshold"
        )
    if val_comparisons is None:
        return _split(labelled, config, rng)
    return labelled, _labelled(val_comparisons)


class EvaluablePairs(Protocol):
    """Training pairs of any reward-model kind: ``len`` and ``(loss, accuracy)`` of a model."""

    def __len__(self) -> int: ...

    def evaluate(self, model: Any, config: RewardTrainConfig) -> tuple[float, float]: ...


def training_metrics(
    model: Any,
    train: EvaluablePairs,
    val: EvaluablePairs,
    config: RewardTrainConfig,
    members: Sequence[MemberTrainMetrics],
    started: float,
) -> RewardTrainMetrics:
    """The :class:`RewardTrainMetrics` of a trained ``model`` (put in eval mode)."""
    model.eval()
    train_loss, train_accuracy = train.evaluate(model, config)
    val_loss, val_accuracy = val.evaluate(model, config)
    return RewardTrainMetrics(
        train_loss=train_loss,
        val_loss=val_loss,
        train_accuracy=train_accuracy,
        val_accuracy=val_accuracy,
        epochs=max(m.epochs for m in members),
        n_train=len(train),
        n_val=len(val),
        members=tuple(members),
        seconds=time.perf_counter() - started,
    )


def _fit_normalizer(model: nn.Module, pairs: _Pairs) -> None:
    if not hasattr(model, "fit_normalizer"):
        return
    steps = [s.flat() for s in (pairs.segments0, pairs.segments1)]
    masks = [s.mask for s in (pairs.segments0, pairs.segments1)]
    keep = [None if m is None else m.reshape(-1) > 0 for m in masks]
    obs, acts, next_obs = (
        torch.cat([x[i] if k is None else x[i][k] for x, k in zip(steps, keep, strict=True)])
        .cpu()
        .numpy()
        for i in range(3)
    )
    model.fit_normalizer(obs, acts, next_obs)


def train_reward_model(
    model: nn.Module,
    comparisons: Sequence[Comparison],
    config: RewardTrainConfig = RewardTrainConfig(),  # noqa: B008 (frozen, immutable)
    val_comparisons: Sequence[Comparison] | None = None,
) -> RewardTrainMetrics:
    """Fit ``model`` in place to labelled comparisons with the Bradley-Terry loss.

    Skipped comparisons (label ``None``) are ignored. Unless ``val_comparisons`` is given, a
    ``config.val_fraction`` share is held out for early stopping. The model's input normaliser (if
    it has ``fit_normalizer``) is fitted to the training segments first. A
    :class:`~prefenv.reward_models.RewardEnsemble` trains each member separately, on its own
    bootstrap resample when ``config.bootstrap``.

    Raises:
        ValueError: no labelled comparisons.
        TypeError: ``model`` is not an ``nn.Module`` (wrap it with ``as_reward_model``).
        RewardModelError: the loss became NaN/inf.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"train_reward_model needs a torch nn.Module, got {type(model).__name__}: wrap your "
            "module with prefenv.reward_models.as_reward_model"
        )
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    train_list, val_list = split_comparisons(comparisons, config, rng, val_comparisons)
    device = _module_device(model)
    train = _Pairs(train_list, device)
    val = _Pairs(val_list, device) if val_list else _EmptyPairs(device)
    _fit_normalizer(model, train)

    networks = list(model.members) if isinstance(model, RewardEnsemble) else [model]
    bootstrap = config.bootstrap and isinstance(model, RewardEnsemble)
    progress = None
    if config.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=config.max_epochs * len(networks), desc="reward model", unit="epoch")
    members = []
    for network, member_rng in zip(networks, rng.spawn(len(networks)), strict=True):
        n = len(train)
        sample = member_rng.integers(0, n, size=n) if bootstrap else np.arange(n)
        members.append(_train_member(network, train, sample, val, config, member_rng, progress))
    if progress is not None:
        progress.close()
    return training_metrics(model, train, val, config, members, started)


def evaluate_reward_model(
    model: nn.Module, comparisons: Sequence[Comparison]
) -> tuple[float, float]:
    """``(Bradley-Terry loss, accuracy on non-tie pairs)`` of ``model`` on labelled comparisons."""
    labelled = _labelled(comparisons)
    if not labelled:
        raise ValueError("no labelled comparisons to evaluate (all skipped or none given)")
    device = _module_device(model)
    was_training = model.training
    model.eval()
    try:
        return _Pairs(labelled, device).evaluate(model, RewardTrainConfig())
    finally:
        model.train(was_training)
