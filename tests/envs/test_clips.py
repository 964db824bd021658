"""MuJoCo query clips: states rebuilt from observations, real H.264 MP4s, the GIF fallback."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import gymnasium as gym
import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pytest

import envs  # noqa: F401  (registers the ids)
from envs.mujoco import clips
from envs.mujoco.clips import ClipPresenter, PositionsVelocities
from prefenv.presenters import PairPresenter
from prefenv.records import Segment, Trajectory

STEPS = 40


def _recorded(env_id: str, seed: int, steps: int = STEPS) -> tuple[Segment, np.ndarray]:
    """A random-action segment of ``env_id`` and its true physics states ``[T + 1, nq + nv]``."""
    env = gym.make(env_id, record_physics_state=True)
    env.action_space.seed(seed)
    obs, info = env.reset(seed=seed)
    observations, actions, states = [obs], [], [info["physics_state"]]
    for _ in range(steps):
        action = env.action_space.sample()
        obs, _, terminated, truncated, info = env.step(action)
        observations.append(obs)
        actions.append(action)
        states.append(info["physics_state"])
        if terminated or truncated:
            break
    trajectory = Trajectory(np.array(observations), np.array(actions), np.zeros(len(actions)))
    env.close()
    return trajectory.segment(0, len(actions)), np.array(states)


@pytest.fixture(scope="module", params=["HalfCheetah", "Hopper"])
def task(request: pytest.FixtureRequest) -> str:
    return f"prefenv/{request.param}-v0"


@pytest.fixture(scope="module")
def presenter(task: str):
    with ClipPresenter(gym.make(task)) as presenter:
        yield presenter


def test_mujoco_tasks_name_the_clip_presenter(task: str) -> None:
    metadata = gym.make(task).metadata
    assert metadata["prefenv_presenter"] == "envs.mujoco.clips:ClipPresenter"
    assert metadata["render_fps"] > 0  # the v5 metadata is kept


def test_rebuilt_states_read_back_the_observation_and_integrate_x(task: str, presenter) -> None:
    segment, states = _recorded(task, seed=3)
    nq = presenter._model.nq
    assert isinstance(presenter.decoder, PositionsVelocities) and presenter.decoder.excluded == 1
    rebuilt = presenter.decoder.states(segment.obs.astype(np.float64))
    np.testing.assert_allclose(rebuilt[:, 1:], segment.obs, rtol=0, atol=0)
    np.testing.assert_allclose(rebuilt[:, 1:nq], states[:, 1:nq], atol=1e-5)
    true_x = states[:, 0] - states[0, 0]
    moved = np.abs(true_x).max()
    assert moved > 0.01  # the body moved
    # x_t = sum of qvel_x * dt, approximate under frame-skipped physics and jerky random
    # actions (HalfCheetah: 5 cm of 23 cm); without the integral the error would be `moved`
    assert np.abs(rebuilt[:, 0] - true_x).max() < 0.3 * moved
    assert rebuilt[0, 0] == 0.0


def test_clip_is_a_real_h264_mp4_with_one_frame_per_observation(
    task: str, presenter, tmp_path: Path
) -> None:
    assert isinstance(presenter, PairPresenter)
    left, _ = _recorded(task, seed=1)
    right, _ = _recorded(task, seed=2)
    n_frames = max(len(left), len(right)) + 1
    media = presenter.present(left, right, tmp_path, "q000123")
    assert json.loads(json.dumps(media)) == media
    assert media == {
        "kind": "clips",
        "left": "q000123_left.mp4",
        "right": "q000123_right.mp4",
        "fps": presenter.fps,
        "frames": n_frames,
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == [media["left"], media["right"]]
    for name in (media["left"], media["right"]):
        frames = iio.imread(tmp_path / name, index=None)
        assert frames.shape == (n_frames, 240, 320, 3)
        assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 1.0  # it moves
        reader = imageio_ffmpeg.read_frames(str(tmp_path / name))
        meta = next(reader)
        reader.close()
        assert meta["codec"].startswith("h264") and meta["pix_fmt"].startswith("yuv420p")
        assert meta["fps"] == pytest.approx(presenter.fps)


def test_frames_match_the_true_states_rendering(task: str, presenter) -> None:
    segment, states = _recorded(task, seed=4, steps=10)
    rebuilt = presenter.frames(segment).astype(int)
    true = np.empty_like(rebuilt)
    data, nq = presenter._data, presenter._model.nq
    renderer = presenter._renderer
    for i, state in enumerate(states):
        data.qpos[:], data.qvel[:] = state[:nq], state[nq:]
        data.qpos[0] -= states[0, 0]  # the clip starts at x = 0
        clips.mujoco.mj_forward(presenter._model, data)
        renderer.update_scene(data, camera=presenter._camera)
        true[i] = renderer.render()
    one_step_off = np.abs(rebuilt[1:] - true[:-1]).mean()
    assert np.abs(rebuilt - true).mean() < 0.25 * one_step_off  # the same pictures, in order


def test_hopper_clips_slow_down_to_max_fps_and_cheetah_plays_in_real_time() -> None:
    with ClipPresenter(gym.make("prefenv/Hopper-v0")) as hopper:
        assert hopper.fps == 30.0  # 125 steps per second in real time
    with ClipPresenter(gym.make("prefenv/HalfCheetah-v0"), max_fps=60) as cheetah:
        assert cheetah.fps == 20.0


def test_shorter_segment_holds_its_last_frame(tmp_path: Path) -> None:
    long_segment, _ = _recorded("prefenv/HalfCheetah-v0", seed=0, steps=12)
    short = Segment(long_segment.obs[:6], long_segment.acts[:5], long_segment.true_rewards[:5])
    with ClipPresenter(gym.make("prefenv/HalfCheetah-v0"), width=64, height=48) as presenter:
        media = presenter.present(short, long_segment, tmp_path, "q1")
        frames = iio.imread(tmp_path / media["left"], index=None)
    assert media["frames"] == 13 and frames.shape == (13, 48, 64, 3)
    held = np.abs(frames[6:].astype(int) - frames[6].astype(int)).mean(axis=(1, 2, 3))
    assert held.max() < 1.0  # the same picture up to H.264's loss


def test_gif_fallback_without_ffmpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clips, "_ffmpeg_available", lambda: False)
    segment, _ = _recorded("prefenv/HalfCheetah-v0", seed=0, steps=5)
    with ClipPresenter(gym.make("prefenv/HalfCheetah-v0"), width=64, height=48) as presenter:
        media = presenter.present(segment, segment, tmp_path, "q2")
    assert (media["left"], media["right"]) == ("q2_left.gif", "q2_right.gif")
    assert iio.imread(tmp_path / media["left"], index=None).shape[:3] == (6, 48, 64)


def test_other_layouts_and_refusals(tmp_path: Path) -> None:
    with ClipPresenter(gym.make("prefenv/Ant-v0"), width=64, height=48) as ant:
        assert ant.decoder.excluded == 2  # x and y integrated, contact forces ignored
    with ClipPresenter(gym.make("prefenv/Reacher-v0"), width=64, height=48) as reacher:
        segment, states = _recorded("prefenv/Reacher-v0", seed=0, steps=5)
        rebuilt = reacher.decoder.states(segment.obs.astype(np.float64))
        np.testing.assert_allclose(rebuilt[:, :6], states[:, :6], atol=1e-5)
    with pytest.raises(ValueError, match="InvertedDoublePendulum-v5"):
        ClipPresenter(gym.make("InvertedDoublePendulum-v5"))
    with pytest.raises(TypeError, match="MuJoCo"):
        ClipPresenter(gym.make("prefenv/RecSlate-v0"))
    with pytest.raises(ValueError, match="even"):
        ClipPresenter(gym.make("prefenv/HalfCheetah-v0"), width=321)
    with ClipPresenter(gym.make("prefenv/HalfCheetah-v0"), width=64, height=48) as presenter:
        segment, _ = _recorded("prefenv/HalfCheetah-v0", seed=0, steps=3)
        with pytest.raises(ValueError, match="not safe"):
            presenter.present(segment, segment, tmp_path, "../escape")
        with pytest.raises(FileNotFoundError):
            presenter.present(segment, segment, tmp_path / "missing", "q1")
    assert list(tmp_path.iterdir()) == []


def test_the_presenter_renders_on_the_thread_that_made_it(tmp_path: Path) -> None:
    segment, _ = _recorded("prefenv/HalfCheetah-v0", seed=0, steps=3)
    with ClipPresenter(gym.make("prefenv/HalfCheetah-v0"), width=64, height=48) as presenter:
        errors: list[Exception] = []

        def present_elsewhere() -> None:
            try:
                presenter.present(segment, segment, tmp_path, "q1")
            except RuntimeError as error:
                errors.append(error)

        thread = threading.Thread(target=present_elsewhere)
        thread.start()
        thread.join()
        assert len(errors) == 1 and "thread that renders" in str(errors[0])
        assert presenter.present(segment, segment, tmp_path, "q1")["frames"] == 4  # still fine
