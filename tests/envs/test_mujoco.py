"""MuJoCo tasks: unchanged v5 dynamics, the (multi-objective) true reward, and clip rendering."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gymnasium as gym
import imageio.v3 as iio
import numpy as np
import pytest

import envs  # noqa: F401  (registers the ids)
from envs.mujoco import (
    TASK_TERMS,
    TASKS,
    MujocoTask,
    physics_state,
    record_clip,
    render_frames,
    render_states,
    write_clip,
)

IDS = {task: f"prefenv/{task}-v0" for task in TASKS}


def _actions(env: gym.Env, n: int, seed: int = 0) -> np.ndarray:
    env.action_space.seed(seed)
    return np.stack([env.action_space.sample() for _ in range(n)])


@pytest.mark.parametrize("task", sorted(TASKS))
def test_same_spaces_dynamics_and_reward_as_v5(task: str) -> None:
    ours, v5 = gym.make(IDS[task]), gym.make(f"{task}-v5")
    assert ours.observation_space == v5.observation_space
    assert ours.action_space == v5.action_space
    obs, _ = ours.reset(seed=5)
    obs_v5, _ = v5.reset(seed=5)
    np.testing.assert_array_equal(obs, obs_v5)
    for action in _actions(v5, 10):
        obs, reward, term, trunc, info = ours.step(action)
        obs_v5, reward_v5, term_v5, trunc_v5, info_v5 = v5.step(action)
        np.testing.assert_array_equal(obs, obs_v5)
        assert (reward, term, trunc) == (reward_v5, term_v5, trunc_v5)
        assert info["true_reward"] == reward
        assert set(TASK_TERMS[task]) <= set(info)
        assert {k: info[k] for k in info_v5} == info_v5, "v5 info must pass through unchanged"
        # The v5 reward is the plain sum of its signed terms.
        assert reward == pytest.approx(sum(info[k] for k in TASK_TERMS[task]), abs=1e-9)
        if term or trunc:
            break


def test_objective_weights_define_the_true_and_returned_reward() -> None:
    weights = {"reward_forward": 1.0, "reward_ctrl": 3.0}
    env = gym.make("prefenv/Hopper-v0", objective_weights=weights)
    env.reset(seed=0)
    for action in _actions(env, 5):
        _, reward, _, _, info = env.step(action)
        expected = info["reward_forward"] + 3.0 * info["reward_ctrl"]  # reward_survive: weight 0
        assert info["true_reward"] == pytest.approx(expected)
        assert reward == info["true_reward"]
        assert "reward_survive" in info, "unweighted terms stay in info"


def test_bad_objective_weights_and_task_are_clear_errors() -> None:
    with pytest.raises(
        ValueError, match=r"unknown reward terms \['reward_speed'\].*reward_forward"
    ):
        gym.make("prefenv/HalfCheetah-v0", objective_weights={"reward_speed": 1.0})
    with pytest.raises(ValueError, match="reward_dist"):
        MujocoTask("Reacher", objective_weights={"reward_forward": 1.0})
    with pytest.raises(ValueError, match="empty"):
        MujocoTask("Hopper", objective_weights={})
    with pytest.raises(ValueError, match="finite"):
        MujocoTask("Hopper", objective_weights={"reward_ctrl": float("nan")})
    with pytest.raises(ValueError, match="choose one of"):
        MujocoTask("Humanoid")


def test_direct_construction_and_v5_kwargs() -> None:
    env = MujocoTask("HalfCheetah", v5_kwargs={"ctrl_cost_weight": 0.0})
    env.reset(seed=0)
    _, reward, _, truncated, info = env.step(env.action_space.sample())
    assert info["reward_ctrl"] == 0.0
    assert reward == info["reward_forward"]
    assert not truncated and env.spec is None


@pytest.fixture(scope="module")
def reacher_rgb() -> gym.Env:
    env = gym.make("prefenv/Reacher-v0", render_mode="rgb_array", width=48, height=32)
    yield env
    env.close()


def test_render_frames_replays_a_seeded_episode(reacher_rgb: gym.Env) -> None:
    actions = _actions(reacher_rgb, 6)
    frames = render_frames(reacher_rgb, actions, seed=1)
    assert frames.shape == (7, 32, 48, 3) and frames.dtype == np.uint8
    assert frames.std() > 0, "frames should not be blank"
    np.testing.assert_array_equal(render_frames(reacher_rgb, actions, seed=1), frames)
    tail = render_frames(reacher_rgb, actions, seed=1, start=4)
    np.testing.assert_array_equal(tail, frames[4:])


def test_render_states_from_recorded_physics_states(reacher_rgb: gym.Env) -> None:
    env = gym.make("prefenv/Reacher-v0", record_physics_state=True)
    _, info = env.reset(seed=1)
    states = [info["physics_state"]]
    np.testing.assert_array_equal(states[0], physics_state(env))
    for action in _actions(env, 4):
        states.append(env.step(action)[-1]["physics_state"])
    frames = render_states(reacher_rgb, np.stack(states))
    assert frames.shape == (5, 32, 48, 3)
    # The reset state renders exactly as the replay's first frame.
    np.testing.assert_array_equal(frames[0], render_frames(reacher_rgb, [], seed=1)[0])
    with pytest.raises(ValueError, match="another task"):
        render_states(reacher_rgb, np.zeros((2, 3)))


def test_record_clip_writes_a_gif_with_one_frame_per_state(
    reacher_rgb: gym.Env, tmp_path: Path
) -> None:
    actions = _actions(reacher_rgb, 8)
    path = record_clip(reacher_rgb, actions, tmp_path / "clips" / "segment.gif", seed=2, start=3)
    assert path.exists()
    clip = iio.imread(path, index=None)
    assert clip.shape == (8 - 3 + 1, 32, 48, 3)
    assert iio.improps(path).n_images == 6


def test_record_clip_from_an_env_id(tmp_path: Path) -> None:
    actions = np.zeros((3, 2), dtype=np.float32) + 0.5
    path = record_clip(
        "prefenv/Reacher-v0", actions, tmp_path / "r.gif", seed=0, width=24, height=24
    )
    assert iio.imread(path, index=None).shape == (4, 24, 24, 3)


def test_rendering_errors_name_the_fix(reacher_rgb: gym.Env, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="render_mode='rgb_array'"):
        render_frames(gym.make("prefenv/Reacher-v0"), [], seed=0)
    too_many = _actions(reacher_rgb, 55)  # Reacher truncates after 50 steps
    with pytest.raises(ValueError, match="ended after 50 of 55"):
        render_frames(reacher_rgb, too_many, seed=0, start=55)
    frames = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=".gif or .mp4"):
        write_clip(frames, tmp_path / "clip.avi", fps=10)
    with pytest.raises(ValueError, match="uint8"):
        write_clip(frames.astype(np.float32), tmp_path / "clip.gif", fps=10)


@pytest.mark.skipif(
    importlib.util.find_spec("imageio_ffmpeg") is not None
    or importlib.util.find_spec("av") is not None,
    reason="an MP4 backend is installed",
)
def test_mp4_without_a_backend_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"imageio\[ffmpeg\]"):
        write_clip(np.zeros((2, 8, 8, 3), dtype=np.uint8), tmp_path / "clip.mp4", fps=10)
