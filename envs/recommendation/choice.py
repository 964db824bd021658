"""The simulator's random draws, as pure functions of uniforms.

:func:`choice_probabilities` is the multinomial-logit choice over a slate plus a no-click option;
:func:`sample_choices` draws one option per user from its probabilities by inverse CDF, and
:func:`distinct_items` turns uniforms into a step's distinct candidate items. Taking uniforms,
not generators, keeps a user's session a function of that user's own generator alone.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["choice_probabilities", "distinct_items", "sample_choices"]


def choice_probabilities(
    logits: np.ndarray, no_click_logit: float, position_bias: float = 1.0
) -> np.ndarray:
    """Multinomial-logit choice over a slate plus a no-click option.

    Args:
        logits: ``[B, S]`` item logits by slot; ``-inf`` marks an empty slot.
        no_click_logit: logit of not clicking.
        position_bias: slot ``k``'s weight is multiplied by ``position_bias ** k``.

    Returns:
        ``[B, S + 1]`` probabilities; column ``S`` is the no-click probability.
    """
    logits = np.asarray(logits, dtype=np.float64)
    b, s = logits.shape
    full = np.empty((b, s + 1))
    full[:, :s] = logits
    if position_bias != 1.0:
        full[:, :s] += np.arange(s) * math.log(position_bias)
    full[:, s] = no_click_logit
    full -= full.max(axis=1, keepdims=True)
    np.exp(full, out=full)
    full /= full.sum(axis=1, keepdims=True)
    return full


def sample_choices(probs: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw of one option per row: ``[B, S + 1]``, ``[B]`` -> ``[B]`` in ``0..S``.

    ``S`` (the last column) means no click; options with probability 0 are never drawn.
    """
    cdf = np.cumsum(probs, axis=1)
    picks = (cdf <= uniforms[:, None]).sum(axis=1)
    return np.minimum(picks, probs.shape[1] - 1)


def distinct_items(uniforms: np.ndarray, n_items: int) -> np.ndarray:
    """Uniforms ``[..., C]`` -> catalog ids ``floor(u * n_items)``, made distinct along the last axis.

    A repeat of an earlier id in the same row is replaced by the next id (mod ``n_items``) not yet
    in the row, so the result is a deterministic function of the uniforms (needs
    ``n_items >= C``). Repeats are rare in large catalogs, so ids stay close to uniform.
    """
    items = np.minimum((uniforms * n_items).astype(np.int64), n_items - 1)
    flat = items.reshape(-1, items.shape[-1])
    ordered = np.sort(flat, axis=1)
    bad = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
    if bad.size == 0:
        return items
    rows = flat[bad]
    for k in range(1, rows.shape[1]):
        while True:
            clash = (rows[:, :k] == rows[:, k : k + 1]).any(axis=1)
            if not clash.any():
                break
            rows[clash, k] = (rows[clash, k] + 1) % n_items
    flat[bad] = rows
    return items
