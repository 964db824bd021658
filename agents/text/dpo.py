"""Direct preference optimisation (DPO) of a causal LM from prompt/chosen/rejected pairs.

DPO (Rafailov et al., 2023) trains the policy directly on comparisons, without a reward model
or rollouts. With ``log pi(y | x)`` the summed log-probability of a completion's tokens given
its prompt and ``pi_ref`` the frozen SFT model::

    h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))
    L = -log sigmoid(beta * h)                  (label smoothing eps: a soft label 1 - eps)

``beta * (log pi(y) - log pi_ref(y))`` is the implicit reward of ``y``; a pair counts as
"accurate" when the chosen completion's reward exceeds the rejected one's. A tie (label 0.5)
is trained with the soft label 0.5, i.e. pushed towards equal implicit rewards.

Where the speed comes from (vs TRL's ``DPOTrainer``): pairs are tokenized once into plain
lists, the reference log-probs are computed once up front under ``torch.inference_mode``, a
step is one forward over the chosen and rejected rows concatenated (``[2B, L]``, right-padded),
and log-softmax is taken only at completion positions. There is no dataset library, trainer or
logging machinery in the loop.

Inputs: :class:`PreferencePair` s (or ``(prompt, chosen, rejected)`` tuples), e.g. from
:func:`pairs_from_comparisons` over ``prefenv.jsonl.import_jsonl(path)`` or ``store.load()``.
:func:`iterative_dpo` alternates sampling two completions per prompt, labelling them with any
callable teacher, and DPO on all pairs so far.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.text.sft import (
    batch_indices,
    check_context,
    check_length,
    encode_prompt_completion,
    make_optimizer,
    n_steps,
    optimizer_step,
    pad_id,
    progress_bar,
    save_model,
    validate_common,
)
from prefenv.text_records import check_vocab, segment_texts

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from prefenv.records import Comparison

__all__ = [
    "DPOConfig",
    "DPOMetrics",
    "PairBatch",
    "PreferencePair",
    "collate_pairs",
    "dpo_loss",
    "encode_pairs",
    "frozen_copy",
    "pair_logps",
    "pairs_from_comparisons",
    "reference_logps",
    "sequence_logps",
    "train_dpo",
]


class PreferencePair(NamedTuple):
    """One comparison of two completions of a prompt.

    Attributes:
        prompt: the context both completions continue.
        chosen: the preferred completion (for a tie, either one).
        rejected: the other completion.
        tie: the two were judged equally good (trained with the soft label 0.5).
    """

    prompt: str
    chosen: str
    rejected: str
    tie: bool = False


"""``label_fn(prompt, completion_a, completion_b)``: 0 if ``a`` is better, 1 if ``b`` is, 0.5 for
equally good, None to skip (the convention of :class:`prefenv.records.Comparison`)."""


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    label_smoothing: float | Tensor = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """The DPO sigmoid loss per pair, and the implicit rewards.

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


@dataclass(frozen=True)
class PairBatch:
    """Chosen and rejected sequences of ``B`` pairs stacked into one right-padded batch.

    Rows ``0..B-1`` are ``[BOS] + prompt + chosen + [EOS]``, rows ``B..2B-1`` the same prompts
    with the rejected completions.

    Attributes:
        input_ids: ``[2B, L]`` int64.
        attention_mask: ``[2B, L]`` int64, 1 on real tokens.
        completion_mask: ``[2B, L]`` bool, True on completion tokens (EOS included).
        label_smoothing: ``[B]`` float, 0.5 for ties and the config's label smoothing otherwise.
        index: ``[B]`` int64 positions of the pairs in the encoded list.
    """

    input_ids: Tensor
    attention_mask: Tensor
    completion_mask: Tensor
    label_smoothing: Tensor
    index: Tensor

    def to(self, device: torch.device) -> PairBatch:
        return PairBatch(*(t.to(device) for t in vars(self).values()))


class EncodedPair(NamedTuple):
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    tie: bool


