"""DPO's data: preference pairs, their one-time tokenization, and right-padded pair batches.

A :class:`PreferencePair` is one comparison of two completions of a prompt. :func:`encode_pairs`
tokenizes pairs once into plain id lists (the prompt with BOS, each completion with EOS, as
:func:`agents.text.sft.encode_prompt_completion` lays them out); :func:`collate_pairs` stacks a
minibatch into one ``[2B, L]`` batch (chosen rows, then rejected rows). Text comparisons from the
store or a JSONL file become pairs with :func:`pairs_from_comparisons`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

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
