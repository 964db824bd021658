"""Annotator agreement and quality statistics for human preference labels.

Pure functions for the labelling app's stats page and JSON endpoint: three chance-corrected
agreement statistics (Cohen's kappa, Fleiss' kappa, Krippendorff's nominal alpha),
:func:`agreement_summary`, which picks those that apply to a set of
``(query_id, annotator, choice)`` labels, and :func:`annotator_summary` (labels, skips, time per
label, gold accuracy). Each statistic is undefined when the expected agreement is 1 (every label
the same category): NaN from the functions, None with a note in the summaries.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, TypedDict

import numpy as np

__all__ = [
    "SKIP",
    "AgreementSummary",
    "AnnotatorStats",
    "cohen_kappa",
    "fleiss_kappa",
    "krippendorff_alpha_nominal",
    "agreement_summary",
    "annotator_summary",
]

SKIP = "skip"
"""The choice that means "no answer": excluded from agreement, counted apart per annotator."""

_GOLD_CHOICE = {"left": 0.0, "right": 1.0}
"""The gold label a choice claims: 0.0 = the left segment is better, 1.0 = the right one."""

_CHOICES = frozenset(("left", "right", "equal", SKIP))


class AgreementSummary(TypedDict):
    """What :func:`agreement_summary` returns (JSON-ready: no NaN, None where missing)."""

    items_with_overlap: int
    pairwise_agreement: float | None
    cohen_kappa: float | None
    fleiss_kappa: float | None
    krippendorff_alpha: float | None
    note: str | None


class AnnotatorStats(TypedDict):
    """One annotator's row in :func:`annotator_summary`."""

    labels: int
    skips: int
    median_seconds: float | None
    mean_seconds: float | None
    gold_answered: int
    gold_correct: int
    gold_accuracy: float | None


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two raters who labelled the same items, item ``i`` being ``a[i], b[i]``.

    ``kappa = (p_o - p_e) / (1 - p_e)`` with ``p_o`` the share of items they agree on and
    ``p_e = sum_k p_a(k) p_b(k)`` the agreement expected from their marginals.

    Returns:
        kappa in ``[-1, 1]``; NaN when ``p_e = 1`` (both raters used one and the same category).

    Raises:
        ValueError: the sequences differ in length or are empty.
    """
    if len(a) != len(b):
        raise ValueError(
            f"cohen_kappa needs one label per item from each rater, got {len(a)} and {len(b)} "
            "labels: pass the two raters' labels of the same items, in the same order"
        )
    if not a:
        raise ValueError("cohen_kappa got no items: pass at least one item both raters labelled")
    n = len(a)
    agreed = sum(x == y for x, y in zip(a, b, strict=True))
    count_a, count_b = Counter(a), Counter(b)
    chance = sum(count_a[k] * count_b[k] for k in count_a)  # n^2 * p_e, an exact integer
    if chance == n * n:
        return math.nan
    return (agreed / n - chance / n**2) / (1.0 - chance / n**2)


def _count_matrix(rows: Sequence[Mapping[Any, int]]) -> np.ndarray:
    """Stack ``{category: count}`` rows into an ``[items, categories]`` int array (0 if absent)."""
    categories = list(dict.fromkeys(k for row in rows for k in row))
    return np.array([[row.get(k, 0) for k in categories] for row in rows], dtype=np.int64)


def fleiss_kappa(ratings: Sequence[Mapping[Any, int]] | np.ndarray) -> float:
    """Fleiss' kappa (Fleiss 1971) of ``n`` raters per item over nominal categories.

    Args:
        ratings: ``[items, categories]`` counts ``n_ij`` (how many raters put item ``i`` in
            category ``j``), as an array or as one ``{category: count}`` mapping per item.
            Every row must sum to the same ``n >= 2``.

    Returns:
        ``(P_bar - P_e) / (1 - P_e)``, with ``P_i = (sum_j n_ij^2 - n) / (n (n - 1))``,
        ``P_bar`` their mean, ``p_j`` the share of all ratings in category ``j`` and
        ``P_e = sum_j p_j^2``; NaN when ``P_e = 1`` (every rating is one category).

    Raises:
        ValueError: not a 2-D table of non-negative integers, no items, or items rated by
            different numbers of raters (use :func:`krippendorff_alpha_nominal` then).
    """
    counts = _count_matrix(ratings) if not isinstance(ratings, np.ndarray) else ratings
    if counts.ndim != 2 or counts.shape[0] == 0:
        raise ValueError(
            f"fleiss_kappa needs an [items, categories] count table with >= 1 item, got shape "
            f"{counts.shape}"
        )
    if not np.issubdtype(counts.dtype, np.integer) or (counts < 0).any():
        raise ValueError("fleiss_kappa needs non-negative integer counts of raters per category")
    per_item = counts.sum(axis=1)
    n = int(per_item[0])
    if (per_item != n).any() or n < 2:
        raise ValueError(
            f"fleiss_kappa needs the same number (>= 2) of raters on every item, got "
            f"{int(per_item.min())} to {int(per_item.max())}: use krippendorff_alpha_nominal "
            "for unequal numbers of raters"
        )
    totals = counts.sum(axis=0)
    if (totals**2).sum() == totals.sum() ** 2:  # P_e = 1: one category holds every rating
        return math.nan
    p_bar = float(((counts**2).sum(axis=1) - n).mean()) / (n * (n - 1))
    p_e = float(((totals / totals.sum()) ** 2).sum())
    return (p_bar - p_e) / (1.0 - p_e)


def krippendorff_alpha_nominal(units: Sequence[Sequence[Hashable]]) -> float:
    """Krippendorff's alpha for nominal labels, from the coincidence matrix.

    Each unit is the list of labels it got, from any number of raters. A unit with fewer than
    two labels is not pairable and is ignored. A unit ``u`` with ``m_u`` labels and counts
    ``n_uc`` adds ``(n_uc n_uk - [c = k] n_uc) / (m_u - 1)`` to the coincidence ``o_ck``.
    With ``n_c = sum_k o_ck`` and ``n = sum_c n_c``:
    ``alpha = 1 - (n - 1) * sum_{c != k} o_ck / sum_{c != k} n_c n_k``.

    Returns:
        alpha (1 = perfect agreement, 0 = chance); NaN when every pairable label is one category.

    Raises:
        ValueError: no unit has two or more labels.
    """
    pairable = [Counter(unit) for unit in units if len(unit) >= 2]
    if not pairable:
        raise ValueError(
            "krippendorff_alpha_nominal needs a unit with >= 2 labels: no item was labelled twice"
        )
    counts = _count_matrix(pairable).astype(np.float64)  # [units, categories]: n_uc
    weights = 1.0 / (counts.sum(axis=1) - 1.0)  # 1 / (m_u - 1)
    coincidence = (counts * weights[:, None]).T @ counts - np.diag(weights @ counts)
    n_c = coincidence.sum(axis=1)
    n = n_c.sum()
    expected = n**2 - (n_c**2).sum()  # sum_{c != k} n_c n_k
    if expected == 0:
        return math.nan
    observed = coincidence.sum() - np.trace(coincidence)  # sum_{c != k} o_ck
    return float(1.0 - (n - 1.0) * observed / expected)


def _finite_or_none(value: float, name: str, notes: list[str]) -> float | None:
    """``value``, or None with a note when the statistic is undefined (NaN)."""
    if math.isnan(value):
        notes.append(f"{name} is undefined: every overlapping label is the same choice")
        return None
    return value


def agreement_summary(labels: Iterable[tuple[Hashable, str, Hashable]]) -> AgreementSummary:
    """The agreement statistics that apply to a set of ``(query_id, annotator, choice)`` labels.

    Skips (``"skip"``) are left out. An item overlaps when two or more annotators answered it.

    - ``cohen_kappa``: when exactly two annotators answered the overlapping items and they
      share at least two of them.
    - ``fleiss_kappa``: when every overlapping item has the same number (>= 3) of answers.
    - ``krippendorff_alpha``: whenever an item overlaps (any number of raters).
    - ``pairwise_agreement``: share of agreeing pairs among all rater pairs on overlapping items.

    A statistic that does not apply, or is undefined, is None and ``note`` says why.

    Raises:
        ValueError: an annotator answered the same query twice.
    """
    answers: dict[Hashable, dict[str, Hashable]] = defaultdict(dict)
    for query_id, annotator, choice in labels:
        if choice == SKIP:
            continue
        if annotator in answers[query_id]:
            raise ValueError(
                f"annotator {annotator!r} answered query {query_id!r} twice: pass one label per "
                "(query, annotator), the first one the store accepted"
            )
        answers[query_id][annotator] = choice
    shared = [unit for unit in answers.values() if len(unit) >= 2]
    if not shared:
        note = "no query was labelled by two annotators: set overlap >= 2"
        return AgreementSummary(
            items_with_overlap=0,
            pairwise_agreement=None,
            cohen_kappa=None,
            fleiss_kappa=None,
            krippendorff_alpha=None,
            note=note,
        )
    notes: list[str] = []
    tallies = [Counter(unit.values()) for unit in shared]
    pairs = sum(math.comb(len(unit), 2) for unit in shared)
    agreeing = sum(math.comb(c, 2) for tally in tallies for c in tally.values())
    alpha = krippendorff_alpha_nominal([list(unit.values()) for unit in shared])
    return AgreementSummary(
        items_with_overlap=len(shared),
        pairwise_agreement=agreeing / pairs,
        cohen_kappa=_two_rater_kappa(shared, notes),
        fleiss_kappa=_many_rater_kappa(tallies, notes),
        krippendorff_alpha=_finite_or_none(alpha, "krippendorff_alpha", notes),
        note="; ".join(notes) or None,  # evaluated last, after every statistic added its note
    )


def _many_rater_kappa(tallies: list[Counter[Hashable]], notes: list[str]) -> float | None:
    """Fleiss' kappa when every overlapping item has the same number (>= 3) of raters."""
    raters = sorted({sum(tally.values()) for tally in tallies})
    if raters[0] != raters[-1]:
        notes.append(
            f"fleiss_kappa needs the same number of raters per item, got {raters[0]} to "
            f"{raters[-1]}: read krippendorff_alpha"
        )
        return None
    if raters[0] < 3:
        notes.append("fleiss_kappa needs >= 3 raters per item: read cohen_kappa or alpha")
        return None
    return _finite_or_none(fleiss_kappa(tallies), "fleiss_kappa", notes)


