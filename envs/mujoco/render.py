"""Offscreen rendering of segments to frames and GIF/MP4 clips (for inspection and human labels).

Two honest ways to get a segment's pictures back, since observations alone do not hold the
full physics state (HalfCheetah drops the x position, for example):

- **replay** (``render_frames`` / ``record_clip``): MuJoCo is deterministic, so the actions of
  an episode replayed from a reset with the same seed reproduce it exactly. Works for any episode
  whose reset seed is known (the first episode after ``reset(seed=...)``; episodes started by
  an autoreset have no seed of their own).
- **states** (``render_states``): set each recorded physics state ``concat(qpos, qvel)`` and
  render it. Works for any step of any episode if the env recorded ``info["physics_state"]``
  (``MujocoTask(record_physics_state=True)``) or the caller kept ``physics_state(env)``.

Frames are ``uint8`` arrays of shape ``[T, H, W, 3]``. GIFs are written with imageio (Pillow);
MP4 needs ``imageio[ffmpeg]`` or ``imageio[pyav]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path

import gymnasium as gym
import imageio.v3 as iio
import numpy as np
from numpy.typing import ArrayLike

__all__ = ["physics_state", "record_clip", "render_frames", "render_states", "write_clip"]


def physics_state(env: gym.Env) -> np.ndarray:
    """The full MuJoCo state ``concat(qpos, qvel)`` of ``env`` now, shape ``[nq + nv]``."""
    data = env.unwrapped.data
    return np.concatenate([data.qpos, data.qvel]).astype(np.float64)


def render_frames(
    env: gym.Env | str,
    actions: ArrayLike,
    seed: int,
    *,
    start: int = 0,
    width: int = 480,
    height: int = 480,
) -> np.ndarray:
    """Replay ``actions`` from ``reset(seed=seed)`` and return the rendered frames.

    Frame ``k`` shows the state after ``start + k`` actions (frame 0 of ``start=0`` is the reset
    state), so a segment covering actions ``t0 .. t0+H-1`` of an episode is
    ``render_frames(env, episode_actions[: t0 + H], seed, start=t0)``: ``H + 1`` frames.

    Args:
        env: An env id (built offscreen with ``render_mode="rgb_array"`` and closed afterwards)
            or an env made with ``render_mode="rgb_array"`` (left open; it is reset).
        actions: ``[N, *action_shape]`` actions of the episode from its first step.
        seed: The seed the recorded episode was reset with.
        start: Number of leading actions replayed without rendering.
        width: Frame width, used only when ``env`` is an id.
        height: Frame height, used only when ``env`` is an id.

    Returns:
        ``uint8`` frames ``[N - start + 1, height, width, 3]``.

    Raises:
        ValueError: the episode ended before the last action (the replay does not match the
            recording: another seed, env or env config), or ``start`` is out of range.
    """
    actions = np.asarray(actions)
    if not 0 <= start <= len(actions):
        raise ValueError(f"start={start} must be in [0, {len(actions)}] (the number of actions)")
    with _rgb_env(env, width, height) as rgb_env:
        rgb_env.reset(seed=seed)
        frames = [rgb_env.render()] if start == 0 else []
        for t, action in enumerate(actions):
            _, _, terminated, truncated, _ = rgb_env.step(action)
            if t + 1 >= start:
                frames.append(rgb_env.render())
            if (terminated or truncated) and t + 1 < len(actions):
                raise ValueError(
                    f"the replayed episode ended after {t + 1} of {len(actions)} actions: the "
                    "replay does not match the recording; was it recorded with another seed, "
                    "env id or env config, or after an autoreset (which has no seed)?"
                )
    return np.stack(frames).astype(np.uint8)


def render_states(
    env: gym.Env | str, states: ArrayLike, *, width: int = 480, height: int = 480
) -> np.ndarray:
    """Render recorded physics states ``concat(qpos, qvel)``, one frame per state.

    Args:
        env: An env id or an env made with ``render_mode="rgb_array"`` (see ``render_frames``).
        states: ``[T, nq + nv]`` states, e.g. ``info["physics_state"]`` of
            ``MujocoTask(record_physics_state=True)`` or ``physics_state(env)``.
        width: Frame width, used only when ``env`` is an id.
        height: Frame height, used only when ``env`` is an id.

    Returns:
        ``uint8`` frames ``[T, height, width, 3]``.
    """
    states = np.asarray(states, dtype=np.float64)
    with _rgb_env(env, width, height) as rgb_env:
        rgb_env.reset(seed=0)
        base = rgb_env.unwrapped
        nq, nv = base.model.nq, base.model.nv
        if states.ndim != 2 or states.shape[1] != nq + nv:
            raise ValueError(
                f"states must have shape [T, nq + nv] = [T, {nq + nv}] for this env, got "
                f"{states.shape}: were they recorded on another task?"
            )
        frames = []
        for state in states:
            base.set_state(state[:nq], state[nq:])
            frames.append(rgb_env.render())
    return np.stack(frames).astype(np.uint8)


def write_clip(frames: ArrayLike, path: str | Path, fps: float) -> Path:
    """Write ``[T, H, W, 3]`` ``uint8`` frames to a looping ``.gif`` or an ``.mp4``."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path = Path(path)
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        iio.imwrite(path, frames, extension=".gif", duration=1000.0 / fps, loop=0)
    elif suffix == ".mp4":
        if find_spec("imageio_ffmpeg") is None and find_spec("av") is None:
            raise RuntimeError(
                f"writing {path} needs an MP4 backend: pip install 'imageio[ffmpeg]' (or "
                "'imageio[pyav]'), or write a .gif instead"
            )
        iio.imwrite(path, frames, extension=".mp4", fps=fps)
    else:
        raise ValueError(f"clip path must end in .gif or .mp4, got {path.name!r}")
    return path


