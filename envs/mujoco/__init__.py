"""MuJoCo robotics tasks (Gymnasium MuJoCo v5 underneath) with a hidden, decomposable true reward.

Ids (registered by ``envs``): ``prefenv/HalfCheetah-v0``, ``prefenv/Hopper-v0``,
``prefenv/Walker2d-v0``, ``prefenv/Ant-v0``, ``prefenv/Reacher-v0``.

Rendering is offscreen: on a headless Linux machine ``MUJOCO_GL`` defaults to ``egl`` (works on
CPU) unless the variable is already set. This must happen before mujoco is first imported, so
it is done here, at the top of the package.
"""

from __future__ import annotations

import os
import sys

if (
    sys.platform.startswith("linux")
    and "MUJOCO_GL" not in os.environ
    and not os.environ.get("DISPLAY")
    and not os.environ.get("WAYLAND_DISPLAY")
):
    os.environ["MUJOCO_GL"] = "egl"

import logging  # noqa: E402

import mujoco  # noqa: E402

_log = logging.getLogger("envs.mujoco")


def _mujoco_warning(message: str) -> None:
    """Route MuJoCo's C-level warnings to Python logging instead of stderr + MUJOCO_LOG.TXT.

    MuJoCo 4 warns that Gymnasium's v5 XML files use the deprecated ``settotalmass`` on every
    model compile; that one is expected and goes to DEBUG, anything else stays a WARNING.
    """
    level = logging.DEBUG if "settotalmass" in message else logging.WARNING
    _log.log(level, "MuJoCo: %s", message.strip())


mujoco.set_mju_user_warning(_mujoco_warning)

from envs.mujoco.render import (  # noqa: E402
    physics_state,
    record_clip,
    render_frames,
    render_states,
    write_clip,
)
from envs.mujoco.tasks import TASK_TERMS, TASKS, MujocoTask  # noqa: E402

__all__ = [
    "TASKS",
    "TASK_TERMS",
    "MujocoTask",
    "physics_state",
    "record_clip",
    "render_frames",
    "render_states",
    "write_clip",
]
