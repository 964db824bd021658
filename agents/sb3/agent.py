"""SB3 agents on prefenv's envs: SAME_STEP vector envs bridged to SB3, ready PPO / SAC / A2C
configs, and :class:`SB3Agent`, the adapter the preference loop drives (continue training,
relabel an off-policy replay buffer after a refit, checkpoint with the buffer)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from stable_baselines3 import A2C, PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv

from agents.sb3.bridge import SB3VecEnvBridge

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
        seed: Sub-env ``i`` is reset with ``seed + i`` on the first ``reset()``; None = random.
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
    """Adapter giving an SB3 model the small interface the preference loop drives.

    ``learn`` continues training (``reset_num_timesteps=False``), so a loop can interleave
    chunks of agent training with reward-model refits; the env is not reset between chunks.

    Args:
        model: A built SB3 model (``make_sb3_agent``).
    """

    def __init__(self, model: BaseAlgorithm) -> None:
        self.model = model

    @classmethod
    def from_name(
        cls, name: str, venv: VecEnv, seed: int | None = None, **overrides: Any
    ) -> SB3Agent:
        """``SB3Agent(make_sb3_agent(name, venv, seed, **overrides))``."""
        return cls(make_sb3_agent(name, venv, seed, **overrides))

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
        self, score: Callable[[Any, np.ndarray, Any, int], np.ndarray], chunk: int = 65_536
    ) -> int:
        """Recompute every stored reward of an off-policy replay buffer (PEBBLE's relabelling).

        After a refit the rewards an off-policy agent (SAC) stored came from an older reward
        model; this rescores them all with ``score(obs, actions, next_obs, n) -> [n]`` (e.g.
        :meth:`prefenv.wrappers.VectorPreferenceReward.learned_rewards`). Observations are the
        ones stored (SB3 keeps the original, unnormalised ones; rewards are normalised when
        sampled), actions are unscaled from SAC's [-1, 1] back to the env's Box.

        Returns:
            Transitions relabelled (0 for on-policy algorithms, which keep no buffer).
        """
        buffer = getattr(self.model, "replay_buffer", None)
        if buffer is None:
            return 0
        if getattr(buffer, "optimize_memory_usage", False):
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
            new[start:stop] = score(
                rows(buffer.observations, obs_space, start, stop), acts,
                rows(buffer.next_observations, obs_space, start, stop), stop - start,
            )  # fmt: skip
        buffer.rewards[:size] = new.reshape(size, n_envs)
        return total

    def predict(self, obs: Any, deterministic: bool = True) -> np.ndarray:
        """Actions for a batch (or a single) observation, ``[n_envs, *action_shape]``."""
        actions, _ = self.model.predict(obs, deterministic=deterministic)
        return actions

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model zip atomically (a temp file renamed over ``path``).

        An off-policy model's replay buffer goes next to it (``<stem>_replay_buffer.pkl``, also
        atomic), so a resumed SAC run continues from the transitions it had, not an empty buffer.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.zip")
        self.model.save(tmp)
        os.replace(tmp, path)
        if getattr(self.model, "replay_buffer", None) is not None:
            buffer_path = _replay_buffer_path(path)
            tmp_buffer = buffer_path.with_name(f".{buffer_path.stem}.tmp.pkl")
            self.model.save_replay_buffer(tmp_buffer)
            os.replace(tmp_buffer, buffer_path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], name: str, venv: VecEnv) -> SB3Agent:
        """Load a model saved by :meth:`save` onto ``venv`` (the env it trained on, rebuilt)."""
        if name not in SB3_ALGOS:
            raise ValueError(f"unknown SB3 agent {name!r}: choose one of {sorted(SB3_ALGOS)}")
        if not Path(path).exists():
            raise FileNotFoundError(
                f"no SB3 checkpoint at {path}: was the run started with {name}?"
            )
        agent = cls(SB3_ALGOS[name].algo.load(path, env=venv, device="cpu"))
        buffer_path = _replay_buffer_path(Path(path))
        if getattr(agent.model, "replay_buffer", None) is not None and buffer_path.exists():
            agent.model.load_replay_buffer(buffer_path)
        return agent


def _replay_buffer_path(model_path: Path) -> Path:
    return model_path.with_name(f"{model_path.stem}_replay_buffer.pkl")
