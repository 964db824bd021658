"""The presenter contract of the core: safe stems, media file names, the generic table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from prefenv.presenters import (
    INSTRUCTIONS,
    MEDIA_KINDS,
    GenericPresenter,
    PairPresenter,
    check_stem,
    media_files,
)
from prefenv.records import Segment

HIDDEN = 987.654  # a true reward no observation or action equals


def _segment(steps: int, obs_dim: int = 2, act_dim: int = 1, offset: float = 0.0) -> Segment:
    obs = offset + np.arange((steps + 1) * obs_dim, dtype=np.float32).reshape(steps + 1, -1) / 7
    acts = -np.arange(steps * act_dim, dtype=np.float32).reshape(steps, -1) / 3
    return Segment(obs=obs, acts=acts, true_rewards=np.full(steps, HIDDEN, dtype=np.float32))


@pytest.mark.parametrize("stem", ["q000123", "Q_1", "a" * 64])
def test_safe_stems_pass(stem: str) -> None:
    assert check_stem(stem) == stem


@pytest.mark.parametrize("stem", ["", "../q1", "q1/x", "q.1", "q 1", "q1\n", "a" * 65, "é"])
def test_unsafe_stems_are_refused(stem: str) -> None:
    with pytest.raises(ValueError, match="letters, digits and underscores"):
        check_stem(stem)


def test_media_files_names_the_clips_and_refuses_paths() -> None:
    clips = {"kind": "clips", "left": "q1_left.mp4", "right": "q1_right.mp4", "fps": 20.0}
    assert media_files(clips) == ("q1_left.mp4", "q1_right.mp4")
    assert media_files({"kind": "text", "prompt": "", "left": "a", "right": "b"}) == ()
    for bad in ("../q1_left.mp4", "sub/q1.mp4", "..", ""):
        with pytest.raises(ValueError, match="bare file name"):
            media_files({**clips, "right": bad})
    with pytest.raises(ValueError, match="unknown"):
        media_files({"kind": "video"})


def test_every_kind_has_an_instruction() -> None:
    assert set(INSTRUCTIONS) == set(MEDIA_KINDS)
    assert all(len(text.split()) > 20 for text in INSTRUCTIONS.values())


def test_generic_table_shows_obs_and_acts_per_step_never_the_true_reward(tmp_path: Path) -> None:
    presenter = GenericPresenter(decimals=2)
    assert isinstance(presenter, PairPresenter)
    left, right = _segment(3), _segment(4, offset=1.0)
    media = presenter.present(left, right, tmp_path, "q7")
    assert json.loads(json.dumps(media)) == media  # plain JSON
    assert media["kind"] == "table"
    assert media["columns"] == ["step", "obs[0]", "obs[1]", "act[0]"]
    rows = media["left"]["rows"]
    assert len(rows) == 4 and len(media["right"]["rows"]) == 5  # H + 1 rows: where it ends
    assert rows[1] == [1, round(2 / 7, 2), round(3 / 7, 2), round(-1 / 3, 2)]
    assert rows[-1] == [3, round(6 / 7, 2), 1.0, ""]  # the last observation has no action
    assert media["right"]["rows"][0][1] == 1.0  # right is segment1
    cells = [c for side in ("left", "right") for row in media[side]["rows"] for c in row]
    assert HIDDEN not in cells and round(HIDDEN, 2) not in cells
    assert list(tmp_path.iterdir()) == []  # a table writes no file


def test_generic_table_refuses_mismatched_segments_and_unsafe_stems(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="different"):
        GenericPresenter().present(_segment(3), _segment(3, obs_dim=3), tmp_path, "q1")
    with pytest.raises(ValueError, match="not safe"):
        GenericPresenter().present(_segment(3), _segment(3), tmp_path, "../q1")
