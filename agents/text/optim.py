"""The optimisation loop the causal-LM trainers share (SFT, DPO): one config, one set of steps.

:class:`LMOptimConfig` holds what every LM fine-tuning stage needs: AdamW's learning rate and
weight decay, linear warm-up, gradient clipping, batch size, epochs or a step budget, the longest
sequence, seeding and the progress bar. :class:`~agents.text.sft.TextSFTConfig` and
:class:`~agents.text.dpo.DPOConfig` hold one as their ``optim`` field (composition) next to their
own settings. The learning rate and the batch size have no default here: each trainer states its
own (:data:`SFT_OPTIM`, :data:`DPO_OPTIM`), and a variant is spelt
``dataclasses.replace(SFT_OPTIM, max_steps=150)``, so a changed field never silently brings
another trainer's learning rate along.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "DPO_OPTIM",
    "LMOptimConfig",
    "LossHistory",
    "SFT_OPTIM",
    "batch_indices",
    "make_optimizer",
    "n_steps",
    "optimizer_step",
    "progress_bar",
    "save_model",
]


@dataclass(frozen=True)
class LMOptimConfig:
    """Optimisation settings shared by the LM trainers (validated on construction)."""

    learning_rate: float
    """Peak AdamW learning rate."""
    batch_size: int
    """Examples per optimiser step (SFT: demonstrations; DPO: pairs, i.e. 2x sequences)."""
    epochs: int = 1
    """Passes over the data (ignored when ``max_steps`` is set)."""
    max_steps: int | None = None
    """Stop after this many optimiser steps (cycling through the data as needed)."""
    max_length: int = 128
    """Longest ``prompt + completion`` in tokens (BOS/EOS included); longer ones are an error."""
    seed: int = 0
    """Seeds the batch order (the model's weights are the caller's)."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up from 0 over this many steps, then constant."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient's global norm to this (None: no clipping)."""
    add_bos: bool = True
    """Prepend the tokenizer's BOS to each prompt (as the text envs do)."""
    shuffle: bool = True
    """Shuffle the data every epoch."""
    progress: bool = False
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        checks = [
            (
                self.learning_rate > 0 and math.isfinite(self.learning_rate),
                f"learning_rate must be a positive number, got {self.learning_rate}",
            ),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (
                self.max_steps is None or self.max_steps >= 1,
                f"max_steps must be >= 1 or None, got {self.max_steps}",
            ),
            (self.max_length >= 2, f"max_length must be >= 2 tokens, got {self.max_length}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (
                self.max_grad_norm is None or self.max_grad_norm > 0,
                f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"LMOptimConfig: {message}")


SFT_OPTIM = LMOptimConfig(learning_rate=5e-4, batch_size=16)
"""Supervised fine-tuning defaults (the tiny default GPT-2 learns fast at 5e-4)."""

DPO_OPTIM = LMOptimConfig(learning_rate=5e-5, batch_size=32)
"""DPO defaults (TRL uses 1e-6 for billion-parameter models; tiny models need more)."""


def batch_indices(n: int, optim: LMOptimConfig) -> Iterator[np.ndarray]:
    """Index batches: ``optim.epochs`` passes, or ``optim.max_steps`` batches cycling the data.

    The last batch of a pass may be smaller; each pass is reshuffled with a seeded generator.
    """
    rng = np.random.default_rng(optim.seed)
    steps = 0
    epoch = 0
    while (optim.max_steps is None and epoch < optim.epochs) or (
        optim.max_steps is not None and steps < optim.max_steps
    ):
        order = rng.permutation(n) if optim.shuffle else np.arange(n)
        for start in range(0, n, optim.batch_size):
            if optim.max_steps is not None and steps >= optim.max_steps:
                return
            yield order[start : start + optim.batch_size]
            steps += 1
        epoch += 1


def n_steps(n: int, optim: LMOptimConfig) -> int:
    """Optimiser steps :func:`batch_indices` yields over ``n`` examples."""
    if optim.max_steps is not None:
        return optim.max_steps
    return optim.epochs * math.ceil(n / optim.batch_size)


def make_optimizer(
    model: nn.Module, optim: LMOptimConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over the trainable parameters, with linear warm-up then a constant rate."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (all requires_grad=False)")
    optimizer = torch.optim.AdamW(params, lr=optim.learning_rate, weight_decay=optim.weight_decay)
    warmup = optim.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
    )
    return optimizer, scheduler


def optimizer_step(
    model: nn.Module,
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    max_grad_norm: float | None,
) -> None:
    """Backward, clip the trainable parameters' global gradient norm, step, advance the schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(
            [p for p in model.parameters() if p.requires_grad], max_grad_norm
        )
    optimizer.step()
    scheduler.step()


def save_model(model: nn.Module, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path) -> None:
    """``save_pretrained`` model and tokenizer into ``out_dir`` (created)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def progress_bar(total: int, enabled: bool, desc: str) -> Any:
    """A tqdm bar (a disabled one when ``enabled`` is false: same calls, no output)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, leave=False)


@dataclass
class LossHistory:
    """The per-step losses of an LM trainer (SFT, DPO) and the summaries read off them.

    Attributes:
        losses: the loss of every optimiser step, in order.
    """

    losses: list[float] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.losses)

    @property
    def first_loss(self) -> float:
        return self.losses[0] if self.losses else float("nan")

    @property
    def final_loss(self) -> float:
        """Mean loss of the last (up to) 5 steps."""
        return float(np.mean(self.losses[-5:])) if self.losses else float("nan")