def _two_rater_kappa(shared: list[dict[str, Hashable]], notes: list[str]) -> float | None:
    """Cohen's kappa when exactly two annotators answered the overlapping items, else a note."""
    annotators = sorted({a for unit in shared for a in unit})
    if len(annotators) != 2:
        notes.append(
            f"cohen_kappa is for exactly two annotators, {len(annotators)} overlap: read "
            "fleiss_kappa or krippendorff_alpha"
        )
        return None
    if len(shared) < 2:
        notes.append("cohen_kappa needs >= 2 queries labelled by both annotators, got 1")
        return None
    first, second = annotators
    kappa = cohen_kappa([u[first] for u in shared], [u[second] for u in shared])
    return _finite_or_none(kappa, "cohen_kappa", notes)


def annotator_summary(rows: Iterable[Mapping[str, Any]]) -> dict[str, AnnotatorStats]:
    """Per annotator: labels, skips, seconds per label, and accuracy on gold questions.

    Args:
        rows: one mapping per answer with ``"annotator"`` (str), ``"choice"`` (``"left"``,
            ``"right"``, ``"equal"`` or ``"skip"``), ``"response_seconds"`` (float, or None
            when unknown) and ``"gold"`` (None for an ordinary query; 0.0 when the left
            segment is truly better, 1.0 when the right one is). Other keys are ignored.

    Returns:
        ``{annotator: AnnotatorStats}`` sorted by annotator. ``labels`` counts the non-skip
        answers and the seconds are over those (a skip is not a label). Gold rule: every answer
        to a gold question counts as answered; it is correct only when the choice names the
        better segment (``"left"`` for gold 0.0, ``"right"`` for 1.0), so ``"equal"`` and
        ``"skip"`` on a gold question are answered but wrong. ``gold_accuracy`` is
        correct / answered, None when no gold question was answered.

    Raises:
        ValueError: an unknown choice, a gold value other than None/0.0/1.0, or negative seconds.
    """
    answers: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["choice"] not in _CHOICES:
            raise ValueError(
                f"unknown choice {row['choice']!r}: expected one of {sorted(_CHOICES)}"
            )
        if row["gold"] not in (None, 0.0, 1.0):
            raise ValueError(
                f"gold must be None, 0.0 (left better) or 1.0 (right better), got {row['gold']!r}"
            )
        seconds = row["response_seconds"]
        if seconds is not None and not seconds >= 0:
            raise ValueError(f"response_seconds must be >= 0 or None, got {seconds!r}")
        answers[row["annotator"]].append(row)
    return {name: _annotator_stats(answers[name]) for name in sorted(answers)}


def _annotator_stats(rows: list[Mapping[str, Any]]) -> AnnotatorStats:
    """One annotator's :class:`AnnotatorStats` from its already validated answers."""
    labelled = [row for row in rows if row["choice"] != SKIP]
    seconds = [row["response_seconds"] for row in labelled if row["response_seconds"] is not None]
    gold = [row for row in rows if row["gold"] is not None]
    correct = sum(_GOLD_CHOICE.get(row["choice"]) == row["gold"] for row in gold)
    return AnnotatorStats(
        labels=len(labelled),
        skips=len(rows) - len(labelled),
        median_seconds=float(np.median(seconds)) if seconds else None,
        mean_seconds=float(np.mean(seconds)) if seconds else None,
        gold_answered=len(gold),
        gold_correct=correct,
        gold_accuracy=correct / len(gold) if gold else None,
    )
