"""Text query media: the prompt and two completions, from text segments or token segments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers the ids)
from envs.text.presenter import TextPresenter
from prefenv.presenters import PairPresenter
from prefenv.records import Segment, Trajectory
from prefenv.spaces import FlatSpec
from prefenv.text_records import text_segment


@pytest.fixture(scope="module")
def env() -> gym.Env:
    return gym.make("prefenv/TextSentiment-v0", max_new_tokens=6)


def _episode(env: gym.Env, prompt_index: int, seed: int) -> tuple[Trajectory, dict[str, Any]]:
    """A random-token episode as a flat trajectory, and its last step's info."""
    spec = FlatSpec(env.observation_space, env.action_space)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed, options={"prompt_index": prompt_index})
    observations, actions, done = [obs], [], False
    while not done:
        token = int(rng.integers(3, env.action_space.n))  # no special tokens: full length
        obs, _, terminated, truncated, info = env.step(token)
        observations.append(obs)
        actions.append(token)
        done = terminated or truncated
    batch = {key: np.stack([o[key] for o in observations]) for key in observations[0]}
    trajectory = Trajectory(
        spec.obs(batch, len(observations)),
        spec.acts(np.array(actions), len(actions)),
        np.zeros(len(actions)),
    )
    return trajectory, info


def test_text_env_names_the_text_presenter(env: gym.Env) -> None:
    assert env.metadata["prefenv_presenter"] == "envs.text.presenter:TextPresenter"
    assert isinstance(TextPresenter(env), PairPresenter)


def test_token_segments_decode_as_the_env_reports_them(env: gym.Env, tmp_path: Path) -> None:
    presenter = TextPresenter(env)
    left, left_info = _episode(env, prompt_index=4, seed=1)
    right, right_info = _episode(env, prompt_index=4, seed=2)
    assert left_info["completion"] != right_info["completion"]
    media = presenter.present(left.segment(0, 6), right.segment(0, 6), tmp_path, "q1")
    assert json.loads(json.dumps(media)) == media
    assert media == {
        "kind": "text",
        "prompt": left_info["prompt"],
        "left": left_info["completion"],
        "right": right_info["completion"],
    }
    partial = presenter.texts(left.segment(0, 3), "a segment")  # ends before the episode
    assert left_info["completion"].startswith(partial[1]) and partial[1] != media["left"]
    assert list(tmp_path.iterdir()) == []


def test_different_prompts_are_shown_per_side(env: gym.Env, tmp_path: Path) -> None:
    presenter = TextPresenter(env)
    left, left_info = _episode(env, prompt_index=0, seed=1)
    right, right_info = _episode(env, prompt_index=1, seed=1)
    media = presenter.present(left.segment(0, 6), right.segment(0, 6), tmp_path, "q2")
    assert media["prompt"] == ""
    assert (media["left_prompt"], media["right_prompt"]) == (
        left_info["prompt"],
        right_info["prompt"],
    )


def test_text_segments_show_their_context(env: gym.Env, tmp_path: Path) -> None:
    media = TextPresenter(env).present(
        text_segment("The pasta was", "fresh and warm.", 0.9),
        text_segment("The pasta was", "cold.", -0.4),
        tmp_path,
        "q3",
    )
    assert media == {
        "kind": "text",
        "prompt": "The pasta was",
        "left": "fresh and warm.",
        "right": "cold.",
    }
    assert "0.9" not in json.dumps(media)  # the true score is never shown


def test_segments_that_hold_no_text_are_refused(env: gym.Env, tmp_path: Path) -> None:
    presenter = TextPresenter(env)
    no_text = Segment(np.zeros((2, 0)), np.zeros((1, 0)), np.zeros(1))
    with pytest.raises(ValueError, match="no context"):
        presenter.present(no_text, no_text, tmp_path, "q4")
    wrong = Segment(np.zeros((2, 5)), np.zeros((1, 3)), np.zeros(1))
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        presenter.present(wrong, wrong, tmp_path, "q4")
    with pytest.raises(TypeError, match="TextGenerationEnv"):
        TextPresenter(gym.make("prefenv/RecSlate-v0"))
