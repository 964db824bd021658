"""Bradley-Terry training of text reward models from text comparisons.

The same loss as every other prefenv reward model
(:func:`prefenv.reward_training.bradley_terry_loss`): the text score of each side is its
one-step segment return, ``P(segment1 preferred) = sigmoid(s1 - s0)``, and the cross-entropy
against the label uses soft labels for ties (0.5); skipped comparisons are ignored. A
comparison's texts are ``segment.context["prompt"]`` and ``segment.context["completion"]``
(what :func:`envs.text.feedback.text_segment` and :func:`prefenv.jsonl.import_jsonl` write).
Results come back as the foundation's :class:`~prefenv.reward_training.RewardTrainMetrics`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from envs.text.feedback import segment_texts
from envs.text.reward_model import TextRewardEnsemble, TextRewardModel
from prefenv.records import Comparison
from prefenv.reward_training import (
    MemberTrainMetrics,
    RewardTrainConfig,
    RewardTrainMetrics,
    bradley_terry_loss,
    split_comparisons,
    training_metrics,
)

__all__ = [
    "TextPairs",
    "TEXT_REWARD_DEFAULTS",
    "text_reward_config",
    "evaluate_text_reward_model",
    "train_text_reward_model",
]

_EVAL_BATCH = 128


def text_reward_config(**overrides: Any) -> RewardTrainConfig:
    """The core :class:`~prefenv.reward_training.RewardTrainConfig` with defaults for the tiny
    text reward models: AdamW lr 1e-3 (use ~2e-5 for a pretrained encoder), weight decay 0.01,
    batch 32, at most 10 epochs with early stopping (patience 3) on the held-out loss, gradient
    clip 1.0. ``overrides`` replace any field, e.g. ``text_reward_config(max_epochs=8)``."""
    return RewardTrainConfig(**{**TEXT_REWARD_DEFAULTS, **overrides})


TEXT_REWARD_DEFAULTS: dict[str, Any] = {
    "lr": 1e-3, "weight_decay": 0.01, "batch_size": 32, "max_epochs": 10, "patience": 3,
    "max_grad_norm": 1.0,
}  # fmt: skip
"""Field values :func:`text_reward_config` starts from."""


class TextPairs:
    """Labelled text comparisons as aligned lists (skipped comparisons dropped).

    Attributes:
        prompts0: ``N`` prompts of the first-shown segments.
        completions0: ``N`` first-shown completions.
        prompts1: ``N`` prompts of the second-shown segments (usually equal to ``prompts0``).
        completions1: ``N`` second-shown completions.
        labels: ``[N]`` float32 labels (1 = second preferred, 0 = first, 0.5 = tie).
    """

    def __init__(self, comparisons: Sequence[Comparison]) -> None:
        self.prompts0: list[str] = []
        self.completions0: list[str] = []
        self.prompts1: list[str] = []
        self.completions1: list[str] = []
        labels = []
        for i, comparison in enumerate(comparisons):
            if comparison.label is None:
                continue
            for side, (prompts, completions) in enumerate(
                ((self.prompts0, self.completions0), (self.prompts1, self.completions1))
            ):
                segment = comparison.segment1 if side else comparison.segment0
                prompt, completion = segment_texts(segment, f"comparison {i}, segment{side}")
                prompts.append(prompt)
                completions.append(completion)
            labels.append(comparison.label)
        self.labels = np.asarray(labels, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.labels)

    def scores(
        self, model: TextRewardModel | TextRewardEnsemble, index: np.ndarray
    ) -> tuple[Tensor, Tensor]:
        """``([b], [b])`` scores of both sides of the pairs at ``index``, in one forward pass."""
        ids = [int(i) for i in index]
        prompts = [self.prompts0[i] for i in ids] + [self.prompts1[i] for i in ids]
        completions = [self.completions0[i] for i in ids] + [self.completions1[i] for i in ids]
        scores = model.scores(prompts, completions)
        return scores[: len(ids)], scores[len(ids) :]

    @torch.no_grad()
    def evaluate(
        self, model: TextRewardModel | TextRewardEnsemble, config: RewardTrainConfig
    ) -> tuple[float, float]:
        """``(loss, accuracy on non-tie pairs)`` in eval mode; NaN for no pairs."""
        if len(self) == 0:
            return math.nan, math.nan
        members = model.members if isinstance(model, TextRewardEnsemble) else [model]
        modes = [m.model.training for m in members]
        model.eval()
        try:
            chunks = np.array_split(np.arange(len(self)), math.ceil(len(self) / _EVAL_BATCH))
            parts = [self.scores(model, chunk) for chunk in chunks]
        finally:
            for member, mode in zip(members, modes, strict=True):
                member.train(mode)
        scores0 = torch.cat([p[0] for p in parts]).float()
        scores1 = torch.cat([p[1] for p in parts]).float()
        labels = torch.from_numpy(self.labels).to(scores0.device)
        loss = bradley_terry_loss(scores0, scores1, labels, config.margin, config.centering_coef)
        return float(loss), _accuracy(scores0, scores1, labels)


def _accuracy(scores0: Tensor, scores1: Tensor, labels: Tensor) -> float:
    """Share of non-tie pairs where ``sign(s1 - s0)`` agrees with the label (NaN if none)."""
    decided = labels != 0.5
    if not bool(decided.any()):
        return math.nan
    agree = ((scores1 > scores0) == (labels > 0.5)) & (scores1 != scores0)
    return float(agree[decided].float().mean())


def _train_member(
    model: TextRewardModel,
    train: TextPairs,
    sample: np.ndarray,
    val: TextPairs,
    config: RewardTrainConfig,
    rng: np.random.Generator,
    progress: object | None,
) -> MemberTrainMetrics:
    """AdamW epochs over ``train[sample]``; keeps the best-validation-loss weights if asked."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    labels = torch.from_numpy(train.labels).to(model.device)
    best_loss, best_epoch, best_state = math.inf, 0, None
    restore = len(val) > 0
    epoch = 0
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        epoch_losses = []
        for index in np.array_split(
            rng.permutation(sample), max(1, math.ceil(len(sample) / config.batch_size))
        ):
            scores0, scores1 = train.scores(model, index)
            loss = bradley_terry_loss(
                scores0,
                scores1,
                labels[torch.from_numpy(index)],
                config.margin,
                config.centering_coef,
            )
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    "Bradley-Terry loss is NaN/inf: lower the learning rate or check the labels"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(list(model.parameters()), config.max_grad_norm)
            optimizer.step()
            epoch_losses.append(loss.item())
        monitored = val.evaluate(model, config)[0] if len(val) else float(np.mean(epoch_losses))
        if progress is not None:
            progress.update(1)  # type: ignore[attr-defined]
            progress.set_postfix(train=np.mean(epoch_losses), val=monitored)  # type: ignore[attr-defined]
        if monitored < best_loss - 1e-6:
            best_loss, best_epoch = monitored, epoch
            if restore:
                best_state = copy.deepcopy(model.model.state_dict())
        elif restore and epoch - best_epoch >= config.patience:
            break  # early stopping on the held-out loss, as the core trainer does
    if best_state is not None:
        model.model.load_state_dict(best_state)
    model.eval()
    train_loss, _ = train.evaluate(model, config)
    val_loss, val_accuracy = val.evaluate(model, config)
    return MemberTrainMetrics(train_loss, val_loss, val_accuracy, epoch, best_epoch)


