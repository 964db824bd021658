"""What a person sees for one query: a pair of segments turned into a JSON-able "media" dict.

A human labeller compares two segments, so each task family says how to show one pair: MuJoCo
renders two clips, text shows the prompt and the two completions, recommendation shows the two
sessions as tables. A family implements :class:`PairPresenter` and names its factory in its env's
``metadata[PRESENTER_METADATA]`` (``"module:attr"``, called with the env); the application layer
resolves it and falls back to :class:`GenericPresenter`. The core never imports a family.

``"left"`` is always ``segment0`` and ``"right"`` ``segment1``, so a label reads as usual:
``0.0`` = left preferred, ``1.0`` = right, ``0.5`` = equally good.

Media kinds (every value is plain JSON: str, int, float, bool, list, dict):

- ``{"kind": "clips", "left": FILE, "right": FILE, "fps": float, "frames": int}``: two video
  files written into the query's clip folder (bare file names, never paths).
- ``{"kind": "text", "prompt": str, "left": str, "right": str}``: the two completions of one
  prompt. When the two segments come from different prompts, ``"prompt"`` is ``""`` and the
  dict also holds ``"left_prompt"`` and ``"right_prompt"``.
- ``{"kind": "sessions", "columns": [str], "left": {"rows": [[cell]], "left_early": bool},
  "right": {...}}``: one row per step; ``left_early`` says the user left during the segment.
- ``{"kind": "table", "columns": [str], "left": {"rows": [[cell]]}, "right": {...}}``: the
  generic fallback, observations and actions per step.

No kind ever carries the true rewards: a person judges behaviour, not the answer key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from prefenv.records import Segment

__all__ = [
    "INSTRUCTIONS",
    "MEDIA_KINDS",
    "PRESENTER_METADATA",
    "GenericPresenter",
    "PairPresenter",
    "check_stem",
    "media_files",
]

PRESENTER_METADATA = "prefenv_presenter"
"""Env ``metadata`` key: ``"module:attr"`` of a factory ``env -> PairPresenter`` for its pairs."""

MEDIA_KINDS = ("clips", "text", "sessions", "table")
"""The ``"kind"`` values a media dict may have (see the module docstring for each layout)."""

INSTRUCTIONS: dict[str, str] = {
    "clips": (
        "Watch both clips; they loop and show the same length of time. Which clip makes more "
        "progress at the task: moving forward fast and steadily, staying upright, without "
        "falling or flailing? Pick left or right. Pick 'equally good' when you cannot tell "
        "them apart, and 'skip' when neither clip shows enough to judge."
    ),
    "text": (
        "Read the prompt, then the two completions. Which completion answers the task better: "
        "fluent, on topic, and doing what the task asks? Judge the text itself, not its "
        "position or its length alone. Pick 'equally good' when both are as good (or as bad), "
        "and 'skip' when you cannot judge them."
    ),
    "sessions": (
        "Each table is one user's session: per step, the items recommended to them, what they "
        "clicked (if anything), how long they watched, and whether they left. Which session "
        "served the user better: items they chose and watched, some variety, and a user who "
        "stays? Pick 'equally good' when both served the user as well, and 'skip' when you "
        "cannot tell."
    ),
    "table": (
        "Each table lists one segment's observations and actions, step by step. Which segment "
        "behaves better for the task? Pick 'equally good' when you cannot tell them apart, and "
        "'skip' when the tables do not show enough to judge."
    ),
}
"""Default instruction text per media kind; a run may override it."""

_STEM = re.compile(r"[A-Za-z0-9_]{1,64}")


@runtime_checkable
class PairPresenter(Protocol):
    """Turns a query (two segments) into the media dict a labelling page renders."""

    def present(
        self, segment0: Segment, segment1: Segment, folder: Path, stem: str
    ) -> dict[str, Any]:
        """The media dict of one query.

        Args:
            segment0: shown on the left (label 0.0 prefers it).
            segment1: shown on the right (label 1.0 prefers it).
            folder: the run's clip folder (it exists); a presenter that writes files writes
                them here, named from ``stem``.
            stem: a safe file stem for this query (letters, digits, underscore), e.g.
                ``"q000123"``.

        Returns:
            A JSON-able dict whose ``"kind"`` is one of :data:`MEDIA_KINDS`.
        """
        ...


def check_stem(stem: str) -> str:
    """Return ``stem`` if it is a safe file stem (1-64 letters, digits, underscores).

    Raises:
        ValueError: anything else (a path separator, a dot, a space, empty): file names built
            from it must stay inside the clip folder.
    """
    if not isinstance(stem, str) or _STEM.fullmatch(stem) is None:
        raise ValueError(
            f"file stem {stem!r} is not safe: use 1-64 letters, digits and underscores only "
            "(e.g. 'q000123'), so the files it names stay inside the clip folder"
        )
    return stem


def media_files(media: Mapping[str, Any]) -> tuple[str, ...]:
    """The bare file names a media dict refers to (clips: left and right; others: none).

    Raises:
        ValueError: an unknown kind, or a clip name that is not a bare file name.
    """
    kind = media.get("kind")
    if kind not in MEDIA_KINDS:
        raise ValueError(f"media kind {kind!r} is unknown: expected one of {MEDIA_KINDS}")
    if kind != "clips":
        return ()
    names = (media["left"], media["right"])
    for name in names:
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"clip {name!r} is not a bare file name inside the clip folder")
    return names


class GenericPresenter:
    """The fallback: each segment as a table of its observations and actions per step, rounded.

    Rows are ``[t, obs[t]..., act[t]...]`` for ``t < H`` and a last row ``[H, obs[H]...]`` with
    empty action cells, so the table shows where the segment ends. The true rewards are never
    shown. Works for any flat segments; wide observations make wide tables.

    Args:
        decimals: digits each number is rounded to.
    """

    def __init__(self, decimals: int = 3) -> None:
        if decimals < 0:
            raise ValueError(f"decimals must be >= 0, got {decimals}")
        self.decimals = decimals

    def present(
        self, segment0: Segment, segment1: Segment, folder: Path, stem: str
    ) -> dict[str, Any]:
        """``{"kind": "table", "columns", "left": {"rows"}, "right": {"rows"}}``."""
        check_stem(stem)
        shapes = {(s.obs.shape[1], s.acts.shape[1]) for s in (segment0, segment1)}
        if len(shapes) != 1:
            raise ValueError(
                f"the two segments have different (obs, act) sizes {sorted(shapes)}: a query "
                "compares two segments of the same task"
            )
        obs_dim, act_dim = shapes.pop()
        columns = ["step", *(f"obs[{i}]" for i in range(obs_dim))]
        columns += [f"act[{i}]" for i in range(act_dim)]
        return {
            "kind": "table",
            "columns": columns,
            "left": {"rows": self._rows(segment0)},
            "right": {"rows": self._rows(segment1)},
        }

    def _rows(self, segment: Segment) -> list[list[int | float | str]]:
        """``[H + 1]`` rows of ``1 + D_o + D_a`` cells."""
        obs = np.round(segment.obs.astype(np.float64), self.decimals).tolist()
        acts = np.round(segment.acts.astype(np.float64), self.decimals).tolist()
        blank: list[int | float | str] = [""] * segment.acts.shape[1]
        return [[t, *obs[t], *(acts[t] if t < len(acts) else blank)] for t in range(len(obs))]
