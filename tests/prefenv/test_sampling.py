"""Segment sampling and ensemble-based query selection."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from prefenv.records import Segment, Trajectory
from prefenv.sampling import QUERY_METHODS, sample_segment_pairs, select_queries


def _trajectory(
    steps: int, traj_id: int, rng: np.random.Generator | None = None, terminated: bool = False
) -> Trajectory:
    """obs[:, 0] = time index, obs[:, 1] = trajectory id, so every segment tells where it came from."""
    obs = np.stack([np.arange(steps + 1), np.full(steps + 1, traj_id)], axis=1)
    rewards = rng.normal(size=steps) if rng is not None else np.arange(steps, dtype=float)
    return Trajectory(obs, np.zeros((steps, 1)), rewards, terminated=terminated)


def _origin(segment: Segment) -> tuple[int, int]:
    return int(segment.obs[0, 1]), int(segment.obs[0, 0])


class FakeEnsemble:
    """Member k's segment return is ``scales[k] * true_return + offsets[k]``."""

    def __init__(self, scales: Sequence[float], offsets: Sequence[float] | None = None) -> None:
        self.scales = torch.tensor(scales, dtype=torch.float32)[:, None]
        offsets = offsets if offsets is not None else [0.0] * len(scales)
        self.offsets = torch.tensor(offsets, dtype=torch.float32)[:, None]
        self.calls: list[tuple[int, bool]] = []

    def member_segment_returns(self, segments: Sequence[Segment]) -> torch.Tensor:
        self.calls.append((len(segments), torch.is_grad_enabled()))
        returns = torch.tensor([s.true_return for s in segments], dtype=torch.float32)
        return self.scales * returns[None, :] + self.offsets  # [K, B]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# --- sample_segment_pairs ----------------------------------------------------------------------


def test_segments_have_the_length_and_fit_their_trajectory() -> None:
    lengths = {0: 12, 1: 30, 2: 50}
    trajectories = [_trajectory(steps, i) for i, steps in lengths.items()]
    pairs = sample_segment_pairs(trajectories, 300, segment_length=12, rng=np.random.default_rng(0))
    assert len(pairs) == 300
    for pair in pairs:
        assert len(pair) == 2
        for segment in pair:
            traj_id, start = _origin(segment)
            assert len(segment) == 12 and segment.obs.shape == (13, 2)
            assert 0 <= start <= lengths[traj_id] - 12
            np.testing.assert_array_equal(segment.obs[:, 0], start + np.arange(13))
            np.testing.assert_array_equal(segment.true_rewards, start + np.arange(12))


def test_sampling_is_roughly_uniform_over_trajectories_and_starts() -> None:
    # Trajectory 3 is too short for H = 10 and must never appear.
    trajectories = [_trajectory(20, 0), _trajectory(25, 1), _trajectory(40, 2), _trajectory(5, 3)]
    n = 6000
    pairs = sample_segment_pairs(trajectories, n, segment_length=10, rng=np.random.default_rng(1))
    origins = np.array([_origin(s) for pair in pairs for s in pair])  # [2N, 2]
    total = len(origins)
    ids, counts = np.unique(origins[:, 0], return_counts=True)
    assert ids.tolist() == [0, 1, 2]
    p = 1 / 3
    assert np.all(np.abs(counts / total - p) < 4 * np.sqrt(p * (1 - p) / total))
    # Starts of trajectory 0 are uniform over 0..10 (11 values, both ends included).
    starts = origins[origins[:, 0] == 0, 1]
    values, counts = np.unique(starts, return_counts=True)
    assert values.tolist() == list(range(11))
    q = 1 / 11
    assert np.all(np.abs(counts / len(starts) - q) < 5 * np.sqrt(q * (1 - q) / len(starts)))
    # Both segments of a pair are drawn independently: same trajectory about 1/3 of the time.
    same = np.mean([_origin(a)[0] == _origin(b)[0] for a, b in pairs])
    assert abs(same - p) < 4 * np.sqrt(p * (1 - p) / n)


def test_sampling_is_deterministic_for_a_seed() -> None:
    trajectories = [_trajectory(30, i) for i in range(4)]

    def origins(seed: int) -> list:
        pairs = sample_segment_pairs(trajectories, 50, 8, rng=np.random.default_rng(seed))
        return [(_origin(a), _origin(b)) for a, b in pairs]

    assert origins(3) == origins(3)
    assert origins(3) != origins(4)


