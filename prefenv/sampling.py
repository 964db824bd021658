"""Segment sampling and query selection: which pairs the teacher is asked about.

Pairs are cut from recorded trajectories as in B-Pref (Lee et al. 2021): two episodes drawn
uniformly with replacement, each with an independent uniform start. Active selection draws a pool
of ``oversample`` times more candidates and keeps the ones a reward ensemble is least sure about:

- ``"uniform"``: the first ``n_queries`` random pairs.
- ``"disagreement"``: top-k by the std across ensemble members of
  ``P_k(sigma1 > sigma0) = sigmoid(R1_k - R0_k)``.
- ``"entropy"``: top-k by the binary entropy of the member-mean probability.

How a segment's episode is drawn (``draw``):

- ``"episode"`` (B-Pref): every eligible episode equally likely, then a uniform start in it.
- ``"step"``: every eligible window equally likely, i.e. an episode in proportion to its number of
  starts. The two agree when all episodes have one length (HalfCheetah, DMControl). Where episodes
  end early (Walker2d and Hopper falling) they do not: the query pool keeps every episode of the
  run, and the initial policy's and the early agents' many short falls outnumber the later long
  runs, so per episode most queries are about falling; per step, a query lands on a stretch of
  behaviour as often as the pool holds it.

B-Pref uses uniform selection for the first round (no reward model yet); the preference loop
decides that, not this module.

Policy-aligned queries (QPA, Hu et al., ICLR 2024, ``huxiao09/QPA``): with ``window=N`` only the
``N`` most recent trajectories are eligible (the list is ordered oldest first, as
:meth:`prefenv.loop.PreferenceLoop.query_pool` returns it), so the teacher is asked about what the
current policy does rather than about behaviour it has left behind. Every method applies the
window before it draws candidates. QPA keeps its queries in a FIFO of the last
``max_reward_buffer_size`` episodes: 10 on DMControl (1,000-step episodes, a query round every
20k-30k steps), 30-60 on Meta-World (500-step episodes, a round every 5k-20k steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from prefenv.records import Segment, Trajectory

__all__ = [
    "QPA_WINDOW",
    "QUERY_METHODS",
    "SEGMENT_DRAWS",
    "MemberReturns",
    "recent_trajectories",
    "sample_segment_pairs",
    "select_queries",
]

QUERY_METHODS: tuple[str, ...] = ("uniform", "disagreement", "entropy")
"""Names accepted by :func:`select_queries`."""

SEGMENT_DRAWS: tuple[str, ...] = ("episode", "step")
"""How :func:`sample_segment_pairs` draws each segment's episode (see the module docstring)."""

QPA_WINDOW: int = 10  # QPA run_QPA.sh max_reward_buffer_size for every DMControl task
"""QPA's policy-aligned window on DMControl: queries come from the 10 most recent episodes."""


def recent_trajectories(
    trajectories: Sequence[Trajectory], window: int | None
) -> Sequence[Trajectory]:
    """The ``window`` most recent of ``trajectories`` (ordered oldest first); all for ``None``.

    A window larger than the list keeps the whole list.

    Raises:
        ValueError: ``window`` is below 1.
    """
    if window is None:
        return trajectories
    if isinstance(window, bool) or int(window) != window or window < 1:
        raise ValueError(
            f"window must be a whole number of trajectories >= 1 (or None for all of them), got "
            f"{window!r}: QPA uses the 10 most recent episodes"
        )
    return trajectories[max(len(trajectories) - int(window), 0) :]


