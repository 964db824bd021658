"""SB3 agents on prefenv's envs: SAME_STEP vector envs bridged to SB3, ready PPO / SAC / A2C
configs, and :class:`SB3Agent`, the :class:`prefenv.agent.Agent` adapter the preference loop
drives (continue training, relabel an off-policy replay buffer after a refit, checkpoint with the
buffer, resume exactly)."""

from __future__ import annotations

import functools
import json
import os
import pickle
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from stable_baselines3 import A2C, PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from agents.sb3.bridge import SB3VecEnvBridge
from prefenv.atomic import atomic_write
from prefenv.errors import CheckpointNotFoundError

__all__ = ["SB3_ALGOS", "SB3Agent", "SB3AlgoConfig", "make_sb3_agent", "make_sb3_vec_env"]


def _make_wrapped(
    env_fn: Callable[[], gym.Env], wrappers: Sequence[Callable[[gym.Env], gym.Env]]
) -> gym.Env:
    env = env_fn()
    for wrapper in wrappers:
        env = wrapper(env)
    return env


def make_sb3_vec_env(
    env_id_or_fn: str | Callable[[], gym.Env],
    n_envs: int,
    seed: int | None = None,
    vectorization_mode: str = "sync",
    wrappers: Sequence[Callable[[gym.Env], gym.Env]] | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
) -> SB3VecEnvBridge:
    """Build a SAME_STEP Gymnasium vector env and bridge it to SB3.

    Args:
        env_id_or_fn: A registered id (e.g. ``"prefenv/Reacher-v0"``) or a function returning
            a fresh env (it must be picklable by cloudpickle for ``"async"``).
        n_envs: Number of sub-envs.
        seed: Sub-env ``i`` is reset with ``seed + i`` on the first ``reset()`` (SB3's
            ``VecEnv.seed`` convention, the same as Gymnasium's vector envs); None = random.
        vectorization_mode: ``"sync"`` (one process) or ``"async"`` (one process per env).
        wrappers: Applied in order to every sub-env (e.g. a ``PreferenceReward`` factory).
        env_kwargs: Constructor arguments for ``gymnasium.make`` (ids only), e.g.
            ``{"objective_weights": {...}}``.

    Returns:
        The bridge; call ``close()`` when done (SB3 models do not close their env).
    """
    if vectorization_mode not in ("sync", "async"):
        raise ValueError(
            f"vectorization_mode must be 'sync' or 'async', got {vectorization_mode!r}"
        )
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    wrappers = list(wrappers or [])
    vector_kwargs = {"autoreset_mode": AutoresetMode.SAME_STEP}
    if isinstance(env_id_or_fn, str):
        venv = gym.make_vec(
            env_id_or_fn,
            num_envs=n_envs,
            vectorization_mode=vectorization_mode,
            vector_kwargs=vector_kwargs,
            wrappers=wrappers,
            **dict(env_kwargs or {}),
        )
    else:
        if env_kwargs:
            raise ValueError("env_kwargs applies to env ids only: bind them in env_id_or_fn")
        fns = [functools.partial(_make_wrapped, env_id_or_fn, wrappers)] * n_envs
        vector_cls = (
            gym.vector.SyncVectorEnv if vectorization_mode == "sync" else gym.vector.AsyncVectorEnv
        )
        venv = vector_cls(fns, **vector_kwargs)
    bridge = SB3VecEnvBridge(venv)
    bridge.seed(seed)
    return bridge


# -- ready configs and the agent adapter ----------------------------------------------------