def as_pair(index: int, pair: Any) -> PreferencePair:
    if isinstance(pair, PreferencePair):
        return pair
    if isinstance(pair, Sequence) and not isinstance(pair, str) and len(pair) in (3, 4):
        if all(isinstance(text, str) for text in pair[:3]):
            return PreferencePair(*pair)
    raise ValueError(
        f"pair {index} must be (prompt, chosen, rejected[, tie]) with string texts, got {pair!r}; "
        "rows of a prompt/chosen/rejected JSONL file convert with "
        "pairs_from_comparisons(prefenv.jsonl.import_jsonl(path))"
    )


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[PreferencePair | tuple[str, ...]],
    max_length: int,
    add_bos: bool = True,
) -> list[EncodedPair]:
    """Tokenize pairs once (see :func:`agents.text.sft.encode_prompt_completion`).

    Raises:
        ValueError: no pairs, a malformed pair, or a sequence longer than ``max_length``.
    """
    if len(pairs) == 0:
        raise ValueError(
            "no preference pairs to train on: pass (prompt, chosen, rejected) tuples, e.g. "
            "pairs_from_comparisons(store.load()); if they came from comparisons, were they all "
            "skipped or ties?"
        )
    encoded = []
    for index, raw in enumerate(pairs):
        pair = as_pair(index, raw)
        prompt_ids, chosen_ids = encode_prompt_completion(
            tokenizer, pair.prompt, pair.chosen, add_bos
        )
        rejected_ids = encode_prompt_completion(tokenizer, "", pair.rejected, False)[1]
        for name, ids in (("chosen", chosen_ids), ("rejected", rejected_ids)):
            check_length(prompt_ids, ids, max_length, f"pair {index} (prompt + {name})")
        encoded.append(EncodedPair(prompt_ids, chosen_ids, rejected_ids, bool(pair.tie)))
    return encoded


def collate_pairs(
    pairs: Sequence[EncodedPair],
    pad_token_id: int,
    label_smoothing: float = 0.0,
    index: Sequence[int] | None = None,
) -> PairBatch:
    """Stack encoded pairs into one :class:`PairBatch` (chosen rows first, then rejected)."""
    rows = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    length = max(len(prompt) + len(completion) for prompt, completion in rows)
    flat = np.full((len(rows), length), pad_token_id, dtype=np.int64)
    attention = np.zeros((len(rows), length), dtype=np.int64)
    completion_mask = np.zeros((len(rows), length), dtype=bool)
    for row, (prompt, completion) in enumerate(rows):
        n_prompt, n = len(prompt), len(prompt) + len(completion)
        flat[row, :n_prompt] = prompt
        flat[row, n_prompt:n] = completion
        attention[row, :n] = 1
        completion_mask[row, n_prompt:n] = True
    smoothing = torch.tensor([0.5 if p.tie else label_smoothing for p in pairs])
    return PairBatch(
        torch.from_numpy(flat),
        torch.from_numpy(attention),
        torch.from_numpy(completion_mask),
        smoothing,
        torch.as_tensor(np.asarray(index if index is not None else range(len(pairs)))),
    )


