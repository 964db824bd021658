"""The explicit bridge from a Gymnasium 1.x vector env to SB3's ``VecEnv`` API.

SB3 does not accept Gymnasium's ``VectorEnv`` (``gymnasium.make_vec``): its ``VecEnv`` API
differs. ``SB3VecEnvBridge`` translates explicitly:

================================  =============================================================
Gymnasium ``VectorEnv``           SB3 ``VecEnv`` (what the bridge returns)
================================  =============================================================
``reset() -> obs, infos``         ``reset() -> obs`` (infos in ``reset_infos``)
``terminated``, ``truncated``     ``dones = terminated | truncated``;
                                  ``infos[i]["TimeLimit.truncated"] = truncated & ~terminated``
dict of arrays + ``_key`` masks   list of one dict per env
SAME_STEP autoreset:              ``infos[i]["terminal_observation"]`` = the final obs, and the
``info["final_obs"/"final_info"]``  returned obs of a finished env is already its reset obs
================================  =============================================================

Autoreset modes: ``SAME_STEP`` (what ``make_sb3_vec_env`` builds) matches SB3's semantics
directly. ``DISABLED`` is also supported: the bridge resets finished sub-envs itself with
``reset(options={"reset_mask": dones})`` (use it under Gymnasium vector *observation*
wrappers, which refuse SAME_STEP). Gymnasium's default ``NEXT_STEP`` is refused with an error
naming the fix: it resets a finished env one call *later*, ignoring that call's action, which
SB3 cannot express. Under SAME_STEP a finished env's top-level info mixes its reset info with
keys vector wrappers added for the step; the bridge keeps both in the step info (the sub-env's
``final_info`` wins). DISABLED keeps step and reset infos strictly apart.

Each finished env's info also gets SB3's episode record ``info["episode"] = {"r", "l", "t"}``
(so ``rollout/ep_rew_mean`` is logged without a ``Monitor``) plus ``"true_r"``, the episode's
sum of ``info["true_reward"]`` when the env reports it (the hidden return under a learned
reward); both are counted by :class:`prefenv.episodes.EpisodeAccountant`. An ``"episode"``
already set by an inner ``Monitor``/``RecordEpisodeStatistics`` is kept.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import load_env_creator
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv
from stable_baselines3.common.env_util import is_wrapped
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn

from prefenv.episodes import EpisodeAccountant, EpisodeStats

__all__ = ["SB3VecEnvBridge", "check_sb3_spaces"]

_SUPPORTED_MODES = (AutoresetMode.SAME_STEP, AutoresetMode.DISABLED)
_SB3_OBS_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
_SB3_ACT_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


class SB3VecEnvBridge(VecEnv):
    """Present a Gymnasium 1.x ``VectorEnv`` (sync or async) through SB3's ``VecEnv`` API.

    See the module docstring for the exact translation. ``get_attr``, ``set_attr``,
    ``env_method`` and ``env_is_wrapped`` reach the sub-envs directly under a
    ``SyncVectorEnv``; under an ``AsyncVectorEnv`` they go through Gymnasium's ``call`` /
    ``get_attr`` / ``set_attr`` (all sub-envs), so ``env_method`` on a subset of an async env
    is refused, ``set_attr`` on a subset reads then writes every env, and ``env_is_wrapped``
    reads the wrappers recorded in each sub-env's ``spec``.

    Args:
        venv: The vector env, with ``metadata["autoreset_mode"]`` SAME_STEP or DISABLED
            (``gymnasium.make_vec(..., vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP})``).

    Raises:
        ValueError: NEXT_STEP (Gymnasium's default) or no autoreset mode; a nested Dict, Tuple
            or other observation space, or an action space, that SB3 does not support.
    """

    def __init__(self, venv: VectorEnv) -> None:
        mode = venv.metadata.get("autoreset_mode")
        if mode not in _SUPPORTED_MODES:
            raise ValueError(
                f"SB3VecEnvBridge needs a vector env with autoreset_mode SAME_STEP or DISABLED, "
                f"got {mode}: build it with gymnasium.make_vec(..., vector_kwargs="
                "{'autoreset_mode': gymnasium.vector.AutoresetMode.SAME_STEP}) or "
                "SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP), or use "
                "agents.sb3.make_sb3_vec_env"
            )
        check_sb3_spaces(venv.single_observation_space, venv.single_action_space)
        self.venv = venv
        self.autoreset_mode: AutoresetMode = mode
        self._actions: np.ndarray | None = None
        self._episodes = EpisodeAccountant(venv.num_envs, mode)
        self._t_start = time.time()
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)

    # -- the VecEnv step/reset contract ---------------------------------------------------

    def reset(self) -> Any:
        """Reset every sub-env with the seeds from ``seed()`` and options from ``set_options()``.

        SB3's ``seed(s)`` gives sub-env ``i`` the seed ``s + i``: the ecosystem convention
        (Gymnasium's vector envs do the same), kept so SB3 and Gymnasium runs seed alike.
        """
        seeds = None if all(s is None for s in self._seeds) else list(self._seeds)
        options = self._options
        if any(options) and any(o != options[0] for o in options):
            raise ValueError(
                "Gymnasium vector envs take one options dict for every sub-env, got different "
                f"per-env options {options}: pass a single dict to set_options"
            )
        obs, infos = self.venv.reset(seed=seeds, options=dict(options[0]) or None)
        self.reset_infos = _split_infos(infos, self.num_envs)
        self._reset_seeds()
        self._reset_options()
        self._episodes.reset()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async(actions)")
        obs, rewards, terminated, truncated, infos = self.venv.step(self._actions)
        self._actions = None
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        dones = terminated | truncated
        finished = self._episodes.step(rewards, terminated, truncated, infos).finished
        env_infos = _split_infos(infos, self.num_envs)
        if dones.any():
            if self.autoreset_mode == AutoresetMode.SAME_STEP:
                self._take_final_infos(env_infos, dones)
            else:
                obs = self._reset_done_envs(obs, env_infos, dones)
        for i, info in enumerate(env_infos):
            info["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        for stats in finished:
            self._add_episode_record(env_infos[stats.env_index], stats)
        return obs, np.asarray(rewards, dtype=np.float32), dones, env_infos

    def _take_final_infos(self, env_infos: list[dict[str, Any]], dones: np.ndarray) -> None:
        """SAME_STEP: split a finished env's info into its step info and its reset info.

        The sub-env's own step info is ``final_info``; the top level holds the sub-env's reset
        info plus whatever vector wrappers added for this step (e.g. a learned reward, an
        ``episode`` record). Vector-level keys cannot be told apart from reset keys, so the step
        info is ``{**top_level, **final_info}`` (the sub-env's own values win) and the reset info
        is the top level alone.
        """
        for i in np.flatnonzero(dones):
            top = env_infos[i]
            final_obs = top.pop("final_obs", None)
            final_info = top.pop("final_info", {})
            if final_obs is None:
                raise RuntimeError(
                    f"sub-env {i} finished but the vector env gave no info['final_obs']: is a "
                    "vector wrapper dropping infos?"
                )
            self.reset_infos[i] = dict(top)
            env_infos[i] = {**top, **final_info, "terminal_observation": final_obs}

    def _reset_done_envs(self, obs: Any, env_infos: list[dict[str, Any]], dones: np.ndarray) -> Any:
        """DISABLED: keep each finished env's final obs, then reset exactly those envs."""
        for i in np.flatnonzero(dones):
            env_infos[i]["terminal_observation"] = _copy_obs_at(obs, i)
        obs, reset_infos = self.venv.reset(options={"reset_mask": dones.copy()})
        for i, info in enumerate(_split_infos(reset_infos, self.num_envs)):
            if dones[i]:
                self.reset_infos[i] = info
        return obs

    def _add_episode_record(self, info: dict[str, Any], stats: EpisodeStats) -> None:
        """SB3's ``info["episode"]`` of a finished env (an inner Monitor's record is kept)."""
        episode = dict(info.get("episode") or {})
        if not episode:
            episode = {
                "r": stats.learned_return,
                "l": stats.length,
                "t": round(time.time() - self._t_start, 6),
            }
        if not math.isnan(stats.true_return):
            episode["true_r"] = stats.true_return
        info["episode"] = episode

    def close(self) -> None:
        self.venv.close()

    # -- attribute access and wrappers ----------------------------------------------------

    def _sync_envs(self) -> list[gym.Env] | None:
        base = self.venv.unwrapped
        return list(base.envs) if isinstance(base, SyncVectorEnv) else None

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """Attribute ``attr_name`` of the target sub-envs (searched through their wrappers)."""
        idx = list(self._get_indices(indices))
        envs = self._sync_envs()
        if envs is not None:
            return [envs[i].get_wrapper_attr(attr_name) for i in idx]
        values = self.venv.get_attr(attr_name)
        return [values[i] for i in idx]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set ``attr_name`` to ``value`` on the target sub-envs."""
        idx = list(self._get_indices(indices))
        envs = self._sync_envs()
        if envs is not None:
            for i in idx:
                envs[i].set_wrapper_attr(attr_name, value)
            return
        if len(idx) == self.num_envs:
            self.venv.set_attr(attr_name, [value] * self.num_envs)
            return
        values = list(self.venv.get_attr(attr_name))
        for i in idx:
            values[i] = value
        self.venv.set_attr(attr_name, values)

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        """Call ``method_name(*method_args, **method_kwargs)`` on the target sub-envs."""
        idx = list(self._get_indices(indices))
        envs = self._sync_envs()
        if envs is not None:
            return [
                envs[i].get_wrapper_attr(method_name)(*method_args, **method_kwargs) for i in idx
            ]
        if sorted(idx) != list(range(self.num_envs)):
            raise NotImplementedError(
                f"env_method({method_name!r}) on a subset {idx} of an async vector env: "
                "Gymnasium's AsyncVectorEnv.call reaches every sub-env; call it on all of "
                "them or use vectorization_mode='sync'"
            )
        results = self.venv.call(method_name, *method_args, **method_kwargs)
        return [results[i] for i in idx]

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        """Whether each target sub-env is wrapped in ``wrapper_class`` (or a subclass)."""
        idx = list(self._get_indices(indices))
        envs = self._sync_envs()
        if envs is not None:
            return [is_wrapped(envs[i], wrapper_class) for i in idx]
        specs = self.venv.get_attr("spec")
        return [_spec_has_wrapper(specs[i], wrapper_class) for i in idx]

    def get_images(self) -> Sequence[np.ndarray | None]:
        """One ``rgb_array`` frame per sub-env (``render_mode="rgb_array"`` sub-envs only)."""
        if self.render_mode != "rgb_array":
            raise ValueError(
                f"get_images needs sub-envs made with render_mode='rgb_array', got "
                f"{self.render_mode!r}"
            )
        return list(self.venv.render())


# -- helpers --------------------------------------------------------------------------------


def check_sb3_spaces(observation_space: gym.Space, action_space: gym.Space) -> None:
    """Raise a ValueError naming the fix if SB3 cannot handle these (single-env) spaces."""
    if isinstance(observation_space, spaces.Dict):
        nested = [
            k for k, s in observation_space.spaces.items() if not isinstance(s, _SB3_OBS_SPACES)
        ]
        if nested:
            raise ValueError(
                f"SB3 supports only flat Dict observations, but keys {nested} hold "
                f"{[type(observation_space[k]).__name__ for k in nested]}: flatten them "
                "(e.g. gymnasium.wrappers.FlattenObservation or one level of keys)"
            )
    elif not isinstance(observation_space, _SB3_OBS_SPACES):
        raise ValueError(
            f"SB3 does not support {type(observation_space).__name__} observations: use Box, "
            "Discrete, MultiDiscrete, MultiBinary or a flat Dict (FlattenObservation helps)"
        )
    if not isinstance(action_space, _SB3_ACT_SPACES):
        raise ValueError(
            f"SB3 does not support {type(action_space).__name__} actions: use Box, Discrete, "
            "MultiDiscrete or MultiBinary"
        )


def _split_infos(infos: Mapping[str, Any], num_envs: int) -> list[dict[str, Any]]:
    """Gymnasium's vector info (arrays with ``_key`` presence masks, nested) -> one dict per env."""
    out: list[dict[str, Any]] = [{} for _ in range(num_envs)]
    for key, value in infos.items():
        if key.startswith("_") and key[1:] in infos:
            continue  # a presence mask
        mask = infos.get(f"_{key}")
        if isinstance(value, Mapping):
            per_env: Sequence[Any] = _split_infos(value, num_envs)
        elif isinstance(value, np.ndarray) and value.ndim > 0 and len(value) == num_envs:
            per_env = value
        else:  # not batched (e.g. set by a custom vector wrapper): shared by every env
            per_env = [value] * num_envs
        for i in range(num_envs):
            if mask is None or mask[i]:
                out[i][key] = per_env[i]
    return out


def _copy_obs_at(obs: Any, i: int) -> Any:
    if isinstance(obs, Mapping):
        return {k: np.array(v[i]) for k, v in obs.items()}
    return np.array(obs[i])


def _spec_has_wrapper(spec: gym.envs.registration.EnvSpec | None, wrapper_class: type) -> bool:
    """Whether ``gymnasium.make`` (from ``spec``) or later wrapping applied ``wrapper_class``."""
    if spec is None:
        return False
    applied: list[type] = []
    if spec.max_episode_steps is not None:
        applied.append(gym.wrappers.TimeLimit)
    if spec.order_enforce:
        applied.append(gym.wrappers.OrderEnforcing)
    if not spec.disable_env_checker:
        applied.append(gym.wrappers.PassiveEnvChecker)
    for wrapper_spec in spec.additional_wrappers:
        cls = load_env_creator(wrapper_spec.entry_point)
        if isinstance(cls, type):
            applied.append(cls)
    return any(issubclass(cls, wrapper_class) for cls in applied)
