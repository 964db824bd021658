"""The application's presenter registry: an env's metadata names its presenter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from envs.mujoco.clips import ClipPresenter
from envs.recommendation.sessions import SessionPresenter
from envs.text.presenter import TextPresenter
from prefenv.app.media import presenter_for, presenter_of_env
from prefenv.presenters import GenericPresenter
from prefenv.records import Segment


@pytest.mark.parametrize(
    ("env_id", "env_kwargs", "cls"),
    [
        ("prefenv/HalfCheetah-v0", {"objective_weights": {"reward_forward": 1.0}}, ClipPresenter),
        ("prefenv/RecSingle-v0", {"n_candidates": 5}, SessionPresenter),
        ("prefenv/TextKeyword-v0", {"max_new_tokens": 8}, TextPresenter),
        ("CartPole-v1", {}, GenericPresenter),
    ],
)
def test_each_family_gets_the_presenter_its_env_names(env_id, env_kwargs, cls) -> None:
    presenter = presenter_for(env_id, env_kwargs)
    assert type(presenter) is cls


def test_the_run_env_kwargs_reach_the_presenter() -> None:
    presenter = presenter_for("prefenv/RecSingle-v0", {"n_candidates": 5})
    assert presenter.layout.n_candidates == 5 and presenter.columns[1] == "slot 1"


def test_an_env_without_a_presenter_gets_the_generic_table(point_env, tmp_path: Path) -> None:
    presenter = presenter_of_env(point_env, "Point-v0")
    segment = Segment(np.zeros((3, 2)), np.ones((2, 2)), np.zeros(2))
    media = presenter.present(segment, segment, tmp_path, "q1")
    assert media["kind"] == "table" and len(media["left"]["rows"]) == 3


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("prefenv.presenters", "not 'module:attr'"),
        ("no_such_module_xyz:Presenter", "cannot be loaded"),
        ("prefenv.presenters:NoSuchPresenter", "cannot be loaded"),
        ("prefenv.presenters:MEDIA_KINDS", "not callable"),
        ("builtins:repr", "no present"),
    ],
)
def test_a_broken_presenter_name_is_a_clear_error(point_env, target: str, message: str) -> None:
    point_env.metadata = {**point_env.metadata, "prefenv_presenter": target}
    with pytest.raises(ValueError, match=message) as error:
        presenter_of_env(point_env, "Point-v0")
    assert "Point-v0" in str(error.value)
