"""Unpaired feedback: one completion judged good or bad on its own, and its JSONL convention.

KTO (Ethayarajh et al., 2024) learns from *unpaired* labels: "this completion of this prompt is
desirable" or "... undesirable", with no second completion to compare it to. The Hugging Face
ecosystem (TRL's ``KTOTrainer``, ``datasets``) stores them one JSON object per line::

    {"prompt": "The soup", "completion": " was lovely.", "label": true}

:class:`UnpairedExample` is that record; :func:`export_unpaired_jsonl` and
:func:`import_unpaired_jsonl` write and read the convention (the pairwise
``prompt``/``chosen``/``rejected`` one is :mod:`prefenv.jsonl`'s), and
:func:`examples_from_comparisons` turns each labelled text comparison into one desirable and
one undesirable example. Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from prefenv.atomic import atomic_write
from prefenv.records import Comparison
from prefenv.text_records import segment_texts

__all__ = [
    "UnpairedExample",
    "examples_from_comparisons",
    "export_unpaired_jsonl",
    "import_unpaired_jsonl",
]


class UnpairedExample(NamedTuple):
    """One completion of a prompt, judged on its own.

    Attributes:
        prompt: the context the completion continues (``""``: none).
        completion: the text that was judged.
        label: True if the completion is desirable, False if undesirable.
    """

    prompt: str
    completion: str
    label: bool


def examples_from_comparisons(comparisons: Iterable[Comparison]) -> list[UnpairedExample]:
    """Each labelled, non-tie text comparison as two examples: the winner desirable, the loser not.

    Ties and skipped comparisons say nothing about either completion alone and are dropped. The
    order is the comparisons' (winner first).

    Raises:
        ValueError: a labelled comparison's segments carry no prompt/completion text.
    """
    examples = []
    for index, comparison in enumerate(comparisons):
        if comparison.label is None or comparison.label == 0.5:
            continue
        segments = (comparison.segment0, comparison.segment1)
        winner = 1 if comparison.label == 1.0 else 0
        prompt, chosen = segment_texts(segments[winner], f"comparison {index}")
        _, rejected = segment_texts(segments[1 - winner], f"comparison {index}")
        examples += [
            UnpairedExample(prompt, chosen, True),
            UnpairedExample(prompt, rejected, False),
        ]
    return examples


def export_unpaired_jsonl(examples: Sequence[UnpairedExample], path: str | os.PathLike[str]) -> int:
    """Write examples as ``{"prompt", "completion", "label"}`` lines (atomically).

    Args:
        examples: :class:`UnpairedExample` s (or ``(prompt, completion, label)`` tuples).
        path: destination file; its parent folders are created.

    Returns:
        The number of lines written.

    Raises:
        ValueError: an example's prompt or completion is not a string or its label not a bool.
    """
    lines = []
    for index, example in enumerate(examples):
        try:
            prompt, completion, label = example
        except (TypeError, ValueError):
            raise ValueError(
                f"example {index} must be (prompt, completion, label), got {example!r}"
            ) from None
        if not (isinstance(prompt, str) and isinstance(completion, str)):
            raise ValueError(f"example {index}: prompt and completion must be strings")
        if not isinstance(label, bool):
            raise ValueError(
                f"example {index}: label must be True (desirable) or False (undesirable), "
                f"got {label!r}"
            )
        record = {"prompt": prompt, "completion": completion, "label": label}
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    text = "".join(lines)
    atomic_write(Path(path), lambda handle: handle.write(text))
    return len(lines)


def import_unpaired_jsonl(path: str | os.PathLike[str]) -> list[UnpairedExample]:
    """Read an unpaired-preference JSONL file (ours or a Hugging Face one).

    Every non-blank line must be a JSON object with ``completion`` (a string) and ``label``
    (``true`` or ``false``); ``prompt`` (a string) is optional and defaults to ``""``. Other keys
    are ignored. Conversational rows (lists of chat messages) are refused: apply the chat
    template to get strings first.

    Returns:
        The examples in file order.

    Raises:
        ValueError: a line is not valid JSON, or misses a field or has one of the wrong type; the
            message names the file, the line number and the field.
    """
    path = Path(path)
    examples = []
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                examples.append(_parse_line(line))
            except ValueError as error:
                raise ValueError(f"{path}, line {number}: {error}") from None
    return examples


def _parse_line(line: str) -> UnpairedExample:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error})") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if "chosen" in record or "rejected" in record:
        raise ValueError(
            "this is a paired prompt/chosen/rejected row, not an unpaired one: read the file "
            "with prefenv.jsonl.import_jsonl (KTO can train on its pairs too)"
        )
    prompt = _text(record, "prompt", required=False)
    completion = _text(record, "completion", required=True)
    if "label" not in record:
        raise ValueError("missing field 'label' (true: desirable, false: undesirable)")
    label = record["label"]
    if not isinstance(label, bool):
        raise ValueError(f"invalid field 'label': expected true or false, got {json.dumps(label)}")
    return UnpairedExample(prompt, completion, label)


def _text(record: dict[str, Any], key: str, required: bool) -> str:
    if key not in record:
        if required:
            raise ValueError(f"missing field {key!r}")
        return ""
    value = record[key]
    if isinstance(value, list):
        raise ValueError(
            f"invalid field {key!r}: a list of chat messages; apply the chat template to make it "
            "a string first (conversational rows are not supported)"
        )
    if not isinstance(value, str):
        raise ValueError(f"invalid field {key!r}: expected a string, got {type(value).__name__}")
    return value
