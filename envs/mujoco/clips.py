"""Side-by-side clips of two MuJoCo segments for a human labeller (a :class:`PairPresenter`).

A segment holds observations only (``[H + 1, D]``), so each frame's physics state is rebuilt
from them, then rendered offscreen and encoded as an H.264 MP4 that browsers play.

Rebuilding the state from ``obs`` (the layout is detected once, on a reset of the env):

- ``qpos[k:] + qvel`` (+ anything after, ignored): HalfCheetah, Hopper, Walker2d (``k = 1``),
  Ant (``k = 2``, contact forces after), Swimmer, InvertedPendulum (``k = 0``), any v5 env built
  so. ``qpos[k:]`` and ``qvel`` are read back; the excluded positions (x, and y) are integrated
  from their velocities, ``x_t = x_0 + dt * sum_{s=1..t} qvel_x[s]`` with ``x_0 = 0`` (the
  camera follows the body, the floor shows the motion). The integral is approximate (the
  physics takes ``frame_skip`` substeps per step): a few centimetres over 50 steps.
- Reacher: the two arm angles from their cos and sin, the target from its x-y, the arm
  velocities; the target does not move.

Hopper and Walker2d clip ``qvel`` to [-10, 10] in their observations: a clip of a segment whose
velocities reached that bound shows them (and the x integrated from them) only approximately.

Rendering uses ``mujoco.Renderer`` with shadows and reflections off: one offscreen context per
presenter, kept open. On CPU EGL (llvmpipe) this takes about 9-15 ms per 320x240 frame, where
Gymnasium's viewer (``envs.mujoco.render``, shadows and reflections on) takes 40-110 ms.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

from envs.mujoco.render import write_clip
from prefenv.presenters import check_stem
from prefenv.records import Segment

__all__ = ["ClipPresenter", "PositionsVelocities", "ReacherAngles", "StateDecoder"]

_log = logging.getLogger(__name__)


class StateDecoder(Protocol):
    """Rebuilds physics states from observations.

    Attributes:
        observed: ``[nq + nv]`` bool mask of the state entries read back exactly from ``obs``
            (the rest are integrated or fixed).
        travels: whether the body travels (its own position is integrated), so the camera
            must follow it.
    """

    observed: np.ndarray
    travels: bool

    def states(self, obs: np.ndarray) -> np.ndarray:
        """``[N, D]`` observations of consecutive steps -> ``[N, nq + nv]`` states."""
        ...


@dataclass(frozen=True)
class PositionsVelocities:
    """``obs = qpos[excluded:], qvel, ...``; the ``excluded`` leading positions are integrated.

    Attributes:
        nq: position size of the model.
        nv: velocity size of the model.
        excluded: leading positions left out of ``obs`` (x: 1; x and y: 2).
        dt: seconds per env step (the integration step).
    """

    nq: int
    nv: int
    excluded: int
    dt: float

    @property
    def observed(self) -> np.ndarray:
        mask = np.ones(self.nq + self.nv, dtype=bool)
        mask[: self.excluded] = False
        return mask

    @property
    def travels(self) -> bool:
        return self.excluded > 0

    def states(self, obs: np.ndarray) -> np.ndarray:
        """``[N, D]`` -> ``[N, nq + nv]``, excluded positions integrated from 0."""
        k, n_pos = self.excluded, self.nq - self.excluded
        qpos_tail = obs[:, :n_pos]
        qvel = obs[:, n_pos : n_pos + self.nv]
        moved = np.cumsum(qvel[1:, :k] * self.dt, axis=0)
        excluded = np.concatenate([np.zeros((1, k)), moved], axis=0)
        return np.concatenate([excluded, qpos_tail, qvel], axis=1)


@dataclass(frozen=True)
class ReacherAngles:
    """Reacher's ``obs = cos(q[:2]), sin(q[:2]), q[2:4], qvel[:2], fingertip - target``."""

    nq: int = 4
    nv: int = 4

    @property
    def observed(self) -> np.ndarray:
        return np.array([True] * 6 + [False] * 2)

    @property
    def travels(self) -> bool:
        return False

    def states(self, obs: np.ndarray) -> np.ndarray:
        """``[N, 10]`` -> ``[N, 8]``; the target's velocity is 0."""
        angles = np.arctan2(obs[:, 2:4], obs[:, 0:2])
        return np.concatenate([angles, obs[:, 4:6], obs[:, 6:8], np.zeros((len(obs), 2))], axis=1)