def sequence_logps(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor
) -> Tensor:
    """Summed log-probability of each row's completion tokens given what precedes them.

    One forward over the whole batch; the log-softmax is evaluated only at the positions that
    predict a completion token (position ``t`` predicts token ``t + 1``).

    Args:
        model: a Hugging Face causal LM (``model(input_ids, attention_mask).logits``).
        input_ids: ``[N, L]`` right-padded token ids.
        attention_mask: ``[N, L]``, 1 on real tokens.
        completion_mask: ``[N, L]`` bool, True on the tokens whose log-probs are summed (never
            position 0: the first token has no prediction).

    Returns:
        ``[N]`` float32 sums (with gradients if grad mode is on).
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    predicts = completion_mask[:, 1:]  # position t of logits[:, :-1] predicts token t + 1
    rows = torch.arange(len(input_ids), device=input_ids.device)[:, None].expand_as(predicts)
    selected = logits[:, :-1][predicts].float()  # [M, V]
    targets = input_ids[:, 1:][predicts]  # [M]
    token_logps = selected.gather(-1, targets[:, None]).squeeze(-1) - selected.logsumexp(-1)
    return torch.zeros(len(input_ids), device=logits.device).index_add(
        0, rows[predicts], token_logps
    )


def pair_logps(model: nn.Module, batch: PairBatch) -> tuple[Tensor, Tensor]:
    """``(chosen_logps, rejected_logps)``, each ``[B]``, from one forward over ``[2B, L]``."""
    logps = sequence_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask)
    return logps.chunk(2)


@dataclass(frozen=True)
class DPOConfig:
    """DPO settings (validated on construction)."""

    beta: float = 0.1
    """KL strength: larger keeps the policy closer to the reference (0.5 for TL;DR)."""
    learning_rate: float = 5e-5
    """Peak AdamW rate (TRL defaults to 1e-6 for billion-parameter models; tiny models need more)."""
    epochs: int = 1
    """Passes over the pairs (ignored when ``max_steps`` is set)."""
    max_steps: int | None = None
    """Stop after this many optimiser steps (cycling through the pairs as needed)."""
    batch_size: int = 32
    """Pairs per step (one forward over ``2 * batch_size`` sequences)."""
    max_length: int = 128
    """Longest ``prompt + completion`` in tokens (BOS/EOS included); longer ones are an error."""
    seed: int = 0
    """Seeds the batch order."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up from 0 over this many steps, then constant."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient's global norm to this (None: no clipping)."""
    label_smoothing: float = 0.0
    """cDPO: probability that a label is flipped, in ``[0, 0.5)``; ties always use 0.5."""
    precompute_ref: bool = True
    """Compute the reference log-probs once before training (else once per batch)."""
    ref_batch_size: int = 64
    """Pairs per reference forward when precomputing."""
    add_bos: bool = True
    """Prepend the tokenizer's BOS to each prompt (as the text envs do)."""
    shuffle: bool = True
    """Shuffle the pairs every epoch."""
    disable_dropout: bool = True
    """Train in eval mode (no dropout), as TRL does: log-probs match the reference's exactly."""
    progress: bool = False
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        validate_common(self)
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ValueError(f"beta must be a positive number, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.ref_batch_size < 1:
            raise ValueError(f"ref_batch_size must be >= 1, got {self.ref_batch_size}")


@dataclass
class DPOMetrics:
    """What :func:`train_dpo` did, one entry per optimiser step (batch means).

    Attributes:
        losses: DPO loss.
        accuracies: fraction of pairs whose chosen reward exceeds the rejected one.
        margins: chosen minus rejected implicit reward.
        chosen_rewards: ``beta * (log pi - log pi_ref)`` of the chosen completions.
        rejected_rewards: the same for the rejected ones.
        n_pairs: pairs trained on.
        n_pairs_seen: pairs processed over all steps (an epoch counts each pair once).
        seconds: wall time, tokenization and reference pass included.
        ref_seconds: time of the reference log-prob pass.
    """

    losses: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)
    chosen_rewards: list[float] = field(default_factory=list)
    rejected_rewards: list[float] = field(default_factory=list)
    n_pairs: int = 0
    n_pairs_seen: int = 0
    seconds: float = 0.0
    ref_seconds: float = 0.0

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

    @property
    def pairs_per_second(self) -> float:
        """Pairs processed (steps x batch, repeats counted) per second of ``seconds``."""
        return self.n_pairs_seen / self.seconds if self.seconds > 0 else float("nan")


def _ref_batches(encoded: Sequence[EncodedPair], pad: int, batch_size: int) -> Iterator[PairBatch]:
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].prompt))  # less padding
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        yield collate_pairs([encoded[i] for i in index], pad, index=index)


def reference_logps(
    ref_model: nn.Module, encoded: Sequence[EncodedPair], pad: int, batch_size: int
) -> tuple[Tensor, Tensor]:
    """``[N]`` reference log-probs of the chosen and the rejected completions (one pass)."""
    device = next(ref_model.parameters()).device
    chosen = torch.zeros(len(encoded))
    rejected = torch.zeros(len(encoded))
    with torch.inference_mode(), _eval_mode(ref_model):
        for batch in _ref_batches(encoded, pad, batch_size):
            c, r = pair_logps(ref_model, batch.to(device))
            chosen[batch.index] = c.float().cpu()
            rejected[batch.index] = r.float().cpu()
    return chosen, rejected