def sample_segment_pairs(
    trajectories: Sequence[Trajectory],
    n_pairs: int,
    segment_length: int = 50,
    *,
    rng: np.random.Generator,
    cut_at_termination: bool = False,
    window: int | None = None,
    draw: str = "episode",
) -> list[tuple[Segment, Segment]]:
    """Cut random segment pairs out of recorded trajectories.

    Each segment comes from a trajectory drawn with replacement among those with at least
    ``segment_length`` steps (uniformly, or for ``draw="step"`` in proportion to its number of
    starts), starting at a uniform ``start`` in ``[0, T - H]`` (every step can be covered; BPref's
    ``[0, T - H)`` never shows an episode's last window).

    With ``cut_at_termination``, episodes that *terminated* (a fall in Hopper, a user leaving) also
    start anywhere in ``[0, T - 1]``, and a window that reaches the terminal step is cut there: a
    shorter segment that ends with the fall, whose missing steps are the absorbing state that pays
    nothing (the agent, too, earns nothing after termination). Only such pairs tell the teacher
    and the reward model what staying alive is worth: between two full ``H``-step windows a
    per-step survival bonus cancels out of every comparison, and a reward fit to those alone
    cannot tell a policy that falls from one that keeps going. Episodes shorter than ``H`` are
    usable this way too (the random policy's early falls).

    Args:
        trajectories: recorded episodes, ``T_i`` steps each.
        n_pairs: number of pairs ``N``.
        segment_length: ``H``, steps per segment.
        rng: the only source of randomness.
        cut_at_termination: let windows of terminated episodes run into the termination and
            end there, shorter (see above). Mixed lengths need a teacher with ``gamma = 1``.
        window: QPA's policy-aligned selection: only the ``window`` most recent trajectories
            (the last ones of ``trajectories``, which is ordered oldest first) are eligible;
            ``None`` keeps them all. See :func:`recent_trajectories`.
        draw: ``"episode"`` (every eligible episode equally likely) or ``"step"`` (every
            window equally likely); see :data:`SEGMENT_DRAWS`.

    Returns:
        ``N`` pairs of segments of ``H`` steps each (or shorter, ending at a termination).

    Raises:
        ValueError: no eligible trajectory has ``H`` steps, ``window < 1``, an unknown ``draw``,
            or invalid sizes.
    """
    if draw not in SEGMENT_DRAWS:
        raise ValueError(f"draw must be one of {', '.join(SEGMENT_DRAWS)}, got {draw!r}")
    if n_pairs < 0:
        raise ValueError(f"n_pairs must be >= 0, got {n_pairs}")
    if segment_length < 1:
        raise ValueError(f"segment_length must be >= 1, got {segment_length}")
    trajectories = recent_trajectories(trajectories, window)
    if len(trajectories) == 0:
        raise ValueError("no trajectories to sample segments from: record some rollouts first")
    within = "" if window is None else f" among the {len(trajectories)} most recent (window)"

    def cut(t: Trajectory) -> bool:
        return cut_at_termination and t.terminated and len(t) > 0

    eligible = [t for t in trajectories if len(t) >= segment_length or cut(t)]
    if not eligible:
        longest = max(len(t) for t in trajectories)
        raise ValueError(
            f"no trajectory{within} has segment_length={segment_length} steps (the longest of "
            f"{len(trajectories)} has {longest}): use segment_length <= {longest}, record "
            "longer episodes or widen the window"
        )
    if n_pairs == 0:
        return []
    lengths = np.array([len(t) for t in eligible])
    # Exclusive upper bound of the start: T - H + 1, or T where windows may reach the termination.
    start_end = np.array(
        [len(t) if cut(t) else len(t) - segment_length + 1 for t in eligible], dtype=np.int64
    )
    if draw == "episode":
        index = rng.integers(0, len(eligible), size=(n_pairs, 2))
    else:
        index = rng.choice(len(eligible), size=(n_pairs, 2), p=start_end / start_end.sum())
    starts = rng.integers(0, start_end[index])
    seg_lengths = np.minimum(segment_length, lengths[index] - starts)
    segments = [
        [eligible[i].segment(int(s), int(h)) for i, s, h in zip(row_i, row_s, row_h, strict=True)]
        for row_i, row_s, row_h in zip(index, starts, seg_lengths, strict=True)
    ]
    return [(pair[0], pair[1]) for pair in segments]


@runtime_checkable
class MemberReturns(Protocol):
    """What the active methods need from a reward ensemble (``RewardEnsemble`` has it)."""

    def member_segment_returns(self, segments: Sequence[Segment]) -> Tensor:
        """``[K, B]`` each member's predicted return of each segment."""
        ...


def _require_ensemble(reward_model: MemberReturns | None, method: str) -> None:
    if not isinstance(reward_model, MemberReturns):
        raise TypeError(
            f"method={method!r} needs a reward ensemble with member_segment_returns(segments) -> "
            f"[K, B], got {type(reward_model).__name__}: pass an ensemble reward model or use "
            "method='uniform'"
        )