@dataclass(frozen=True)
class SB3AlgoConfig:
    """One ready SB3 algorithm: its class, default constructor arguments, and action needs."""

    algo: type[BaseAlgorithm]
    """The SB3 class (PPO, SAC, A2C)."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """Constructor arguments applied before the caller's overrides (SB3's own defaults else)."""
    box_actions_only: bool = False
    """True for algorithms with a squashed-Gaussian actor (SAC), which need Box actions."""


SB3_ALGOS: dict[str, SB3AlgoConfig] = {
    # SB3 defaults (REFERENCES.md, control PPO: lr 3e-4, n_steps 2048, batch 64, 10 epochs, ...).
    "sb3-ppo": SB3AlgoConfig(PPO, {"device": "cpu"}),
    "sb3-sac": SB3AlgoConfig(SAC, {"device": "cpu"}, box_actions_only=True),
    "sb3-a2c": SB3AlgoConfig(A2C, {"device": "cpu"}),
}
"""Agent name (as the CLI spells it) -> ready config. MLP policies run fastest on CPU."""


def make_sb3_agent(
    name: str, venv: VecEnv, seed: int | None = None, **overrides: Any
) -> BaseAlgorithm:
    """Build the SB3 model ``name`` on ``venv`` with the ready defaults.

    Args:
        name: A key of ``SB3_ALGOS`` ("sb3-ppo", "sb3-sac", "sb3-a2c").
        venv: An SB3 ``VecEnv``, normally from ``make_sb3_vec_env``.
        seed: Seeds the model (torch, numpy, the action space and the env's next reset).
        **overrides: Constructor arguments of the SB3 class (e.g. ``n_steps=64``,
            ``policy_kwargs={"net_arch": [16]}``), applied over the defaults. ``policy``
            defaults to ``"MultiInputPolicy"`` for Dict observations, ``"MlpPolicy"`` otherwise.

    Raises:
        ValueError: unknown name; SAC on a non-Box action space.
    """
    if name not in SB3_ALGOS:
        raise ValueError(f"unknown SB3 agent {name!r}: choose one of {sorted(SB3_ALGOS)}")
    config = SB3_ALGOS[name]
    if config.box_actions_only and not isinstance(venv.action_space, spaces.Box):
        raise ValueError(
            f"{name} needs continuous Box actions, but this env's action space is "
            f"{venv.action_space}: use sb3-ppo or sb3-a2c for discrete actions"
        )
    kwargs = {**config.defaults, **overrides}
    policy = kwargs.pop("policy", None) or (
        "MultiInputPolicy" if isinstance(venv.observation_space, spaces.Dict) else "MlpPolicy"
    )
    return config.algo(policy, venv, seed=seed, **kwargs)


class SB3Agent:
    """Adapter giving an SB3 model prefenv's :class:`prefenv.agent.Agent` interface.

    ``learn`` continues training (``reset_num_timesteps=False``), so a loop can interleave
    chunks of agent training with reward-model refits; the env is not reset between chunks.
    It is a :class:`prefenv.agent.RelabellingAgent`: after a refit the loop rescores an
    off-policy replay buffer (:meth:`relabel_rewards`).

    Args:
        model: A built SB3 model (``make_sb3_agent``).
        env_seed: Seed whose spawned children restart the env at every :meth:`save`; None = the
            model's seed.
    """

    def __init__(self, model: BaseAlgorithm, env_seed: int | None = None) -> None:
        self.model = model
        self._env_seed = int(model.seed or 0) if env_seed is None else env_seed
        self._env_restarts = 0

    @classmethod
    def from_name(
        cls,
        name: str,
        venv: VecEnv,
        seed: int | None = None,
        env_seed: int | None = None,
        **overrides: Any,
    ) -> SB3Agent:
        """``SB3Agent(make_sb3_agent(name, venv, seed, **overrides))``; the env's first reset is
        seeded with ``env_seed`` when given (SB3 seeds it with ``seed`` otherwise)."""
        model = make_sb3_agent(name, venv, seed, **overrides)
        if env_seed is not None:
            venv.seed(env_seed)
        return cls(model, env_seed)

    @property
    def num_timesteps(self) -> int:
        """Env steps trained so far (summed over sub-envs)."""
        return int(self.model.num_timesteps)

    def learn(self, total_timesteps: int, callback: BaseCallback | None = None) -> SB3Agent:
        """Train for ``total_timesteps`` *more* env steps.

        On-policy algorithms finish their current rollout, so they may overshoot by up to one
        rollout (``n_steps * n_envs``).
        """
        self.model.learn(total_timesteps, callback=callback, reset_num_timesteps=False)
        return self

    def relabel_rewards(
        self, reward_fn: Callable[[Any, np.ndarray, Any, int], np.ndarray], chunk: int = 65_536
    ) -> int:
        """Recompute every stored reward of an off-policy replay buffer (PEBBLE's relabelling).

        After a refit the rewards an off-policy agent (SAC) stored came from an older reward
        model; this rescores them all with ``reward_fn(obs, actions, next_obs, n) -> [n]`` (e.g.
        :meth:`prefenv.wrappers.VectorPreferenceReward.learned_rewards`). Observations are the
        ones stored (SB3 keeps the original, unnormalised ones; rewards are normalised when
        sampled), actions are unscaled from SAC's [-1, 1] back to the env's Box.

        Returns:
            Transitions relabelled (0 for on-policy algorithms, which keep no buffer).
        """
        if not isinstance(self.model, OffPolicyAlgorithm) or self.model.replay_buffer is None:
            return 0
        buffer = self.model.replay_buffer
        if buffer.optimize_memory_usage:
            raise ValueError(
                "cannot relabel a replay buffer built with optimize_memory_usage=True (next "
                "observations are not stored apart): build the SB3 agent without it"
            )
        size = buffer.buffer_size if buffer.full else buffer.pos
        n_envs = buffer.n_envs
        obs_space, act_space = self.model.observation_space, self.model.action_space
        total = size * n_envs

        def rows(array: Any, space: gym.Space, start: int, stop: int) -> Any:
            if isinstance(array, Mapping):
                return {k: rows(v, space[k], start, stop) for k, v in array.items()}
            flat = array[:size].reshape(total, *array.shape[2:])[start:stop]
            return flat.reshape(stop - start, *space.shape)

        new = np.empty(total, dtype=np.float32)
        for start in range(0, total, chunk):
            stop = min(start + chunk, total)
            acts = rows(buffer.actions, act_space, start, stop)
            if isinstance(act_space, spaces.Box):
                acts = self.model.policy.unscale_action(acts)
            new[start:stop] = reward_fn(
                rows(buffer.observations, obs_space, start, stop), acts,
                rows(buffer.next_observations, obs_space, start, stop), stop - start,
            )  # fmt: skip
        buffer.rewards[:size] = new.reshape(size, n_envs)
        return total

    def predict(self, obs: Any, deterministic: bool = True) -> np.ndarray:
        """Actions for a batch (or a single) observation, ``[n_envs, *action_shape]``."""
        actions, _ = self.model.predict(obs, deterministic=deterministic)
        return actions

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write an exactly-resumable checkpoint into ``directory``; returns the model zip's path.

        Files (each written atomically): ``sb3.zip`` (the model), ``sb3_replay_buffer.pkl``
        (off-policy models: a resumed SAC run continues from the transitions it had),
        ``vecnormalize.pkl`` (when the env is a ``VecNormalize``) and ``sb3_state.json``.

        As with PPO-KL, env state cannot be saved, so saving *restarts the env*: the next
        ``learn`` resets it with the restart count's child of the env seed. SB3 draws from the
        process-wide torch, numpy and ``random`` generators; their states are saved too, and
        :meth:`load` restores them, so a resumed run continues exactly as the live one.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        child = np.random.SeedSequence(self._env_seed, spawn_key=(self._env_restarts,))
        restart_seed = int(child.generate_state(1)[0])
        self._env_restarts += 1
        env = self.model.get_env()
        env.seed(restart_seed)
        self.model.set_env(env, force_reset=True)  # the next learn() resets the env
        path = directory / MODEL_FILE
        atomic_write(path, lambda handle: self.model.save(handle), binary=True)
        if isinstance(self.model, OffPolicyAlgorithm):
            atomic_write(directory / REPLAY_BUFFER_FILE, self._dump_replay_buffer, binary=True)
        normalize = self.model.get_vec_normalize_env()
        if normalize is not None:
            atomic_write(directory / VECNORMALIZE_FILE, lambda h: pickle.dump(normalize, h),
                         binary=True)  # fmt: skip
        state = {
            "env_seed": self._env_seed,
            "env_restarts": self._env_restarts,
            "restart_seed": restart_seed,
            "rng": _global_rng_state(),
        }
        atomic_write(directory / STATE_FILE, lambda handle: json.dump(state, handle))
        return path

    def _dump_replay_buffer(self, handle: Any) -> None:
        self.model.save_replay_buffer(handle)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], name: str, env: VecEnv) -> SB3Agent:
        """Continue the agent :meth:`save` wrote into ``directory``, on ``env``.

        Args:
            directory: the folder given to :meth:`save`.
            name: the agent's ``SB3_ALGOS`` name (``"sb3-sac"``, ...).
            env: the env it trained on, rebuilt, *without* ``VecNormalize``: the saved one
                (statistics included) is put back on top of it.
        """
        if name not in SB3_ALGOS:
            raise ValueError(f"unknown SB3 agent {name!r}: choose one of {sorted(SB3_ALGOS)}")
        directory = Path(directory)
        if not (directory / MODEL_FILE).exists():
            raise CheckpointNotFoundError(
                f"no SB3 checkpoint {directory / MODEL_FILE}: pass the directory given to "
                f"SB3Agent.save(); was the run started with {name}?"
            )
        if (directory / VECNORMALIZE_FILE).exists():
            env = VecNormalize.load(str(directory / VECNORMALIZE_FILE), env)
        model = SB3_ALGOS[name].algo.load(directory / MODEL_FILE, env=env, device="cpu")
        if isinstance(model, OffPolicyAlgorithm) and (directory / REPLAY_BUFFER_FILE).exists():
            model.load_replay_buffer(directory / REPLAY_BUFFER_FILE)
        state = json.loads((directory / STATE_FILE).read_text())
        agent = cls(model, env_seed=int(state["env_seed"]))
        agent._env_restarts = int(state["env_restarts"])
        env.seed(int(state["restart_seed"]))
        _set_global_rng_state(state["rng"])
        return agent


MODEL_FILE = "sb3.zip"
REPLAY_BUFFER_FILE = "sb3_replay_buffer.pkl"
VECNORMALIZE_FILE = "vecnormalize.pkl"
STATE_FILE = "sb3_state.json"


def _global_rng_state() -> dict[str, Any]:
    """The process-wide generators SB3 samples from, JSON-able."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 (SB3 samples from it)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state().tolist(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "random": [version, list(internal), gauss_next],
    }


def _set_global_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(  # noqa: NPY002 (SB3 samples from the legacy global generator)
        (kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss)
    )
    version, internal, gauss_next = state["random"]
    random.setstate((version, tuple(internal), gauss_next))
