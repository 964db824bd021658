"""Stage 1 of text RLHF: supervised fine-tuning (SFT) of a causal LM on demonstrations.

A demonstration is a ``(prompt, completion)`` pair, or a plain text (an empty prompt: every
token is learnt). Each is encoded as ``[BOS] + prompt + completion + [EOS]`` (BOS only if the
tokenizer has one and ``add_bos``), the same layout the text envs and the default LM's
pretraining use, and the loss is the mean next-token cross-entropy over *completion* tokens
only: prompt and padding positions carry the label ``-100`` that Hugging Face losses ignore.
Batches are right-padded (the attention mask hides the padding), so absolute position
embeddings see the same positions as for an unpadded sequence.

Works with any Hugging Face causal LM + tokenizer pair (checked with
:func:`envs.text.default_model.check_vocab`); the result is the reference policy of PPO-KL and
the starting point and reference of DPO (:mod:`agents.text.dpo`).

Example::

    model, tokenizer = envs.text.load_lm("runs/default_lm")
    metrics = train_text_sft(model, tokenizer, [("The plot was", " great fun.")],
                             TextSFTConfig(epochs=3), out_dir="runs/sft_lm")
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from prefenv.text_records import check_vocab

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "Demonstration",
    "SFTBatch",
    "TextSFTConfig",
    "TextSFTMetrics",
    "collate_sft",
    "encode_demonstrations",
    "encode_prompt_completion",
    "sft_loss",
    "train_text_sft",
]

Demonstration = tuple[str, str] | str
"""A ``(prompt, completion)`` pair, or a plain text (empty prompt)."""

IGNORE_INDEX = -100
"""Label of positions the loss skips (prompt and padding), the Hugging Face convention."""


def encode_prompt_completion(
    tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str, add_bos: bool = True
) -> tuple[list[int], list[int]]:
    """Token ids of ``[BOS] + prompt`` and of ``completion + [EOS]``.

    The two halves are tokenized separately (as TRL does for the completion), so the prompt's
    ids never depend on the completion. With the default byte-level tokenizer a completion that
    starts with a space (``" great fun."``) tokenizes exactly as inside the joined text.

    Args:
        tokenizer: any Hugging Face tokenizer; special tokens are not added by the tokenizer
            (``add_special_tokens=False``), BOS and EOS are added here explicitly.
        prompt: the context; may be empty.
        completion: what the model learns to write after it; may be empty (then only EOS).
        add_bos: prepend ``tokenizer.bos_token_id`` (skipped when the tokenizer has none).

    Returns:
        ``(prompt_ids, completion_ids)``; ``completion_ids`` ends with EOS (if the tokenizer has
        one).
    """
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"]) if prompt else []
    if add_bos and tokenizer.bos_token_id is not None:
        prompt_ids.insert(0, tokenizer.bos_token_id)
    completion_ids = (
        list(tokenizer(completion, add_special_tokens=False)["input_ids"]) if completion else []
    )
    if tokenizer.eos_token_id is not None:
        completion_ids.append(tokenizer.eos_token_id)
    return prompt_ids, completion_ids


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id padding is written with (pad, else EOS, else 0); padding is masked anyway."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def check_length(
    prompt_ids: Sequence[int], completion_ids: Sequence[int], max_length: int, what: str
) -> None:
    """Raise ``ValueError`` if ``prompt + completion`` is longer than ``max_length`` tokens."""
    total = len(prompt_ids) + len(completion_ids)
    if total > max_length:
        raise ValueError(
            f"{what} is {total} tokens long ({len(prompt_ids)} prompt + {len(completion_ids)} "
            f"completion incl. BOS/EOS), more than max_length={max_length}: raise max_length (up "
            "to the model's context size) or shorten the text"
        )


def check_context(model: nn.Module, longest: int) -> None:
    """Raise ``ValueError`` if ``longest`` tokens exceed the model's context (when it has one)."""
    config = getattr(model, "config", None)
    context = getattr(config, "n_positions", None) or getattr(
        config, "max_position_embeddings", None
    )
    if isinstance(context, int) and longest > context:
        raise ValueError(
            f"the longest sequence is {longest} tokens but the model's context holds {context}: "
            f"set max_length <= {context} and shorten the texts"
        )


