"""Text records in the core: text segments, their (prompt, completion) reader, the vocab check.

A text comparison is an ordinary :class:`prefenv.records.Comparison` whose segments have no
numeric features and carry ``context = {"prompt", "completion"}``. Annotators, text reward
models, DPO and the JSONL import/export all read them through :func:`segment_texts`, so the
check that a segment is a text segment lives in one place. Nothing here imports transformers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from prefenv.records import Segment

__all__ = ["VocabMismatchError", "check_vocab", "segment_texts", "text_segment"]


class VocabMismatchError(ValueError):
    """The tokenizer can emit token ids the model has no embedding row for."""


def check_vocab(tokenizer: Any, model: Any) -> None:
    """Raise :class:`VocabMismatchError` if ``tokenizer`` can emit ids ``model`` cannot embed.

    ``tokenizer`` is any Hugging Face tokenizer (``len`` gives its size) and ``model`` any
    ``PreTrainedModel``. A model with *more* embedding rows than tokens is fine (e.g. rows padded
    to a multiple of 64).
    """
    n_tokens = len(tokenizer)
    n_rows = model.get_input_embeddings().num_embeddings
    if n_tokens > n_rows:
        raise VocabMismatchError(
            f"tokenizer has {n_tokens} tokens but the model's embedding has only {n_rows} rows, so "
            f"token ids {n_rows}..{n_tokens - 1} would index past it: load the tokenizer the model "
            "was trained with, or call model.resize_token_embeddings(len(tokenizer)) and fine-tune "
            "the new rows before using the pair"
        )


def text_segment(prompt: str, completion: str, score: float) -> Segment:
    """A one-step text segment: ``context = {"prompt", "completion"}``, ``true_rewards = [score]``.

    ``obs`` is ``[2, 0]`` and ``acts`` ``[1, 0]`` (no features: a text reward model reads the
    context), matching :func:`prefenv.jsonl.import_jsonl`'s text-only comparisons.
    """
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise TypeError(
            f"prompt and completion must be strings, got {type(prompt).__name__} and "
            f"{type(completion).__name__}"
        )
    return Segment(
        obs=np.zeros((2, 0), dtype=np.float32),
        acts=np.zeros((1, 0), dtype=np.float32),
        true_rewards=np.array([score], dtype=np.float32),
        context={"prompt": prompt, "completion": completion},
    )


def segment_texts(segment: Segment, where: str) -> tuple[str, str]:
    """``(prompt, completion)`` of a text segment (a missing prompt reads as ``""``).

    Raises:
        ValueError: the segment carries no completion text; ``where`` names it in the message.
    """
    context = segment.context or {}
    prompt, completion = context.get("prompt", ""), context.get("completion")
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise ValueError(
            f"{where} has no context['completion'] text, which text annotators and text reward "
            "models read: build text segments with prefenv.text_records.text_segment(prompt, "
            "completion, score) or import a prompt/chosen/rejected JSONL file"
        )
    return prompt, completion
