"""Settings of text reward models: the tiny BERT's architecture and the training defaults.

:class:`TextRewardModelConfig` sizes the encoder :meth:`envs.text.reward_model.TextRewardModel.build`
creates. Text reward models train with the one Bradley-Terry trainer
(:func:`prefenv.reward_training.train_reward_model`); :func:`text_reward_config` is its
:class:`~prefenv.reward_training.RewardTrainConfig` with defaults that suit them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefenv.reward_training import RewardTrainConfig

__all__ = ["TEXT_REWARD_DEFAULTS", "TextRewardModelConfig", "text_reward_config"]


TEXT_REWARD_DEFAULTS: dict[str, Any] = {
    "lr": 1e-3, "weight_decay": 0.01, "batch_size": 32, "max_epochs": 10, "patience": 3,
    "max_grad_norm": 1.0, "eval_batch_size": 128,
}  # fmt: skip
"""Field values :func:`text_reward_config` starts from."""


def text_reward_config(**overrides: Any) -> RewardTrainConfig:
    """The core :class:`~prefenv.reward_training.RewardTrainConfig` with defaults for the tiny
    text reward models: AdamW lr 1e-3 (use ~2e-5 for a pretrained encoder), weight decay 0.01,
    batch 32, at most 10 epochs with early stopping (patience 3) on the held-out loss, gradient
    clip 1.0, 128 pairs per evaluation forward. ``overrides`` replace any field, e.g.
    ``text_reward_config(max_epochs=8)``."""
    return RewardTrainConfig(**{**TEXT_REWARD_DEFAULTS, **overrides})


@dataclass(frozen=True)
class TextRewardModelConfig:
    """Architecture of the tiny BERT built by :meth:`TextRewardModel.build`."""

    hidden_size: int = 64
    """Model width."""
    num_layers: int = 2
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads (must divide hidden_size)."""
    intermediate_size: int = 128
    """Feed-forward width."""
    max_length: int = 128
    """Longest input in tokens (prompt + completion + 3 specials); longer texts are truncated."""

    def __post_init__(self) -> None:
        for attr in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_length"):
            if getattr(self, attr) < 1:
                raise ValueError(
                    f"TextRewardModelConfig: {attr} must be >= 1, got {getattr(self, attr)}"
                )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"TextRewardModelConfig: num_heads ({self.num_heads}) must divide hidden_size "
                f"({self.hidden_size})"
            )
        if self.max_length < 4:
            raise ValueError(
                f"TextRewardModelConfig: max_length must be >= 4, got {self.max_length}"
            )
