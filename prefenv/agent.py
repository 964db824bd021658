"""The agent contract: what the preference loop and the run folders need from any agent.

- :class:`Agent`: ``learn`` (continue training), ``predict``, ``save`` and ``num_timesteps``.
  prefenv's PPO-KL (:class:`agents.ppo_kl.PPOKL`) and the Stable-Baselines3 adapter
  (:class:`agents.sb3.SB3Agent`) implement it.
- :class:`RelabellingAgent`: the optional capability ``relabel_rewards(reward_fn) -> int`` of
  agents that keep old rewards (an off-policy replay buffer). The loop calls it after every
  reward-model refit on agents that are instances of it; for every other agent the default is
  "nothing to relabel" (0 transitions).
- :class:`RolloutSized`: the optional factory capability ``steps_per_learn(settings)``, the env
  steps a ``learn`` call rounds up to; ``prefenv train`` uses it to warn before a run overshoots
  its step budget.
- :class:`AgentFactory` and the registry (:func:`register_agent`, :func:`agent_factory`,
  :func:`registered_agents`): how an application (``prefenv train``) builds an agent by name for
  a run, reloads it from a run folder, and which vector env it needs.

Loading is a factory-level operation (:meth:`AgentFactory.load`), not part of :class:`Agent`:
rebuilding an agent needs its env stack and run settings (PPO-KL's reference policy, SB3's
``VecNormalize``), which only the factory knows. The concrete classes also offer a ``load``
classmethod of their own for code that builds agents by hand.

Registering an agent: call ``register_agent("my-agent", MyFactory())`` in a module and either
name that module on the command line (``prefenv train --import my_pkg.agents --agent
my-agent``) or declare it as an entry point of an installed package::

    [project.entry-points."prefenv.agents"]
    my_pkg = "my_pkg.agents"

This core module imports neither ``agents`` nor ``envs``; prefenv's own four agents are
registered by :mod:`prefenv.app.agents` (the application layer).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

__all__ = [
    "AGENT_ENTRY_POINT_GROUP",
    "Agent",
    "AgentFactory",
    "RelabellingAgent",
    "RewardFn",
    "RolloutSized",
    "UnknownAgentError",
    "agent_factory",
    "register_agent",
    "registered_agents",
]

RewardFn = Callable[[Any, np.ndarray, Any, int], np.ndarray]
"""``(obs, actions, next_obs, n) -> [n]`` learned rewards of ``n`` stored transitions, in the env's
own batch format (:meth:`prefenv.wrappers.VectorPreferenceReward.learned_rewards`)."""

SettingsT_contra = TypeVar("SettingsT_contra", contravariant=True)

AGENT_ENTRY_POINT_GROUP = "prefenv.agents"
"""Packaging entry-point group of modules whose import registers agents (see the module docstring)."""


@runtime_checkable
class Agent(Protocol):
    """An agent trained on a Gymnasium vector env that it keeps between calls.

    ``save(directory)`` writes everything needed to continue exactly: weights, optimiser state,
    normalisers and RNG streams. An agent may restart its env when it saves (PPO-KL and the SB3
    adapter do, with a seed they store), so that the live run and one resumed from the directory
    continue from the same state.
    """

    @property
    def num_timesteps(self) -> int:
        """Env steps trained so far, over all sub-envs."""
        ...

    def learn(self, total_timesteps: int) -> Any:
        """Train for ``total_timesteps`` more env steps, continuing where the last call stopped."""
        ...

    def predict(self, obs: Any, deterministic: bool = True) -> np.ndarray:
        """Actions ``[N, *action_shape]`` for a batch of observations ``[N, ...]``."""
        ...

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write an exactly-resumable checkpoint into ``directory`` (atomically, file by file)."""
        ...


@runtime_checkable
class RelabellingAgent(Agent, Protocol):
    """An agent that keeps rewards from older reward models and can rescore them."""

    def relabel_rewards(self, reward_fn: RewardFn) -> int:
        """Rescore every stored transition with ``reward_fn``; returns how many were rescored."""
        ...


