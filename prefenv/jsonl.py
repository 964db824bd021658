""":func:`export_jsonl` and :func:`import_jsonl`: comparisons in the Hugging Face preference format.

They speak the pairwise preference convention of the Hugging Face ecosystem (TRL, ``datasets``):
one JSON object per line with ``prompt``, ``chosen`` and ``rejected``. prefenv adds ``tie``,
``chosen_position``, ``teacher``, ``created`` and the two numeric segments (``chosen_segment`` /
``rejected_segment``) so that numeric comparisons round-trip exactly; a plain preference dataset
without segments imports as text-only comparisons (see :func:`import_jsonl`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from prefenv.atomic import atomic_write
from prefenv.records import Comparison, Segment

__all__ = ["export_jsonl", "import_jsonl"]

_ARRAYS = ("obs", "acts", "true_rewards")


def _segment_to_json(segment: Segment) -> dict[str, Any]:
    return {
        "obs": segment.obs.tolist(),
        "acts": segment.acts.tolist(),
        "true_rewards": segment.true_rewards.tolist(),
        "context": None if segment.context is None else dict(segment.context),
    }


def _text(segment: Segment, key: str) -> Any:
    return "" if segment.context is None else segment.context.get(key, "")


def export_jsonl(comparisons: Iterable[Comparison], path: str | os.PathLike[str]) -> int:
    """Write labelled comparisons as a preference-dataset JSONL file (atomically).

    Each labelled comparison becomes one line::

        {"prompt": ..., "chosen": ..., "rejected": ..., "tie": false, "chosen_position": 1,
         "teacher": ..., "created": ..., "chosen_segment": {...}, "rejected_segment": {...}}

    ``prompt`` is the first segment's ``context["prompt"]`` (``""`` if absent); ``chosen`` and
    ``rejected`` are the preferred and the other segment's ``context["completion"]`` (``""`` if
    absent). For a tie (label 0.5) ``tie`` is true and ``chosen`` is the first segment.
    ``chosen_position`` (0 or 1) says which segment was shown first, so the original order
    (and label) comes back on import. Each ``*_segment`` holds ``obs``, ``acts`` and
    ``true_rewards`` as nested lists (float32 values, exact) and the ``context``. Skipped
    comparisons are not written. The file is written to a temporary file and moved into place,
    so readers never see half a file and a failure leaves any old file as it was.

    Args:
        comparisons: what to export, e.g. ``store.load()``.
        path: destination file; its parent folders are created.

    Returns:
        The number of lines written.

    Raises:
        ValueError: a context is not JSON-serialisable.
    """
    path = Path(path)
    lines = []
    for index, comparison in enumerate(comparisons):
        if comparison.label is None:
            continue
        chosen_position = 1 if comparison.label == 1.0 else 0
        segments = (comparison.segment0, comparison.segment1)
        chosen, rejected = segments[chosen_position], segments[1 - chosen_position]
        record = {
            "prompt": _text(comparison.segment0, "prompt"),
            "chosen": _text(chosen, "completion"),
            "rejected": _text(rejected, "completion"),
            "tie": comparison.label == 0.5,
            "chosen_position": chosen_position,
            "teacher": comparison.teacher,
            "created": float(comparison.created),
            "chosen_segment": _segment_to_json(chosen),
            "rejected_segment": _segment_to_json(rejected),
        }
        try:
            lines.append(json.dumps(record, allow_nan=False, ensure_ascii=False))
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"comparison {index} cannot be written to {path}: its context is not "
                f"JSON-serialisable ({error})"
            ) from error
    text = "".join(line + "\n" for line in lines)
    atomic_write(path, lambda handle: handle.write(text))
    return len(lines)


class _LineError(ValueError):
    """A field of one JSONL line is missing or invalid (the caller adds file and line)."""


def import_jsonl(
    path: str | os.PathLike[str], *, default_teacher: str = "unknown"
) -> list[Comparison]:
    """Read a preference-dataset JSONL file (ours or a plain Hugging Face one).

    Every non-blank line must be a JSON object with ``chosen`` and ``rejected`` (strings, or
    lists of chat messages); ``prompt`` is optional (``""``, the "implicit prompt" form). Lines
    written by :func:`export_jsonl` also carry ``chosen_segment`` / ``rejected_segment`` and come
    back exactly as exported. A line without segments (a plain dataset) becomes a text-only
    comparison: each segment has context ``{"prompt": prompt, "completion": chosen or
    rejected}`` and zero-feature arrays, ``obs`` of shape ``[2, 0]``, ``acts`` ``[1, 0]`` and
    ``true_rewards`` ``[0.0]``, i.e. one step that only a text reward model (which reads the
    context) can score.

    The label is ``0.5`` if ``tie`` is true, else ``float(chosen_position)`` (default 0: the
    chosen segment becomes ``segment0``). ``teacher`` defaults to ``default_teacher`` and
    ``created`` to the time of the import.

    Args:
        path: the JSONL file (UTF-8).
        default_teacher: teacher name for lines that carry none.

    Returns:
        The comparisons in file order.

    Raises:
        ValueError: a line is not valid JSON or misses / has an invalid field; the message
            names the file, the line number and the field.
    """
    path = Path(path)
    now = time.time()
    comparisons = []
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                comparisons.append(_parse_line(line, default_teacher, now))
            except _LineError as error:
                raise ValueError(f"{path}, line {number}: {error}") from error
    return comparisons


def _parse_line(line: str, default_teacher: str, now: float) -> Comparison:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise _LineError(f"not valid JSON ({error})") from None
    if not isinstance(record, dict):
        raise _LineError(f"expected a JSON object, got {type(record).__name__}")
    texts = {
        key: _field(record, key, (str, list), "" if key == "prompt" else None)
        for key in ("prompt", "chosen", "rejected")
    }
    tie = _field(record, "tie", bool, False)
    position = _field(record, "chosen_position", int, 0)
    if isinstance(position, bool) or position not in (0, 1):
        raise _LineError(f"invalid field 'chosen_position': expected 0 or 1, got {position!r}")
    teacher = _field(record, "teacher", str, default_teacher)
    created = _field(record, "created", (int, float), now)
    if isinstance(created, bool) or not math.isfinite(created):
        raise _LineError(f"invalid field 'created': expected a finite number, got {created!r}")
    if "chosen_segment" in record or "rejected_segment" in record:
        chosen, rejected = (
            _parse_segment(record, f"{key}_segment") for key in ("chosen", "rejected")
        )
    else:
        chosen, rejected = (
            _text_segment(texts["prompt"], texts[key]) for key in ("chosen", "rejected")
        )
    segment0, segment1 = (rejected, chosen) if position == 1 else (chosen, rejected)
    label = 0.5 if tie else float(position)
    try:
        return Comparison(segment0, segment1, label, teacher=teacher, created=float(created))
    except ValueError as error:
        raise _LineError(f"invalid segments: {error}") from None


def _field(record: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    if key not in record:
        if default is None:
            raise _LineError(f"missing field {key!r}")
        return default
    value = record[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _LineError(f"invalid field {key!r}: expected {names}, got {type(value).__name__}")
    return value


def _parse_segment(record: dict[str, Any], key: str) -> Segment:
    value = _field(record, key, dict, None)
    try:
        context = value.get("context")
        if context is not None and not isinstance(context, dict):
            raise ValueError(f"context must be an object or null, got {type(context).__name__}")
        arrays = {}
        for name in _ARRAYS:
            if name not in value:
                raise ValueError(f"missing {name!r}")
            arrays[name] = np.asarray(value[name], dtype=np.float32)
        return Segment(**arrays, context=context)
    except (ValueError, TypeError) as error:
        raise _LineError(f"invalid field {key!r}: {error}") from None


def _text_segment(prompt: Any, completion: Any) -> Segment:
    return Segment(
        obs=np.zeros((2, 0), dtype=np.float32),
        acts=np.zeros((1, 0), dtype=np.float32),
        true_rewards=np.zeros(1, dtype=np.float32),
        context={"prompt": prompt, "completion": completion},
    )