class ClipPresenter:
    """Render a query's two segments as two MP4 clips (GIF only when ffmpeg is missing).

    Writes ``{stem}_left.mp4`` and ``{stem}_right.mp4`` into the clip folder: H.264, yuv420p,
    ``+faststart``, ``width x height`` (even), the camera following the body (the model's
    ``"track"`` camera; else one from above, tracking body 1 if the body travels). A segment
    shorter than the other (cut at a fall) holds its last frame, so both clips have
    ``max(H0, H1) + 1`` frames and loop together. Clips play at real time, slowed to
    ``max_fps`` when faster (Hopper and Walker2d step at 125 Hz: a 50-step segment lasts 0.4 s
    in real time, 1.7 s at 30 fps).

    Make it on the thread that renders: its offscreen GL context (EGL) belongs to the thread
    that made it, and another thread gets a ``RuntimeError``.

    Args:
        env: a MuJoCo env (``gymnasium.make`` of a prefenv MuJoCo id or a v5 id); it is reset
            once here to detect its observation layout.
        width: frame width in pixels (even).
        height: frame height in pixels (even).
        max_fps: the highest frame rate a clip plays at.

    Raises:
        TypeError: ``env`` is not a MuJoCo env.
        ValueError: odd frame sizes, or an observation layout this presenter cannot rebuild
            states from (the message names the env).
    """

    def __init__(
        self, env: gym.Env, width: int = 320, height: int = 240, max_fps: float = 30.0
    ) -> None:
        base = env.unwrapped
        if not isinstance(base, MujocoEnv):
            raise TypeError(
                f"ClipPresenter renders MuJoCo envs, got {type(base).__name__}: use the "
                "presenter its env names in metadata['prefenv_presenter'], or GenericPresenter"
            )
        if width < 2 or height < 2 or width % 2 or height % 2:
            raise ValueError(f"H.264 needs an even frame size, got {width}x{height}")
        if max_fps <= 0:
            raise ValueError(f"max_fps must be positive, got {max_fps}")
        self.decoder = detect_decoder(env)
        self.width, self.height = width, height
        self.fps = float(min(1.0 / base.dt, max_fps))
        self._model = base.model
        self._data = mujoco.MjData(base.model)
        self._renderer = mujoco.Renderer(base.model, height, width)
        self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        self._camera = _camera(base.model, base.data, self.decoder.travels)
        self._mp4 = _ffmpeg_available()
        self._thread = threading.get_ident()

    def present(
        self, segment0: Segment, segment1: Segment, folder: Path, stem: str
    ) -> dict[str, Any]:
        """Write both clips into ``folder`` and return the ``"clips"`` media dict."""
        check_stem(stem)
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"clip folder {folder} does not exist: create it first")
        frames = [self.frames(segment0), self.frames(segment1)]
        n_frames = max(len(f) for f in frames)
        names = [
            self._write(_hold_last(f, n_frames), folder, f"{stem}_{side}")
            for f, side in zip(frames, ("left", "right"), strict=True)
        ]
        return {
            "kind": "clips",
            "left": names[0],
            "right": names[1],
            "fps": self.fps,
            "frames": n_frames,
        }

    def frames(self, segment: Segment) -> np.ndarray:
        """``uint8 [H + 1, height, width, 3]`` frames of one segment's rebuilt states."""
        states = self.decoder.states(segment.obs.astype(np.float64))
        if threading.get_ident() != self._thread:
            raise RuntimeError(
                "this ClipPresenter was made on another thread, and its offscreen GL context "
                "belongs to that thread: make the presenter on the thread that renders"
            )
        model, data, nq = self._model, self._data, self._model.nq
        out = np.empty((len(states), self.height, self.width, 3), dtype=np.uint8)
        for i, state in enumerate(states):
            data.qpos[:] = state[:nq]
            data.qvel[:] = state[nq:]
            mujoco.mj_forward(model, data)
            self._renderer.update_scene(data, camera=self._camera)
            self._renderer.render(out=out[i])
        return out

    def close(self) -> None:
        """Free the offscreen rendering context."""
        self._renderer.close()

    def __enter__(self) -> ClipPresenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, frames: np.ndarray, folder: Path, name: str) -> str:
        """Encode ``frames`` to ``folder/name.mp4`` (or ``.gif``); return the file name."""
        if not self._mp4:
            return write_clip(frames, folder / f"{name}.gif", self.fps).name
        path, tmp = folder / f"{name}.mp4", folder / f".{name}.tmp.mp4"
        import imageio_ffmpeg

        writer = imageio_ffmpeg.write_frames(
            str(tmp),
            (self.width, self.height),
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            fps=self.fps,
            codec="libx264",
            macro_block_size=2,
            ffmpeg_log_level="error",
            output_params=["-preset", "veryfast", "-movflags", "+faststart"],
        )
        try:
            writer.send(None)
            for frame in frames:
                writer.send(frame)
            writer.close()
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path.name


