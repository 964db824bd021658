"""KTO's data: unpaired examples, their mismatched KL rows, and right-padded example batches.

KTO trains on single completions labelled desirable or undesirable
(:class:`prefenv.unpaired.UnpairedExample`, e.g. from
:func:`prefenv.unpaired.import_unpaired_jsonl`); a preference pair gives one of each (its
chosen completion desirable, its rejected one not; ties give neither). Its reference point
``z0`` (:func:`agents.text.dpo_losses.kto_kl_estimate`) is measured on *mismatched* rows: each
example's prompt followed by another example's completion.

Which completion an example borrows is fixed once, at encoding (:func:`kl_partners`): TRL's
``KTOTrainer`` rotates the completions by one within each batch of its (sequential) dataset
order; here the rotation is within each chunk of ``batch_size`` consecutive examples of the
data's order, so with ``shuffle=False`` the batches and their KL rows are TRL's, and with
shuffling each KL row is still another example's completion while the reference log-probs of
every row can be computed once before training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from agents.text.pairs import PreferencePair, as_pair, stack_rows
from agents.text.sft import check_length, encode_prompt_completion
from prefenv.unpaired import UnpairedExample

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "EncodedExample",
    "ExampleBatch",
    "collate_examples",
    "encode_examples",
    "kl_partners",
    "unpaired_examples",
]


class EncodedExample(NamedTuple):
    """Token ids of one unpaired example and of its mismatched KL row's completion."""

    prompt: list[int]
    completion: list[int]
    kl_completion: list[int]
    desirable: bool
    weight: float = 1.0

    @property
    def longest(self) -> int:
        """Tokens in the longer of the two rows."""
        return len(self.prompt) + max(len(self.completion), len(self.kl_completion))


@dataclass(frozen=True)
class ExampleBatch:
    """``B`` unpaired examples and their KL rows stacked into one right-padded batch.

    Rows ``0..B-1`` are ``[BOS] + prompt + completion + [EOS]``, rows ``B..2B-1`` the same
    prompts followed by their KL partners' completions.

    Attributes:
        input_ids: ``[2B, L]`` int64.
        attention_mask: ``[2B, L]`` int64, 1 on real tokens.
        completion_mask: ``[2B, L]`` bool, True on completion tokens (EOS included).
        desirable: ``[B]`` bool labels.
        index: ``[B]`` int64 positions of the examples in the encoded list.
        weight: ``[B]`` float32 weights of the examples' losses.
    """

    input_ids: Tensor
    attention_mask: Tensor
    completion_mask: Tensor
    desirable: Tensor
    index: Tensor
    weight: Tensor

    def to(self, device: torch.device) -> ExampleBatch:
        return ExampleBatch(*(t.to(device) for t in vars(self).values()))


def _as_example(item: Any) -> UnpairedExample | None:
    """``item`` as an unpaired example, or None if it is not one."""
    if isinstance(item, UnpairedExample):
        return item
    if isinstance(item, PreferencePair):
        return None
    if (
        isinstance(item, Sequence)
        and len(item) == 3
        and isinstance(item[0], str)
        and isinstance(item[1], str)
        and isinstance(item[2], bool)
    ):
        return UnpairedExample(*item)
    return None


def unpaired_examples(
    data: Sequence[UnpairedExample | PreferencePair | tuple[Any, ...]],
) -> list[tuple[UnpairedExample, float]]:
    """KTO's examples with their loss weights: unpaired ones as they are (weight 1), each pair
    as its chosen completion (desirable) then its rejected one (undesirable), with the pair's
    weight; ties are dropped (neither completion is better).

    Raises:
        ValueError: an item is neither an example ``(prompt, completion, label: bool)`` nor a
            pair.
    """
    examples = []
    for index, item in enumerate(data):
        example = _as_example(item)
        if example is not None:
            examples.append((example, 1.0))
            continue
        pair = as_pair(index, item)
        if not pair.tie:
            examples.append((UnpairedExample(pair.prompt, pair.chosen, True), pair.weight))
            examples.append((UnpairedExample(pair.prompt, pair.rejected, False), pair.weight))
    return examples


def kl_partners(prompts: Sequence[str], chunk: int) -> list[int]:
    """For each example, the example whose completion its KL row borrows.

    Within each chunk of ``chunk`` consecutive examples, completions rotate by the smallest
    shift that gives no example a completion of its own prompt text (1, TRL's rotation, when
    the prompts differ; 2 for pairs laid out chosen, rejected, chosen, ...; 1 if none does).
    Every completion is borrowed exactly once. A last chunk of one example joins the one before.

    Args:
        prompts: ``[N]`` prompt texts, ``N >= 2``.
        chunk: the batch size (>= 2).

    Returns:
        ``[N]`` partner indices.
    """
    n = len(prompts)
    starts = list(range(0, n, chunk))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    partners: list[int] = []
    for start, end in zip(starts, [*starts[1:], n], strict=True):
        size = end - start

        def clashes(shift: int, start: int = start, size: int = size) -> bool:
            return any(
                prompts[start + j] == prompts[start + (j - shift) % size] for j in range(size)
            )

        shift = next((s for s in range(1, size) if not clashes(s)), 1)
        partners += [start + (j - shift) % size for j in range(size)]
    return partners


def encode_examples(
    tokenizer: PreTrainedTokenizerBase,
    data: Sequence[UnpairedExample | PreferencePair | tuple[Any, ...]],
    max_length: int,
    add_bos: bool,
    batch_size: int,
) -> list[EncodedExample]:
    """Tokenize KTO's examples (:func:`unpaired_examples`) once, with their KL rows.

    Raises:
        ValueError: fewer than 2 examples, a malformed item, or a row longer than
            ``max_length``.
    """
    examples = unpaired_examples(data)
    if len(examples) < 2:
        raise ValueError(
            f"KTO needs at least 2 unpaired examples, got {len(examples)}: its KL baseline pairs "
            "each prompt with another example's completion (tie pairs give no examples)"
        )
    rows = [
        encode_prompt_completion(tokenizer, e.prompt, e.completion, add_bos) for e, _ in examples
    ]
    partners = kl_partners([e.prompt for e, _ in examples], batch_size)
    encoded = []
    for index, ((example, weight), (prompt_ids, completion_ids)) in enumerate(
        zip(examples, rows, strict=True)
    ):
        kl_ids = rows[partners[index]][1]
        check_length(prompt_ids, completion_ids, max_length, f"example {index}")
        check_length(prompt_ids, kl_ids, max_length, f"example {index}'s KL row")
        encoded.append(EncodedExample(prompt_ids, completion_ids, kl_ids, example.label, weight))
    return encoded


def collate_examples(
    examples: Sequence[EncodedExample], pad_token_id: int, index: Sequence[int] | None = None
) -> ExampleBatch:
    """Stack encoded examples into one :class:`ExampleBatch` (matched rows, then KL rows)."""
    rows = [(e.prompt, e.completion) for e in examples] + [
        (e.prompt, e.kl_completion) for e in examples
    ]
    return ExampleBatch(
        *stack_rows(rows, pad_token_id),
        torch.tensor([e.desirable for e in examples], dtype=torch.bool),
        torch.as_tensor(np.asarray(index if index is not None else range(len(examples)))),
        torch.tensor([e.weight for e in examples], dtype=torch.float32),
    )