def _member_returns(
    reward_model: MemberReturns, segments: Sequence[Segment], method: str
) -> np.ndarray:
    """``[K, B]`` float64 segment returns per ensemble member, computed without gradients."""
    with torch.no_grad():
        returns = reward_model.member_segment_returns(segments)
    returns = torch.as_tensor(returns).detach().to("cpu", torch.float64).numpy()
    if returns.ndim != 2 or returns.shape[1] != len(segments):
        raise ValueError(
            f"member_segment_returns must return [K, B] = [members, {len(segments)}], got shape "
            f"{tuple(returns.shape)}"
        )
    if method == "disagreement" and returns.shape[0] < 2:
        raise ValueError(
            f"method='disagreement' needs at least 2 ensemble members, the reward model has "
            f"{returns.shape[0]}: use an ensemble or method='entropy'"
        )
    return returns


def _scores(returns: np.ndarray, n_candidates: int, method: str) -> np.ndarray:
    """``[M]`` uncertainty of each candidate pair from ``[K, 2M]`` member returns."""
    diff = returns[:, n_candidates:] - returns[:, :n_candidates]  # R1_k - R0_k, [K, M]
    prob = np.exp(-np.logaddexp(0.0, -diff))  # sigmoid, [K, M]
    if method == "disagreement":
        return prob.std(axis=0)
    p = prob.mean(axis=0)
    # Binary entropy in nats; 0 * log 0 = 0.
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = -(p * np.log(p)) - (1.0 - p) * np.log1p(-p)
    return np.nan_to_num(terms, nan=0.0)


def select_queries(
    trajectories: Sequence[Trajectory],
    n_queries: int,
    method: str = "uniform",
    reward_model: MemberReturns | None = None,
    segment_length: int = 50,
    oversample: int = 10,
    *,
    rng: np.random.Generator,
    cut_at_termination: bool = False,
    window: int | None = None,
    draw: str = "episode",
) -> list[tuple[Segment, Segment]]:
    """Choose the segment pairs to show the teacher (``cut_at_termination``, ``window`` and
    ``draw``: see :func:`sample_segment_pairs`).

    Args:
        trajectories: recorded episodes.
        n_queries: number of pairs ``k`` to return.
        method: one of :data:`QUERY_METHODS`.
        reward_model: for ``"disagreement"`` and ``"entropy"``, an ensemble providing
            ``member_segment_returns(segments) -> torch.Tensor [K, B]``; ignored for ``"uniform"``.
        segment_length: ``H``, steps per segment.
        oversample: candidate pool size as a multiple of ``n_queries`` (B-Pref uses 10).
        rng: the only source of randomness.
        window: only the ``window`` most recent trajectories are eligible (QPA's
            policy-aligned queries, :data:`QPA_WINDOW`); ``None`` keeps all. Every method
            applies it: the active ones draw their whole candidate pool from the window.

    Returns:
        ``k`` pairs; for the active methods, most uncertain first.

    Raises:
        ValueError: unknown method, ``window < 1`` or invalid sizes.
        TypeError: an active method without an ensemble reward model.
    """
    if method not in QUERY_METHODS:
        raise ValueError(
            f"unknown query method {method!r}: choose one of {', '.join(QUERY_METHODS)}"
        )
    if method == "uniform":
        return sample_segment_pairs(
            trajectories,
            n_queries,
            segment_length,
            rng=rng,
            cut_at_termination=cut_at_termination,
            window=window,
            draw=draw,
        )
    if oversample < 1:
        raise ValueError(f"oversample must be >= 1, got {oversample}")
    _require_ensemble(reward_model, method)
    candidates = sample_segment_pairs(
        trajectories,
        n_queries * oversample,
        segment_length,
        rng=rng,
        cut_at_termination=cut_at_termination,
        window=window,
        draw=draw,
    )
    if not candidates:
        return []
    segments = [pair[0] for pair in candidates] + [pair[1] for pair in candidates]
    returns = _member_returns(reward_model, segments, method)
    scores = _scores(returns, len(candidates), method)
    order = np.argsort(-scores, kind="stable")[:n_queries]
    return [candidates[i] for i in order]
