"""Recommendation query tables: slates, clicks and leaves decoded from flat segments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers the ids)
from envs.recommendation import SimConfig
from envs.recommendation.sessions import SessionPresenter
from prefenv.presenters import PairPresenter
from prefenv.records import Trajectory
from prefenv.spaces import FlatSpec


def _session(env: gym.Env, seed: int) -> tuple[Trajectory, list[dict[str, Any]], list[np.ndarray]]:
    """A random-slate session: its flat trajectory, step infos and each step's candidate ids."""
    spec = FlatSpec(env.observation_space, env.action_space)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    observations, actions, infos, candidates = [obs], [], [], []
    done = terminated = False
    while not done:
        candidates.append(env.unwrapped.sim.candidates()[0].copy())
        action = env.action_space.sample()
        obs, _, terminated, truncated, info = env.step(action)
        observations.append(obs)
        actions.append(action)
        infos.append(info)
        done = terminated or truncated
    trajectory = Trajectory(
        spec.obs(np.array(observations), len(observations)),
        spec.acts(np.array(actions), len(actions)),
        np.array([info["true_reward"] for info in infos]),
        terminated=terminated,
    )
    return trajectory, infos, candidates


def _expected_slot_cell(item: int, presenter: SessionPresenter) -> str:
    topic, minutes = presenter.catalog.cluster[item], presenter.catalog.length[item]
    return f"item {item} · topic {topic} · {minutes:.1f} min"


@pytest.mark.parametrize("env_id", ["prefenv/RecSlate-v0", "prefenv/RecSingle-v0"])
def test_rows_decode_slates_clicks_and_watch_time(env_id: str) -> None:
    env = gym.make(env_id)
    assert env.metadata["prefenv_presenter"] == "envs.recommendation.sessions:SessionPresenter"
    presenter = SessionPresenter(env)
    assert isinstance(presenter, PairPresenter)
    trajectory, infos, candidates = _session(env, seed=3)
    segment = trajectory.segment(0, len(trajectory))
    rows = presenter.session(segment, len(segment))["rows"]
    n_slots = len(presenter.columns) - 3
    assert len(rows) == len(infos) and n_slots == (1 if env_id.endswith("Single-v0") else 3)
    clicks = 0
    for t, (row, info) in enumerate(zip(rows, infos, strict=True)):
        assert row[0] == t + 1
        slots = np.asarray(trajectory.acts[t]).reshape(n_slots, -1).argmax(axis=1)
        for cell, slot, position in zip(row[1 : 1 + n_slots], slots, range(n_slots), strict=True):
            if slot in slots[:position]:
                assert cell == "—"  # a repeated candidate is shown once, as the env does
            else:
                assert cell == _expected_slot_cell(int(candidates[t][slot]), presenter)
        if info["clicked_slot"] < 0:
            assert row[-2] == "no click"
        else:
            clicks += 1
            assert row[-2] == f"slot {info['clicked_slot'] + 1}: item {info['item']}"
        assert row[-1] == pytest.approx(info["engagement"], abs=0.051)
    assert 0 < clicks < len(rows)  # both kinds of step were decoded


def test_a_leave_is_marked_and_nothing_hidden_is_shown(tmp_path: Path) -> None:
    env = gym.make("prefenv/RecSlate-v0")
    presenter = SessionPresenter(env)
    trajectory, _, _ = _session(env, seed=3)
    assert trajectory.terminated and len(trajectory) > 15  # the user left before the horizon
    left_at_end = trajectory.segment(len(trajectory) - 6, 6)  # cut at the leave: shorter
    full = trajectory.segment(0, 10)
    media = presenter.present(left_at_end, full, tmp_path, "q3")
    assert json.loads(json.dumps(media)) == media
    assert media["kind"] == "sessions"
    assert media["columns"] == ["step", "slot 1", "slot 2", "slot 3", "clicked", "watched (min)"]
    assert media["left"]["left_early"] is True and media["right"]["left_early"] is False
    assert len(media["left"]["rows"]) == 6 and len(media["right"]["rows"]) == 10
    assert media["left"]["rows"][0][0] == len(trajectory) - 5  # session steps, not segment steps
    text = json.dumps(media)
    assert "quality" not in text and "reward" not in text and "utility" not in text
    assert list(tmp_path.iterdir()) == []


def test_a_short_segment_that_reaches_the_horizon_did_not_leave(tmp_path: Path) -> None:
    config = SimConfig(time_budget=1e6)  # nobody leaves: every session reaches the horizon
    env = gym.make("prefenv/RecSlate-v0", horizon=12, sim_config=config)
    trajectory, _, _ = _session(env, seed=0)
    assert not trajectory.terminated and len(trajectory) == 12
    media = SessionPresenter(env).present(
        trajectory.segment(7, 5), trajectory.segment(0, 8), tmp_path, "q4"
    )
    assert media["left"]["left_early"] is False


def test_segments_of_another_layout_are_refused(tmp_path: Path) -> None:
    presenter = SessionPresenter(gym.make("prefenv/RecSlate-v0"))
    other = gym.make("prefenv/RecSlate-v0", n_candidates=5)
    trajectory, _, _ = _session(other, seed=0)
    segment = trajectory.segment(0, 3)
    with pytest.raises(ValueError, match="same n_candidates and slate_size"):
        presenter.present(segment, segment, tmp_path, "q5")
    with pytest.raises(TypeError, match="RecommendationEnv"):
        SessionPresenter(gym.make("prefenv/HalfCheetah-v0"))