def train_text_reward_model(
    model: TextRewardModel | TextRewardEnsemble,
    comparisons: Sequence[Comparison],
    config: RewardTrainConfig = text_reward_config(),  # noqa: B008 (frozen)
    rng: np.random.Generator | None = None,
    val_comparisons: Sequence[Comparison] | None = None,
) -> RewardTrainMetrics:
    """Fit a text reward model (or each ensemble member) in place with the Bradley-Terry loss.

    Args:
        model: a :class:`TextRewardModel` or :class:`TextRewardEnsemble`.
        comparisons: text comparisons; skipped ones (label ``None``) are ignored.
        config: hyperparameters.
        rng: source of the split, bootstrap and minibatch order (and of the torch seed);
            None = ``np.random.default_rng(config.seed)``.
        val_comparisons: a fixed validation set; None = hold out ``config.val_fraction``.

    Returns:
        Losses and accuracies (non-tie pairs) of the final model; ``val_*`` NaN without a split.

    Raises:
        ValueError: no labelled comparisons, or a comparison without text context.
        FloatingPointError: the loss became NaN/inf.
    """
    if not isinstance(model, TextRewardModel | TextRewardEnsemble):
        raise TypeError(
            f"train_text_reward_model needs a TextRewardModel or TextRewardEnsemble, got "
            f"{type(model).__name__}: numeric reward models train with "
            "prefenv.reward_training.train_reward_model"
        )
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed) if rng is None else rng
    train_list, val_list = split_comparisons(comparisons, config, rng, val_comparisons)
    train, val = TextPairs(train_list), TextPairs(val_list)

    members = model.members if isinstance(model, TextRewardEnsemble) else [model]
    bootstrap = config.bootstrap and isinstance(model, TextRewardEnsemble)
    progress = None
    if config.progress:
        from tqdm.auto import tqdm

        progress = tqdm(
            total=config.max_epochs * len(members), desc="text reward model", unit="epoch"
        )
    results = []
    for member, member_rng in zip(members, rng.spawn(len(members)), strict=True):
        n = len(train)
        sample = member_rng.integers(0, n, size=n) if bootstrap else np.arange(n)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(member_rng.integers(2**31)))
            results.append(_train_member(member, train, sample, val, config, member_rng, progress))
    if progress is not None:
        progress.close()
    return training_metrics(model, train, val, config, results, started)


def evaluate_text_reward_model(
    model: TextRewardModel | TextRewardEnsemble, comparisons: Sequence[Comparison]
) -> tuple[float, float]:
    """``(Bradley-Terry loss, accuracy on non-tie pairs)`` on labelled text comparisons.

    Same return as :func:`prefenv.reward_training.evaluate_reward_model`.
    """
    pairs = TextPairs(comparisons)
    if len(pairs) == 0:
        raise ValueError("no labelled comparisons to evaluate (all skipped or none given)")
    return pairs.evaluate(model, text_reward_config())
