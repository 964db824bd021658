"""Task families registered as Gymnasium ids ``prefenv/<Name>-v<N>``.

Importing this package registers every id with a *lazy* string entry point, so neither
``import envs`` nor ``import prefenv`` imports mujoco (or any other task-family dependency):
the family's module is imported only when ``gymnasium.make`` builds one of its envs.

To add a task family, add rows to ``_REGISTRY``:
``(id, entry_point, kwargs, max_episode_steps, vector_entry_point)``. The optional
``vector_entry_point`` (None if the family has none) is a native batched env with the same
constructor kwargs plus ``num_envs``: ``gymnasium.make_vec(id, n,
vectorization_mode="vector_entry_point")`` builds it instead of a ``SyncVectorEnv`` of ``n``
single envs (``prefenv.make_vec`` and training runs pick it automatically).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

__all__ = ["register_envs", "registered_ids"]

_MUJOCO_TASK = "envs.mujoco.tasks:MujocoTask"
_TEXT_TASK = "envs.text.tasks:TextTask"
_RECOMMENDATION = "envs.recommendation.env:RecommendationEnv"
_RECOMMENDATION_VEC = "envs.recommendation.env:RecommendationVectorEnv"
_TEXT_VEC = "envs.text.vector_env:text_task_vector_env"

# (id, lazy entry point, constructor kwargs, max_episode_steps, lazy vector entry point or None).
# Horizons match Gymnasium's MuJoCo v5 registrations (1000 steps; Reacher 50).
_REGISTRY: tuple[tuple[str, str, dict[str, Any], int | None, str | None], ...] = (
    ("prefenv/HalfCheetah-v0", _MUJOCO_TASK, {"task": "HalfCheetah"}, 1000, None),
    ("prefenv/Hopper-v0", _MUJOCO_TASK, {"task": "Hopper"}, 1000, None),
    ("prefenv/Walker2d-v0", _MUJOCO_TASK, {"task": "Walker2d"}, 1000, None),
    ("prefenv/Ant-v0", _MUJOCO_TASK, {"task": "Ant"}, 1000, None),
    ("prefenv/Reacher-v0", _MUJOCO_TASK, {"task": "Reacher"}, 50, None),
    # Recommendation: the env truncates at its own `horizon` (default 50), so no TimeLimit; the
    # native vector env steps all users in one numpy call (NEXT_STEP or SAME_STEP autoreset).
    ("prefenv/RecSlate-v0", _RECOMMENDATION, {"slate_size": 3}, None, _RECOMMENDATION_VEC),
    ("prefenv/RecSingle-v0", _RECOMMENDATION, {"slate_size": None}, None, _RECOMMENDATION_VEC),
    # Text: the env truncates after its own `max_new_tokens` (default 48), so no TimeLimit; the
    # native vector env shifts every row's window in one numpy call.
    ("prefenv/TextSentiment-v0", _TEXT_TASK, {"task": "sentiment"}, None, _TEXT_VEC),
    ("prefenv/TextKeyword-v0", _TEXT_TASK, {"task": "keyword"}, None, _TEXT_VEC),
    ("prefenv/TextConcise-v0", _TEXT_TASK, {"task": "concise"}, None, _TEXT_VEC),
    # Multi-turn: the env ends the dialogue itself (goal met, user left, or its max_turns).
    ("prefenv/TextDialogue-v0", "envs.text.dialogue:DialogueEnv", {}, None, None),
)


def registered_ids() -> list[str]:
    """The Gymnasium ids this package registers, in registration order."""
    return [row[0] for row in _REGISTRY]


def register_envs() -> None:
    """Register every prefenv id with Gymnasium; calling it again is a no-op.

    Ids that are already in Gymnasium's registry are left untouched, so a user who re-registered
    one of our ids with other defaults keeps theirs.
    """
    for env_id, entry_point, kwargs, max_episode_steps, vector_entry_point in _REGISTRY:
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point=entry_point,
            kwargs=dict(kwargs),
            max_episode_steps=max_episode_steps,
            vector_entry_point=vector_entry_point,
        )


register_envs()