@contextlib.contextmanager
def _eval_mode(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    was_training = model.training
    if enabled:
        model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with gradients off (the DPO reference)."""
    ref = copy.deepcopy(model).eval()
    for param in ref.parameters():
        param.requires_grad_(False)
    return ref


def train_dpo(
    model: nn.Module,
    ref_model: nn.Module | None,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[PreferencePair | tuple[str, ...]],
    config: DPOConfig | None = None,
    out_dir: str | Path | None = None,
) -> DPOMetrics:
    """Train ``model`` in place with DPO against the frozen ``ref_model``.

    Args:
        model: the policy, a Hugging Face causal LM (usually the SFT model).
        ref_model: the frozen reference (usually a copy of the SFT model); it is never updated.
            None: ``model`` as it is now (its log-probs are taken before the first step, or a
            frozen copy is made when ``config.precompute_ref`` is false).
        tokenizer: the tokenizer of both models.
        pairs: :class:`PreferencePair` s or ``(prompt, chosen, rejected)`` tuples.
        config: settings (defaults: :class:`DPOConfig`).
        out_dir: if given, the trained model and the tokenizer are saved there.

    Returns:
        Per-step loss, accuracy, reward margin and rewards.

    Raises:
        VocabMismatchError: the tokenizer emits ids a model cannot embed.
        ValueError: no pairs, or a sequence longer than ``config.max_length``.
    """
    config = config or DPOConfig()
    start = time.perf_counter()
    check_vocab(tokenizer, model)
    if ref_model is not None:
        check_vocab(tokenizer, ref_model)
    encoded = encode_pairs(tokenizer, pairs, config.max_length, config.add_bos)
    check_context(model, max(len(p.prompt) + max(len(p.chosen), len(p.rejected)) for p in encoded))
    pad = pad_id(tokenizer)
    metrics = DPOMetrics(n_pairs=len(encoded))
    ref = None
    if config.precompute_ref:  # the policy itself is the reference before its first step
        ref = reference_logps(
            model if ref_model is None else ref_model, encoded, pad, config.ref_batch_size
        )
        metrics.ref_seconds = time.perf_counter() - start
    elif ref_model is None:
        ref_model = frozen_copy(model)
    device = next(model.parameters()).device
    optimizer, scheduler = make_optimizer(
        model, config.learning_rate, config.weight_decay, config.warmup_steps
    )
    total = n_steps(len(encoded), config.batch_size, config.epochs, config.max_steps)
    batches = batch_indices(
        len(encoded), config.batch_size, config.epochs, config.max_steps, config.shuffle,
        config.seed,
    )  # fmt: skip
    model.train(not config.disable_dropout)
    with progress_bar(total, config.progress, "DPO") as bar:
        for index in batches:
            batch = collate_pairs(
                [encoded[i] for i in index], pad, config.label_smoothing, index
            ).to(device)
            if ref is not None:
                ref_chosen, ref_rejected = (r[torch.as_tensor(index)].to(device) for r in ref)
            else:
                ref_chosen, ref_rejected = _ref_pair_logps(ref_model, batch, device)
            chosen, rejected = pair_logps(model, batch)
            losses, chosen_rewards, rejected_rewards = dpo_loss(
                chosen, rejected, ref_chosen, ref_rejected, config.beta, batch.label_smoothing
            )
            loss = losses.mean()
            optimizer_step(model, loss, optimizer, scheduler, config.max_grad_norm)
            _record(metrics, loss, chosen_rewards, rejected_rewards)
            metrics.n_pairs_seen += len(index)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics.losses[-1]:.3f}", acc=f"{metrics.accuracies[-1]:.2f}")
    model.eval()
    metrics.seconds = time.perf_counter() - start
    if out_dir is not None:
        save_model(model, tokenizer, out_dir)
    return metrics


def _ref_pair_logps(
    ref_model: nn.Module, batch: PairBatch, device: torch.device
) -> tuple[Tensor, Tensor]:
    ref_device = next(ref_model.parameters()).device
    with torch.no_grad(), _eval_mode(ref_model):
        chosen, rejected = pair_logps(ref_model, batch.to(ref_device))
    return chosen.to(device), rejected.to(device)


def _record(metrics: DPOMetrics, loss: Tensor, chosen: Tensor, rejected: Tensor) -> None:
    stats = torch.stack(
        [loss.detach(), (chosen > rejected).float().mean(), (chosen - rejected).mean(),
         chosen.mean(), rejected.mean()]
    ).tolist()  # fmt: skip
    for values, value in zip(
        (metrics.losses, metrics.accuracies, metrics.margins, metrics.chosen_rewards,
         metrics.rejected_rewards),
        stats,
        strict=True,
    ):  # fmt: skip
        values.append(value)


def pairs_from_comparisons(
    comparisons: Sequence[Comparison], ties: str = "skip"
) -> list[PreferencePair]:
    """Text comparisons (``context["prompt"]`` / ``["completion"]``) as DPO pairs.

    Args:
        comparisons: e.g. ``prefenv.jsonl.import_jsonl(path)`` or ``ComparisonStore.load()``.
        ties: ``"skip"`` drops label-0.5 comparisons; ``"keep"`` keeps them as tie pairs
            (trained towards equal implicit rewards). Skipped comparisons are always dropped.

    Raises:
        ValueError: a labelled comparison's segments carry no prompt/completion text.
    """
    if ties not in ("skip", "keep"):
        raise ValueError(f"ties must be 'skip' or 'keep', got {ties!r}")
    pairs = []
    for index, comparison in enumerate(comparisons):
        if comparison.label is None or (comparison.label == 0.5 and ties == "skip"):
            continue
        segments = (comparison.segment0, comparison.segment1)
        winner = 1 if comparison.label == 1.0 else 0
        prompt, chosen = segment_texts(segments[winner], f"comparison {index}")
        _, rejected = segment_texts(segments[1 - winner], f"comparison {index}")
        pairs.append(PreferencePair(prompt, chosen, rejected, comparison.label == 0.5))
    return pairs
