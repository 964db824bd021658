"""The presenter of a run's env: how its queries are shown to a person.

A task family names its presenter in its env's ``metadata[PRESENTER_METADATA]`` as
``"module:attr"``, a factory called with the env; this module resolves it (no branch on family
names) and falls back to :class:`~prefenv.presenters.GenericPresenter`, a table of observations
and actions, for any env that names none.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import gymnasium as gym

import prefenv
from prefenv.presenters import PRESENTER_METADATA, GenericPresenter, PairPresenter

__all__ = ["presenter_for", "presenter_of_env"]


def presenter_for(env_id: str, env_kwargs: Mapping[str, Any] | None = None) -> PairPresenter:
    """Make ``env_id`` once (with the run's ``env_kwargs``) and return its presenter.

    The env is handed to the presenter, which keeps what it needs (a MuJoCo presenter its
    model and one offscreen renderer, a text presenter the tokenizer).

    Raises:
        prefenv.UnknownEnvError: no imported module registers ``env_id``.
        ValueError: the env names a presenter that does not resolve, or that does not return a
            :class:`~prefenv.presenters.PairPresenter`.
    """
    env = prefenv.make(env_id, **dict(env_kwargs or {}))
    return presenter_of_env(env, env_id)


def presenter_of_env(env: gym.Env, env_id: str) -> PairPresenter:
    """The presenter ``env``'s metadata names, or :class:`GenericPresenter`.

    ``env.metadata`` is read through the wrappers, so a task wrapper (MuJoCo's ``MujocoTask``)
    may name the presenter as well as the base env.
    """
    target = env.metadata.get(PRESENTER_METADATA)
    if target is None:
        env.close()
        return GenericPresenter()
    presenter = _resolve(target, env_id)(env)
    if not isinstance(presenter, PairPresenter):
        raise ValueError(
            f"{env_id}'s presenter {target!r} returned a {type(presenter).__name__}, which has "
            "no present(segment0, segment1, folder, stem) method"
        )
    return presenter


def _resolve(target: Any, env_id: str) -> Any:
    """The callable ``"module:attr"`` names."""
    module_name, _, attr = str(target).partition(":")
    if not module_name or not attr:
        raise ValueError(
            f"{env_id}'s metadata[{PRESENTER_METADATA!r}] = {target!r} is not 'module:attr' "
            "(e.g. 'envs.mujoco.clips:ClipPresenter')"
        )
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(
            f"{env_id}'s presenter {target!r} cannot be loaded ({exc}): fix the env's "
            f"metadata[{PRESENTER_METADATA!r}] or install the package that provides it"
        ) from exc
    if not callable(factory):
        raise ValueError(f"{env_id}'s presenter {target!r} is not callable: name a class")
    return factory
