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
the starting point and reference of DPO (:mod:`agents.text.dpo`). The optimisation loop (AdamW, warm-up, clipping, batches) is the
one :mod:`agents.text.optim` gives both.

Example::

    model, tokenizer = envs.text.load_lm("runs/default_lm")
    metrics = train_text_sft(model, tokenizer, [("The plot was", " great fun.")],
                             TextSFTConfig(replace(SFT_OPTIM, epochs=3)), out_dir="runs/sft_lm")
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from agents.text.activations import fuse_activations
from agents.text.optim import (
    SFT_OPTIM,
    LMOptimConfig,
    LossHistory,
    batch_indices,
    make_optimizer,
    n_steps,
    optimizer_step,
    progress_bar,
    save_model,
)
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
    """Supervised fine-tuning settings (one config per trainer, as DPO has :class:`~agents.text.dpo.DPOConfig`).

    SFT has no setting of its own beyond the shared optimisation loop; SFT-specific ones (a loss
    on prompt tokens, packing) would sit next to ``optim``.
    """

    optim: LMOptimConfig = SFT_OPTIM
    """Learning rate, batch size, epochs or steps, warm-up, clipping, seeding (see
    :class:`~agents.text.optim.LMOptimConfig`); vary it with ``replace(SFT_OPTIM, ...)``."""

    def __post_init__(self) -> None:
        if not isinstance(self.optim, LMOptimConfig):
            raise TypeError(
                f"TextSFTConfig.optim must be an LMOptimConfig, got {type(self.optim).__name__}: "
                "write TextSFTConfig(optim=replace(SFT_OPTIM, max_steps=100))"
            )


@dataclass
class TextSFTMetrics(LossHistory):
    """What :func:`train_text_sft` did.

    Attributes:
        losses: completion-token cross-entropy (nats) of every step, in order.
        n_demonstrations: demonstrations trained on.
        n_tokens: completion tokens per epoch (what the loss averages over).
        seconds: wall time.
    """

    n_demonstrations: int = 0
    n_tokens: int = 0
    seconds: float = 0.0


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
        ValueError: no demonstrations, or one longer than ``config.optim.max_length``.
    """
    optim = (config or TextSFTConfig()).optim
    check_vocab(tokenizer, model)
    fuse_activations(model)
    start = time.perf_counter()
    examples = encode_demonstrations(tokenizer, demonstrations, optim.max_length, optim.add_bos)
    check_context(model, max(len(p) + len(c) for p, c in examples))
    device = next(model.parameters()).device
    optimizer, scheduler = make_optimizer(model, optim)
    metrics = TextSFTMetrics(
        n_demonstrations=len(examples), n_tokens=sum(len(c) for _, c in examples)
    )
    padding = pad_id(tokenizer)
    model.train()
    with progress_bar(n_steps(len(examples), optim), optim.progress, "SFT") as bar:
        for index in batch_indices(len(examples), optim):
            batch = collate_sft([examples[i] for i in index], padding)
            batch = SFTBatch(*(t.to(device) for t in vars(batch).values()))
            loss = sft_loss(model, batch)
            optimizer_step(model, loss, optimizer, scheduler, optim.max_grad_norm)
            metrics.losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{metrics.losses[-1]:.3f}")
    model.eval()
    metrics.seconds = time.perf_counter() - start
    if out_dir is not None:
        save_model(model, tokenizer, out_dir)
    return metrics
