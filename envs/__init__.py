"""Task families registered as Gymnasium ids ``prefenv/<Name>-v<N>``.

Importing this package registers every id with a *lazy* string entry point, so neither
``import envs`` nor ``import prefenv`` imports mujoco (or any other task-family dependency):
the family's module is imported only when ``gymnasium.make`` builds one of its envs.

To add a task family, add rows to ``_REGISTRY``: ``(id, entry_point, kwargs, max_episode_steps)``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

__all__ = ["register_envs", "registered_ids"]

_MUJOCO_TASK = "envs.mujoco.tasks:MujocoTask"
_TEXT_TASK = "envs.text.tasks:TextTask"
_RECOMMENDATION = "envs.recommendation.env:RecommendationEnv"

# (id, lazy entry point, constructor kwargs, max_episode_steps). Horizons match Gymnasium's
# MuJoCo v5 registrations (1000 steps; Reacher 50).
_REGISTRY: tuple[tuple[str, str, dict[str, Any], int | None], ...] = (
    ("prefenv/HalfCheetah-v0", _MUJOCO_TASK, {"task": "HalfCheetah"}, 1000),
    ("prefenv/Hopper-v0", _MUJOCO_TASK, {"task": "Hopper"}, 1000),
    ("prefenv/Walker2d-v0", _MUJOCO_TASK, {"task": "Walker2d"}, 1000),
    ("prefenv/Ant-v0", _MUJOCO_TASK, {"task": "Ant"}, 1000),
    ("prefenv/Reacher-v0", _MUJOCO_TASK, {"task": "Reacher"}, 50),
    # Recommendation: the env truncates at its own `horizon` (default 50), so no TimeLimit.
    ("prefenv/RecSlate-v0", _RECOMMENDATION, {"slate_size": 3}, None),
    ("prefenv/RecSingle-v0", _RECOMMENDATION, {"slate_size": None}, None),
    # Text: the env truncates after its own `max_new_tokens` (default 48), so no TimeLimit.
    ("prefenv/TextSentiment-v0", _TEXT_TASK, {"task": "sentiment"}, None),
    ("prefenv/TextKeyword-v0", _TEXT_TASK, {"task": "keyword"}, None),
    ("prefenv/TextConcise-v0", _TEXT_TASK, {"task": "concise"}, None),
)


def registered_ids() -> list[str]:
    """The Gymnasium ids this package registers, in registration order."""
    return [env_id for env_id, _, _, _ in _REGISTRY]


def register_envs() -> None:
    """Register every prefenv id with Gymnasium; calling it again is a no-op.

    Ids that are already in Gymnasium's registry are left untouched, so a user who re-registered
    one of our ids with other defaults keeps theirs.
    """
    for env_id, entry_point, kwargs, max_episode_steps in _REGISTRY:
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point=entry_point,
            kwargs=dict(kwargs),
            max_episode_steps=max_episode_steps,
        )


register_envs()