def record_clip(
    env: gym.Env | str,
    actions: ArrayLike,
    path: str | Path,
    *,
    seed: int,
    start: int = 0,
    fps: float | None = None,
    width: int = 480,
    height: int = 480,
) -> Path:
    """Replay ``actions`` from ``reset(seed=seed)`` offscreen and write the clip to ``path``.

    Args:
        env: An env id or an env made with ``render_mode="rgb_array"`` (see ``render_frames``).
        actions: ``[N, *action_shape]`` actions of the episode from its first step.
        path: Output file, ``.gif`` (always available) or ``.mp4`` (needs an ffmpeg backend).
        seed: The seed the recorded episode was reset with.
        start: Leading actions replayed without rendering (the segment's start step).
        fps: Frames per second; default the env's ``metadata["render_fps"]`` (real time).
        width: Frame width, used only when ``env`` is an id.
        height: Frame height, used only when ``env`` is an id.

    Returns:
        The path written; the clip has ``N - start + 1`` frames.
    """
    with _rgb_env(env, width, height) as rgb_env:
        frames = render_frames(rgb_env, actions, seed, start=start)
        if fps is None:
            fps = float(rgb_env.metadata.get("render_fps", 30))
    return write_clip(frames, path, fps)


@contextmanager
def _rgb_env(env: gym.Env | str, width: int, height: int) -> Iterator[gym.Env]:
    """Yield an ``rgb_array`` env: built from an id (and closed after) or checked and passed on."""
    if isinstance(env, str):
        owned = gym.make(env, render_mode="rgb_array", width=width, height=height)
        try:
            yield owned
        finally:
            owned.close()
        return
    if env.render_mode != "rgb_array":
        raise ValueError(
            f"rendering needs an env made with render_mode='rgb_array', got "
            f"render_mode={env.render_mode!r}: pass the env id instead, or "
            "gymnasium.make(env_id, render_mode='rgb_array')"
        )
    yield env