def test_segment_as_long_as_the_trajectory() -> None:
    pairs = sample_segment_pairs([_trajectory(8, 0)], 5, 8, rng=np.random.default_rng(0))
    assert all(_origin(s) == (0, 0) for pair in pairs for s in pair)


def test_short_trajectories_raise_a_helpful_error() -> None:
    trajectories = [_trajectory(10, 0), _trajectory(30, 1)]
    with pytest.raises(ValueError, match=r"longest of 2 has 30.*segment_length <= 30"):
        sample_segment_pairs(trajectories, 4, segment_length=50, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="no trajectories"):
        sample_segment_pairs([], 4, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="n_pairs"):
        sample_segment_pairs(trajectories, -1, 5, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="segment_length"):
        sample_segment_pairs(trajectories, 1, 0, rng=np.random.default_rng(0))
    assert sample_segment_pairs(trajectories, 0, 5, rng=np.random.default_rng(0)) == []


# --- select_queries ----------------------------------------------------------------------------


def _pool(trajectories: list[Trajectory], n: int, seed: int) -> list[tuple[Segment, Segment]]:
    """The candidate pool select_queries draws first from the same generator state."""
    return sample_segment_pairs(trajectories, n, 10, rng=np.random.default_rng(seed))


def _keys(pairs: list[tuple[Segment, Segment]]) -> list[tuple[tuple[int, int], ...]]:
    return [(_origin(a), _origin(b)) for a, b in pairs]


@pytest.fixture
def trajectories() -> list[Trajectory]:
    rng = np.random.default_rng(11)
    return [_trajectory(60, i, rng) for i in range(5)]


def test_uniform_is_plain_sampling(trajectories: list[Trajectory]) -> None:
    chosen = select_queries(trajectories, 20, segment_length=10, rng=np.random.default_rng(5))
    assert _keys(chosen) == _keys(_pool(trajectories, 20, seed=5))
    assert QUERY_METHODS == ("uniform", "disagreement", "entropy")


def test_disagreement_picks_the_pairs_members_disagree_on_most(
    trajectories: list[Trajectory],
) -> None:
    # Members see returns with opposite signs: P_0 = sigmoid(d), P_1 = sigmoid(-d), so the std
    # across members, |sigmoid(d) - sigmoid(-d)| / 2, grows with |d| = |R1 - R0|.
    model = FakeEnsemble(scales=[1.0, -1.0])
    chosen = select_queries(
        trajectories,
        8,
        "disagreement",
        model,
        segment_length=10,
        oversample=10,
        rng=np.random.default_rng(6),
    )
    pool = _pool(trajectories, 80, seed=6)
    diffs = np.array([b.true_return - a.true_return for a, b in pool])
    expected = [pool[i] for i in np.argsort(-np.abs(diffs))[:8]]
    assert _keys(chosen) == _keys(expected)
    assert model.calls == [(160, False)]  # one batched call, gradients off
    # The chosen pairs are far more contested than the pool's typical pair.
    chosen_margin = [abs(_sigmoid(b.true_return - a.true_return) - 0.5) for a, b in chosen]
    assert min(chosen_margin) > np.median(np.abs(_sigmoid(diffs) - 0.5))


def test_disagreement_ties_keep_the_pool_order(trajectories: list[Trajectory]) -> None:
    # Identical members agree on every pair: every score is 0 and the stable sort keeps the pool.
    agreeing = FakeEnsemble(scales=[1.0, 1.0])
    chosen = select_queries(
        trajectories, 5, "disagreement", agreeing, segment_length=10, rng=np.random.default_rng(2)
    )
    assert _keys(chosen) == _keys(_pool(trajectories, 50, seed=2)[:5])


