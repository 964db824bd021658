"""Records validate on construction and say what is wrong."""

from __future__ import annotations

import numpy as np
import pytest

from prefenv.records import Comparison, Segment, Trajectory, labelled


def _segment(h: int = 4, d_obs: int = 3, d_act: int = 2, value: float = 0.0) -> Segment:
    return Segment(np.full((h + 1, d_obs), value), np.zeros((h, d_act)), np.ones(h))


@pytest.mark.parametrize("label", [0.3, 2, -1, float("nan")])
def test_invalid_labels_are_rejected(label):
    with pytest.raises(ValueError, match=r"label must be one of \(0.0, 0.5, 1.0\) or None"):
        Comparison(_segment(), _segment(), label)


def test_valid_labels_and_skips():
    comparisons = [Comparison(_segment(), _segment(), lab) for lab in (0, 0.5, 1, None)]
    assert [c.label for c in comparisons] == [0.0, 0.5, 1.0, None]
    assert [c.skipped for c in comparisons] == [False, False, False, True]
    assert len(labelled(comparisons)) == 3


def test_segments_from_different_spaces_cannot_be_compared():
    with pytest.raises(ValueError, match="same spaces"):
        Comparison(_segment(d_obs=3), _segment(d_obs=4), 1.0)


def test_shape_and_finiteness_errors_name_the_problem():
    with pytest.raises(ValueError, match="needs 5 observations and 4 rewards"):
        Segment(np.zeros((4, 3)), np.zeros((4, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="NaN or inf"):
        Segment(np.full((5, 3), np.nan), np.zeros((4, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="2-D array"):
        Trajectory(np.zeros(5), np.zeros((4, 2)), np.zeros(4))


def test_trajectory_segment_cut_and_bounds():
    traj = Trajectory(np.arange(11.0)[:, None], np.zeros((10, 1)), np.arange(10.0))
    seg = traj.segment(3, 4)
    np.testing.assert_array_equal(seg.obs[:, 0], [3, 4, 5, 6, 7])
    np.testing.assert_array_equal(seg.next_obs[:, 0], [4, 5, 6, 7])
    assert seg.true_return == 3 + 4 + 5 + 6
    with pytest.raises(ValueError, match="does not fit"):
        traj.segment(8, 4)
    assert not seg.obs.flags.writeable  # records are frozen all the way down