def detect_decoder(env: gym.Env) -> StateDecoder:
    """The decoder that rebuilds ``env``'s physics state from its observation.

    Resets ``env`` (seed 0) and keeps the first candidate layout that reads the reset state
    back from the reset observation.

    Raises:
        ValueError: no known layout fits; the message names the env.
    """
    base = env.unwrapped
    obs, _ = env.reset(seed=0)
    obs = np.asarray(obs, dtype=np.float64).reshape(-1)
    state = np.concatenate([base.data.qpos, base.data.qvel])
    nq, nv = base.model.nq, base.model.nv
    candidates: list[StateDecoder] = [
        PositionsVelocities(nq, nv, k, float(base.dt)) for k in (1, 2, 0) if k <= nq
    ]
    if (nq, nv, obs.size) == (4, 4, 10):
        candidates.append(ReacherAngles())
    for decoder in candidates:
        if _reads_back(decoder, obs, state):
            return decoder
    name = env.spec.id if env.spec is not None else type(base).__name__
    raise ValueError(
        f"ClipPresenter cannot rebuild {name}'s physics state from its observation of size "
        f"{obs.size} (nq={nq}, nv={nv}): it reads qpos[k:] + qvel (k = 0, 1 or 2) and Reacher's "
        "angles; for another layout, record info['physics_state'] and render it with "
        "envs.mujoco.render_states, or label this task with GenericPresenter"
    )


def _reads_back(decoder: StateDecoder, obs: np.ndarray, state: np.ndarray) -> bool:
    """Whether ``decoder`` recovers the observed entries of ``state`` from ``obs``."""
    try:
        rebuilt = decoder.states(obs[None])[0]
    except (IndexError, ValueError):
        return False
    if rebuilt.shape != state.shape:
        return False
    mask = decoder.observed
    return bool(np.allclose(rebuilt[mask], state[mask], atol=1e-6))


def _camera(model: mujoco.MjModel, data: mujoco.MjData, travels: bool) -> int | mujoco.MjvCamera:
    """The model's ``"track"`` camera id, else a camera from above framing the bodies of ``data``.

    The fallback looks at the bodies' mean from five times their spread (not the floor, which
    sets the model's extent), and tracks body 1 when the body ``travels``.
    """
    track = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "track")
    if track >= 0:
        return int(track)
    camera = mujoco.MjvCamera()
    mujoco.mjv_defaultFreeCamera(model, camera)
    bodies = data.xpos[1:] if model.nbody > 1 else data.xpos
    center = bodies.mean(axis=0)
    camera.lookat[:] = center
    camera.distance = max(5.0 * float(np.linalg.norm(bodies - center, axis=1).max()), 0.5)
    camera.elevation = -75.0
    if travels:
        camera.type = mujoco.mjtCamera.mjCAMERA_TRACKING
        camera.trackbodyid = min(1, model.nbody - 1)
    return camera


def _ffmpeg_available() -> bool:
    """Whether imageio-ffmpeg finds an ffmpeg binary (else clips fall back to GIF)."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        _log.warning(
            "ffmpeg not found (pip install imageio-ffmpeg): writing GIF clips, which are larger "
            "and slower to load than MP4"
        )
        return False
    return True


def _hold_last(frames: np.ndarray, n: int) -> np.ndarray:
    """``frames`` extended to ``n`` frames by repeating its last one."""
    if len(frames) >= n:
        return frames
    return np.concatenate([frames, np.repeat(frames[-1:], n - len(frames), axis=0)])