def test_entropy_picks_pairs_with_mean_probability_near_half(
    trajectories: list[Trajectory],
) -> None:
    model = FakeEnsemble(scales=[1.0, 0.8, 1.2])
    chosen = select_queries(
        trajectories,
        8,
        "entropy",
        model,
        segment_length=10,
        oversample=10,
        rng=np.random.default_rng(7),
    )
    pool = _pool(trajectories, 80, seed=7)
    diffs = np.array([b.true_return - a.true_return for a, b in pool])
    mean_prob = np.mean([_sigmoid(s * diffs) for s in (1.0, 0.8, 1.2)], axis=0)
    expected = [pool[i] for i in np.argsort(np.abs(mean_prob - 0.5))[:8]]
    assert _keys(chosen) == _keys(expected)
    chosen_prob = [
        np.mean([_sigmoid(s * (b.true_return - a.true_return)) for s in (1.0, 0.8, 1.2)])
        for a, b in chosen
    ]
    assert max(abs(p - 0.5) for p in chosen_prob) < np.median(np.abs(mean_prob - 0.5))


def test_active_methods_need_an_ensemble(trajectories: list[Trajectory]) -> None:
    for model in (None, object()):
        with pytest.raises(TypeError, match="method='uniform'"):
            select_queries(trajectories, 4, "entropy", model, 10, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 2 ensemble members"):
        select_queries(
            trajectories, 4, "disagreement", FakeEnsemble([1.0]), 10, rng=np.random.default_rng(0)
        )
    assert (
        len(
            select_queries(
                trajectories, 4, "entropy", FakeEnsemble([1.0]), 10, rng=np.random.default_rng(0)
            )
        )
        == 4
    )


def test_member_returns_shape_is_checked(trajectories: list[Trajectory]) -> None:
    class Flat:
        def member_segment_returns(self, segments: Sequence[Segment]) -> torch.Tensor:
            return torch.zeros(len(segments))

    with pytest.raises(ValueError, match=r"\[K, B\]"):
        select_queries(trajectories, 2, "entropy", Flat(), 10, rng=np.random.default_rng(0))


def test_unknown_method_lists_the_methods(trajectories: list[Trajectory]) -> None:
    with pytest.raises(ValueError, match="choose one of uniform, disagreement, entropy"):
        select_queries(trajectories, 2, "random", rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="oversample"):
        select_queries(
            trajectories,
            2,
            "entropy",
            FakeEnsemble([1.0]),
            10,
            oversample=0,
            rng=np.random.default_rng(0),
        )


def _ends_at(segment: Segment, trajectory: Trajectory) -> bool:
    return bool(np.array_equal(segment.obs[-1], trajectory.obs[-1]))


def test_windows_of_terminated_episodes_are_cut_at_the_termination() -> None:
    rng = np.random.default_rng(0)
    fell = _trajectory(7, 0, terminated=True)
    fell_late = _trajectory(60, 1, terminated=True)
    cut = _trajectory(5, 2)  # a time-limit cut shorter than H: never usable
    long = _trajectory(60, 3)  # a time-limit cut: only full windows
    with pytest.raises(ValueError, match="no trajectory has segment_length=20"):
        sample_segment_pairs([fell, cut], 3, segment_length=20, rng=rng)
    pairs = sample_segment_pairs(
        [fell, fell_late, cut, long], 2000, segment_length=20, rng=rng, cut_at_termination=True
    )
    by_origin: dict[int, list[Segment]] = {}
    for segment in (seg for pair in pairs for seg in pair):
        by_origin.setdefault(_origin(segment)[0], []).append(segment)
    assert set(by_origin) == {0, 1, 3}  # the 5-step time-limit cut is never used
    # A time-limit cut is not a termination: full windows only, starts in [0, T - H].
    assert {len(s) for s in by_origin[3]} == {20}
    assert max(_origin(s)[1] for s in by_origin[3]) == 40
    # Terminated episodes start anywhere in [0, T - 1]; a window that reaches the end stops there.
    for trajectory, segments in ((fell, by_origin[0]), (fell_late, by_origin[1])):
        starts = {_origin(s)[1] for s in segments}
        assert starts == set(range(len(trajectory)))
        for segment in segments:
            start = _origin(segment)[1]
            assert len(segment) == min(20, len(trajectory) - start)
            assert _ends_at(segment, trajectory) == (start + 20 >= len(trajectory))
            np.testing.assert_array_equal(
                segment.true_rewards, trajectory.true_rewards[start : start + len(segment)]
            )
    # Off: the short terminated episode is unusable and every window is whole.
    plain = sample_segment_pairs([fell, fell_late, long], 300, segment_length=20, rng=rng)
    assert {len(seg) for pair in plain for seg in pair} == {20}
    assert all(_origin(seg)[0] != 0 for pair in plain for seg in pair)