class AgentFactory(Protocol[SettingsT_contra]):
    """How an application builds, checks and reloads one kind of agent for a run.

    ``SettingsT_contra`` is the application's settings type: ``prefenv train`` passes its
    :class:`prefenv.app.spec.TrainSpec`.

    Attributes:
        autoreset_mode: the autoreset mode of the vector env the agent trains on (Gymnasium's
            NEXT_STEP for PPO-KL; SAME_STEP for SB3, whose VecEnv resets finished envs at once).
        on_policy: True when the agent learns only from its latest rollouts (PPO, A2C) and may
            round a ``learn`` call up to whole rollouts; False for replay-buffer agents (SAC).
    """

    autoreset_mode: AutoresetMode
    on_policy: bool

    def check(self, settings: SettingsT_contra) -> None:
        """Raise ``ValueError`` naming the fix when ``settings`` ask for what the agent lacks."""
        ...

    def build(
        self,
        settings: SettingsT_contra,
        env: gym.vector.VectorEnv,
        *,
        seed: int,
        env_seed: int,
        log_dir: Path | None,
    ) -> Agent:
        """A new agent on ``env``.

        Args:
            settings: the run's settings.
            env: the vector env stack to train on (its autoreset mode is ``autoreset_mode``).
            seed: seeds the agent's own randomness (initialisation, sampling, minibatches).
            env_seed: seeds the env's first reset.
            log_dir: where the agent may write training logs; None for none.
        """
        ...

    def load(
        self,
        settings: SettingsT_contra,
        env: gym.vector.VectorEnv,
        directory: Path,
        *,
        log_dir: Path | None,
    ) -> Agent:
        """The agent saved by ``Agent.save(directory)``, on a freshly built ``env``."""
        ...


@runtime_checkable
class RolloutSized(Protocol[SettingsT_contra]):
    """A factory whose agents train in whole rollouts (an optional :class:`AgentFactory` part)."""

    def steps_per_learn(self, settings: SettingsT_contra) -> int:
        """Env steps (all sub-envs together) a ``learn(n)`` call rounds ``n`` up to a multiple of."""
        ...


class UnknownAgentError(ValueError):
    """An agent name that no registered factory answers to."""


_FACTORIES: dict[str, AgentFactory[Any]] = {}
_loaded_entry_points: set[str] = set()


def register_agent(name: str, factory: AgentFactory[Any], *, replace: bool = False) -> None:
    """Make ``factory`` the builder of agent ``name`` (what ``prefenv train --agent`` accepts).

    Raises:
        ValueError: ``name`` is already registered to another factory and ``replace`` is False.
    """
    if not name or any(c.isspace() for c in name):
        raise ValueError(f"agent names are non-empty and without spaces, got {name!r}")
    current = _FACTORIES.get(name)
    if current is not None and current is not factory and not replace:
        raise ValueError(
            f"agent {name!r} is already registered ({type(current).__name__}): pick another "
            "name, or pass replace=True to override it"
        )
    _FACTORIES[name] = factory


def _load_entry_points() -> None:
    for entry_point in entry_points(group=AGENT_ENTRY_POINT_GROUP):
        if entry_point.value not in _loaded_entry_points:
            importlib.import_module(entry_point.value)
            _loaded_entry_points.add(entry_point.value)


def registered_agents() -> tuple[str, ...]:
    """Names of every registered agent (entry points of installed packages included), sorted."""
    _load_entry_points()
    return tuple(sorted(_FACTORIES))


def agent_factory(name: str) -> AgentFactory[Any]:
    """The factory registered as ``name``.

    Raises:
        UnknownAgentError: no such agent; the message lists the registered ones and how to add one.
    """
    if name not in _FACTORIES:
        _load_entry_points()
    if name not in _FACTORIES:
        known = ", ".join(sorted(_FACTORIES)) or "none"
        raise UnknownAgentError(
            f"unknown agent {name!r}: choose one of {known}, or register it with "
            f"prefenv.agent.register_agent({name!r}, factory) in a module named by "
            f"--import (or a {AGENT_ENTRY_POINT_GROUP!r} entry point)"
        )
    return _FACTORIES[name]