@dataclass(frozen=True)
class SFTBatch:
    """One right-padded SFT batch.

    Attributes:
        input_ids: ``[B, L]`` int64 token ids.
        attention_mask: ``[B, L]`` int64, 1 on real tokens.
        labels: ``[B, L]`` int64, ``input_ids`` on completion tokens, ``-100`` elsewhere.
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor


def encode_demonstrations(
    tokenizer: PreTrainedTokenizerBase,
    demonstrations: Sequence[Demonstration],
    max_length: int,
    add_bos: bool = True,
) -> list[tuple[list[int], list[int]]]:
    """Encode demonstrations as ``(prompt_ids, completion_ids)`` (see :func:`encode_prompt_completion`).

    Raises:
        ValueError: no demonstrations, a malformed one, or one longer than ``max_length``.
    """
    if len(demonstrations) == 0:
        raise ValueError(
            "no demonstrations to fine-tune on: pass (prompt, completion) pairs or texts"
        )
    encoded = []
    for index, demo in enumerate(demonstrations):
        if isinstance(demo, str):
            prompt, completion = "", demo
        elif isinstance(demo, Sequence) and len(demo) == 2:
            prompt, completion = demo
        else:
            raise ValueError(
                f"demonstration {index} must be a (prompt, completion) pair or a text, got {demo!r}"
            )
        prompt_ids, completion_ids = encode_prompt_completion(
            tokenizer, prompt, completion, add_bos
        )
        if not completion_ids:
            raise ValueError(
                f"demonstration {index} has no completion tokens (empty completion and a "
                "tokenizer without EOS): give it a completion"
            )
        check_length(prompt_ids, completion_ids, max_length, f"demonstration {index}")
        encoded.append((prompt_ids, completion_ids))
    return encoded


def collate_sft(examples: Sequence[tuple[list[int], list[int]]], pad_token_id: int) -> SFTBatch:
    """Right-pad ``(prompt_ids, completion_ids)`` examples into an :class:`SFTBatch`."""
    length = max(len(p) + len(c) for p, c in examples)
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, (prompt, completion) in enumerate(examples):
        n_prompt, n = len(prompt), len(prompt) + len(completion)
        input_ids[row, :n] = torch.tensor(prompt + completion)
        labels[row, n_prompt:n] = torch.tensor(completion)
        attention_mask[row, :n] = 1
    return SFTBatch(input_ids, attention_mask, labels)


def sft_loss(model: nn.Module, batch: SFTBatch) -> Tensor:
    """Mean next-token cross-entropy over the batch's completion tokens (scalar).

    Position ``t``'s logits predict ``labels[t + 1]``; ``-100`` labels (prompt, padding) are
    skipped, so neither the prompt's tokens nor the padding contribute.
    """
    logits = model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
    ).logits
    targets = batch.labels[:, 1:]
    return nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX
    )


@dataclass(frozen=True)
class TextSFTConfig:
    """Supervised fine-tuning settings (validated on construction)."""

    learning_rate: float = 5e-4
    """Peak AdamW learning rate."""
    epochs: int = 1
    """Passes over the demonstrations (ignored when ``max_steps`` is set)."""
    max_steps: int | None = None
    """Stop after this many optimiser steps (cycling through the data as needed)."""
    batch_size: int = 16
    """Demonstrations per step."""
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
    """Shuffle the demonstrations every epoch."""
    progress: bool = False
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        validate_common(self)


def validate_common(config: Any) -> None:
    """Checks shared by the SFT and DPO configs (fields of the same names)."""
    if not (config.learning_rate > 0 and math.isfinite(config.learning_rate)):
        raise ValueError(f"learning_rate must be a positive number, got {config.learning_rate}")
    if config.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {config.epochs}")
    if config.max_steps is not None and config.max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 or None, got {config.max_steps}")
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {config.batch_size}")
    if config.max_length < 2:
        raise ValueError(f"max_length must be >= 2 tokens, got {config.max_length}")
    if config.warmup_steps < 0 or config.weight_decay < 0:
        raise ValueError("warmup_steps and weight_decay must be >= 0")
    if config.max_grad_norm is not None and config.max_grad_norm <= 0:
        raise ValueError(f"max_grad_norm must be > 0 or None, got {config.max_grad_norm}")


@dataclass
class TextSFTMetrics:
    """What :func:`train_text_sft` did.

    Attributes:
        losses: completion-token cross-entropy (nats) of every step, in order.
        n_demonstrations: demonstrations trained on.
        n_tokens: completion tokens per epoch (what the loss averages over).
        seconds: wall time.
    """

    losses: list[float] = field(default_factory=list)
    n_demonstrations: int = 0
    n_tokens: int = 0
    seconds: float = 0.0

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


def batch_indices(
    n: int, batch_size: int, epochs: int, max_steps: int | None, shuffle: bool, seed: int
) -> Iterator[np.ndarray]:
    """Index batches: ``epochs`` passes, or ``max_steps`` batches cycling through the data.

    The last batch of a pass may be smaller; each pass is reshuffled with a seeded generator.
    """
    rng = np.random.default_rng(seed)
    steps = 0
    epoch = 0
    while (max_steps is None and epoch < epochs) or (max_steps is not None and steps < max_steps):
        order = rng.permutation(n) if shuffle else np.arange(n)
        for start in range(0, n, batch_size):
            if max_steps is not None and steps >= max_steps:
                return
            yield order[start : start + batch_size]
            steps += 1
        epoch += 1


def n_steps(n: int, batch_size: int, epochs: int, max_steps: int | None) -> int:
    return max_steps if max_steps is not None else epochs * math.ceil(n / batch_size)


def make_optimizer(
    model: nn.Module, learning_rate: float, weight_decay: float, warmup_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over the trainable parameters, with linear warm-up then a constant rate."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (all requires_grad=False)")
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    )
    return optimizer, scheduler


def optimizer_step(
    model: nn.Module,
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    max_grad_norm: float | None,
) -> None:
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


def train_text_sft(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    demonstrations: Sequence[Demonstration],
    config: TextSFTConfig | None = None,
    out_dir: str | Path | None = None,
) -> TextSFTMetrics:
    """Fine-tune ``model`` in place on demonstrations; loss on completion tokens only.

    Args:
        model: a Hugging Face causal LM (its dropout is used as configured; the model is left
            in eval mode afterwards).
        tokenizer: its tokenizer.
        demonstrations: ``(prompt, completion)`` pairs or plain texts.
        config: training settings (defaults: :class:`TextSFTConfig`).
        out_dir: if given, the fine-tuned model and the tokenizer are written there with
            ``save_pretrained`` (loadable with :func:`envs.text.load_lm`).

    Returns:
        Per-step losses and counts.

    Raises:
        VocabMismatchError: the tokenizer emits ids the model cannot embed.
        ValueError: no demonstrations, or one longer than ``config.max_length``.
    """
    config = config or TextSFTConfig()
    check_vocab(tokenizer, model)
    start = time.perf_counter()
    examples = encode_demonstrations(tokenizer, demonstrations, config.max_length, config.add_bos)
    check_context(model, max(len(p) + len(c) for p, c in examples))
    device = next(model.parameters()).device
    optimizer, scheduler = make_optimizer(
        model, config.learning_rate, config.weight_decay, config.warmup_steps
    )
    metrics = TextSFTMetrics(
        n_demonstrations=len(examples), n_tokens=sum(len(c) for _, c in examples)
    )
    total = n_steps(len(examples), config.batch_size, config.epochs, config.max_steps)
    batches = batch_indices(
        len(examples), config.batch_size, config.epochs, config.max_steps, config.shuffle,
        config.seed,
    )  # fmt: skip
    padding = pad_id(tokenizer)
    model.train()
    with progress_bar(total, config.progress, "SFT") as bar:
        for index in batches:
            batch = collate_sft([examples[i] for i in index], padding)
            batch = SFTBatch(*(t.to(device) for t in vars(batch).values()))
            loss = sft_loss(model, batch)
            optimizer_step(model, loss, optimizer, scheduler, config.max_grad_norm)
            metrics.losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{metrics.losses[-1]:.3f}")
    model.eval()
    metrics.seconds = time.perf_counter() - start
    if out_dir is not None:
        save_model(model, tokenizer, out_dir)
    return metrics


def progress_bar(total: int, enabled: bool, desc: str) -> Any:
    """A tqdm bar (a disabled one when ``enabled`` is false: same calls, no output)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, leave=False)
