"""DPO's data: preference pairs, their one-time tokenization, and right-padded pair batches.

A :class:`PreferencePair` is one comparison of two completions of a prompt. :func:`encode_pairs`
tokenizes pairs once into plain id lists (the prompt with BOS, each completion with EOS, as
:func:`agents.text.sft.encode_prompt_completion` lays them out); :func:`collate_pairs` stacks a
minibatch into one ``[2B, L]`` batch (chosen rows, then rejected rows). Text comparisons from the
store or a JSONL file become pairs with :func:`pairs_from_comparisons`; :func:`reweight_pairs`
applies uncertainty-aware DPO's ensemble rule (:func:`agents.text.dpo_losses.uncertainty_weights`).
KTO's unpaired examples are :mod:`agents.text.unpaired`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from agents.text.dpo_losses import uncertainty_weights
from agents.text.sft import check_length, encode_prompt_completion
from prefenv.text_records import segment_texts

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from prefenv.records import Comparison

__all__ = [
    "EncodedPair",
    "PairBatch",
    "PreferencePair",
    "as_pair",
    "collate_pairs",
    "encode_pairs",
    "pairs_from_comparisons",
    "reweight_pairs",
    "stack_rows",
]


class PreferencePair(NamedTuple):
    """One comparison of two completions of a prompt.

    Attributes:
        prompt: the context both completions continue.
        chosen: the preferred completion (for a tie, either one).
        rejected: the other completion.
        tie: the two were judged equally good (trained with the soft label 0.5).
        weight: the pair's weight in the batch-mean loss (1: plain DPO; uncertainty-aware DPO
            sets it from the reward-model ensemble, :func:`reweight_pairs`).
    """

    prompt: str
    chosen: str
    rejected: str
    tie: bool = False
    weight: float = 1.0


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
        weight: ``[B]`` float32 weights of the pairs' losses.
    """

    input_ids: Tensor
    attention_mask: Tensor
    completion_mask: Tensor
    label_smoothing: Tensor
    index: Tensor
    weight: Tensor

    def to(self, device: torch.device) -> PairBatch:
        return PairBatch(*(t.to(device) for t in vars(self).values()))


class EncodedPair(NamedTuple):
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    tie: bool
    weight: float = 1.0

    @property
    def longest(self) -> int:
        """Tokens in the longer of the two rows."""
        return len(self.prompt) + max(len(self.chosen), len(self.rejected))


def as_pair(index: int, pair: Any) -> PreferencePair:
    if isinstance(pair, PreferencePair):
        return pair
    if isinstance(pair, Sequence) and not isinstance(pair, str) and 3 <= len(pair) <= 5:
        if all(isinstance(text, str) for text in pair[:3]):
            return PreferencePair(*pair)
    raise ValueError(
        f"pair {index} must be (prompt, chosen, rejected[, tie[, weight]]) with string texts, got "
        f"{pair!r}; rows of a prompt/chosen/rejected JSONL file convert with "
        "pairs_from_comparisons(prefenv.jsonl.import_jsonl(path)), and unpaired (prompt, "
        "completion, label) examples train with DPOConfig(loss='kto')"
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
        encoded.append(
            EncodedPair(prompt_ids, chosen_ids, rejected_ids, bool(pair.tie), float(pair.weight))
        )
    return encoded


def stack_rows(
    rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_token_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Right-pad ``(prompt_ids, completion_ids)`` rows into ``[N, L]`` tensors.

    Returns:
        ``(input_ids, attention_mask, completion_mask)``: int64, int64 (1 on real tokens) and
        bool (True on completion tokens).
    """
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
    return torch.from_numpy(flat), torch.from_numpy(attention), torch.from_numpy(completion_mask)


def collate_pairs(
    pairs: Sequence[EncodedPair],
    pad_token_id: int,
    label_smoothing: float = 0.0,
    index: Sequence[int] | None = None,
) -> PairBatch:
    """Stack encoded pairs into one :class:`PairBatch` (chosen rows first, then rejected)."""
    rows = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    smoothing = torch.tensor([0.5 if p.tie else label_smoothing for p in pairs])
    return PairBatch(
        *stack_rows(rows, pad_token_id),
        smoothing,
        torch.as_tensor(np.asarray(index if index is not None else range(len(pairs)))),
        torch.tensor([p.weight for p in pairs], dtype=torch.float32),
    )


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


def reweight_pairs(
    pairs: Sequence[PreferencePair], member_margins: np.ndarray, flip_z: float = 2.0
) -> tuple[list[PreferencePair], np.ndarray]:
    """Uncertainty-aware DPO's data: pairs relabelled and weighted by a reward-model ensemble.

    Applies :func:`agents.text.dpo_losses.uncertainty_weights` (its docstring has the rule):
    a pair the ensemble confidently contradicts has its chosen and rejected completions swapped
    (a tie is never swapped: it has no order), and every pair's ``weight`` becomes its
    disagreement weight (mean 1 over the pairs).

    Args:
        pairs: the pairs, e.g. :func:`pairs_from_comparisons`.
        member_margins: ``[K, N]``: member ``k``'s score of pair ``n``'s chosen completion minus
            its score of the rejected one (``K >= 2``).
        flip_z: the relabel threshold in member standard deviations.

    Returns:
        ``(pairs, flipped)``: the new pairs and the ``[N]`` bool mask of the swapped ones.

    Raises:
        ValueError: ``member_margins`` is not ``[K >= 2, len(pairs)]``.
    """
    margins = np.asarray(member_margins)
    if margins.ndim != 2 or margins.shape[1] != len(pairs):
        raise ValueError(
            f"member_margins must be [K, {len(pairs)}] (one column per pair), got {margins.shape}"
        )
    weights, flip = uncertainty_weights(margins, flip_z)
    flip &= np.array([not p.tie for p in pairs], dtype=bool)
    reweighted = [
        p._replace(chosen=p.rejected, rejected=p.chosen, weight=float(w))
        if swap
        else p._replace(weight=float(w))
        for p, w, swap in zip(pairs, weights, flip, strict=True)
    ]
    return reweighted, flip
