"""prefenv's own agents for ``prefenv train``: PPO-KL and the Stable-Baselines3 baselines.

Importing this module registers ``ppo-kl``, ``sb3-ppo``, ``sb3-sac`` and ``sb3-a2c`` with
:func:`prefenv.agent.register_agent`. The factories import ``agents`` (and, for a production
reference, ``envs``) inside their methods, so ``import prefenv.app`` stays light.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import gymnasium as gym
from gymnasium.vector import AutoresetMode

from prefenv.agent import Agent, register_agent

if TYPE_CHECKING:
    from agents.ppo_kl import PPOKLConfig, RayRollouts
    from prefenv.app.spec import TrainSpec

__all__ = [
    "RUN_OWNED",
    "PPOKLFactory",
    "RolloutWorkersEnv",
    "SB3Factory",
    "check_hparams",
    "make_reference",
    "ppo_kl_config",
]


RUN_OWNED = {"n_steps": "--n-steps", "kl_coef": "--kl-coef", "seed": "--seed",
             "env_seed": "--seed", "norm_obs": "--reference", "norm_reward": None}  # fmt: skip
"""Agent settings the run itself sets (the flag that sets each): ``--hparams`` may not."""


def check_hparams(hparams: Mapping[str, Any], valid: Collection[str], agent: str) -> None:
    """Refuse ``--hparams`` keys the agent does not have, or that a run flag owns.

    Raises:
        ValueError: naming the key, the closest valid one and the flag to use instead.
    """
    for key in hparams:
        if key in RUN_OWNED and key in valid:
            owner = RUN_OWNED[key]
            how = f"set it with {owner}" if owner else "the preference loop sets it"
            raise ValueError(f"--hparams {key} is not an agent setting for a run: {how}")
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ValueError(
                f"--hparams {key}: {agent} has no such setting; {hint}settings: "
                f"{', '.join(sorted(k for k in valid if k not in RUN_OWNED))}"
            )


def ppo_kl_config(spec: TrainSpec, seed: int, env_seed: int, norm_obs: bool = True) -> PPOKLConfig:
    """The ``PPOKLConfig`` ``prefenv train`` gives PPO-KL for ``spec`` (its ``hparams`` on top)."""
    from agents.ppo_kl import PPOKLConfig

    tuples = {f.name for f in dataclasses.fields(PPOKLConfig) if isinstance(f.default, tuple)}
    hparams = {k: tuple(v) if k in tuples else v for k, v in spec.hparams.items()}
    return PPOKLConfig(
        **hparams,
        n_steps=spec.n_steps,
        norm_obs=norm_obs,
        norm_reward=True,  # learned rewards change scale at every refit
        kl_coef=spec.kl_coef,
        seed=seed,
        env_seed=env_seed,
    )


def make_reference(spec: TrainSpec, venv: gym.vector.VectorEnv) -> Any:
    """The frozen production reference named by ``spec.reference`` (None when unset).

    Raises:
        ValueError: the env is not a recommendation env (the production recommenders read the
            ``prefenv/RecSlate`` / ``RecSingle`` observation layout).
    """
    if not spec.reference:
        return None
    from envs.recommendation.policies import ProductionPolicy

    try:
        return ProductionPolicy.for_env(
            venv, kind=spec.reference.replace("-", "_"), temperature=spec.ref_temperature
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"--reference {spec.reference} is a production recommender for the recommendation "
            f"envs (prefenv/RecSlate-v0, prefenv/RecSingle-v0), not {spec.env}: {exc}"
        ) from exc


class RolloutWorkersEnv(gym.vector.VectorWrapper):
    """The env ``--rollout-workers`` runs hand PPO-KL: the learner-side stack (spaces, and the
    wrappers the preference loop reads) with the rollout workers that step copies of it.

    It carries the workers through :meth:`PPOKLFactory.build` / ``load``, whose env argument is
    all an agent factory gets. Its base is a :class:`~agents.ppo_kl.RemoteEnvs`, which refuses
    single steps: the agent samples whole rollouts from ``rollouts``.
    """

    def __init__(self, env: gym.vector.VectorEnv, rollouts: RayRollouts) -> None:
        super().__init__(env)
        self.rollouts = rollouts


def _rollouts(env: gym.vector.VectorEnv) -> RayRollouts | None:
    return env.rollouts if isinstance(env, RolloutWorkersEnv) else None


class PPOKLFactory:
    """PPO with a KL leash (:class:`agents.ppo_kl.PPOKL`), observation and return normalised.

    The leash's reference is the frozen initial policy, or ``spec.reference``'s production
    recommender; that one scores raw observations, so observation normalisation is then off.
    Given a :class:`RolloutWorkersEnv`, the agent takes its rollouts from its workers.
    """

    autoreset_mode: ClassVar[AutoresetMode] = AutoresetMode.NEXT_STEP
    on_policy: ClassVar[bool] = True

    def check(self, settings: TrainSpec) -> None:
        """``hparams`` must be :class:`~agents.ppo_kl.PPOKLConfig` fields with valid values."""
        from agents.ppo_kl import PPOKLConfig

        check_hparams(settings.hparams, {f.name for f in dataclasses.fields(PPOKLConfig)}, "ppo-kl")
        try:
            ppo_kl_config(settings, seed=0, env_seed=0)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"--hparams: {exc}") from exc

    def steps_per_learn(self, settings: TrainSpec) -> int:
        """One rollout: ``n_steps`` on each of ``n_envs`` sub-envs."""
        return settings.n_envs * settings.n_steps

    def build(
        self,
        settings: TrainSpec,
        env: gym.vector.VectorEnv,
        *,
        seed: int,
        env_seed: int,
        log_dir: Path | None,
    ) -> Agent:
        from agents.ppo_kl import PPOKL

        ref_policy = make_reference(settings, env)
        config = ppo_kl_config(settings, seed, env_seed, norm_obs=ref_policy is None)
        return PPOKL(env, config, ref_policy=ref_policy, log_dir=log_dir, rollouts=_rollouts(env))

    def load(
        self,
        settings: TrainSpec,
        env: gym.vector.VectorEnv,
        directory: Path,
        *,
        log_dir: Path | None,
    ) -> Agent:
        from agents.ppo_kl import PPOKL

        ref_policy = make_reference(settings, env)
        return PPOKL.load(
            directory, env, ref_policy=ref_policy, log_dir=log_dir, rollouts=_rollouts(env)
        )


@dataclass(frozen=True)
class SB3Factory:
    """An SB3 algorithm of :data:`agents.sb3.SB3_ALGOS` behind :class:`agents.sb3.SB3Agent`.

    The env is bridged to SB3's VecEnv API and wrapped in a rewards-only ``VecNormalize``:
    learned rewards change scale at every refit, as PPO-KL's ``norm_reward`` handles.

    Attributes:
        name: the ``SB3_ALGOS`` key.
        on_policy: True for PPO and A2C, False for SAC (a replay buffer the loop relabels).
        uses_n_steps: ``TrainSpec.n_steps`` sets the rollout length (sb3-ppo; A2C keeps SB3's).
    """

    autoreset_mode: ClassVar[AutoresetMode] = AutoresetMode.SAME_STEP

    name: str
    on_policy: bool
    uses_n_steps: bool = False

    def check(self, settings: TrainSpec) -> None:
        """No KL leash for SB3 agents; ``hparams`` must be the SB3 class's arguments."""
        if settings.kl_coef > 0 or settings.reference:
            raise ValueError(
                f"--kl-coef and --reference leash PPO-KL to a reference policy; agent {self.name!r} "
                "has no KL leash: use --agent ppo-kl, or drop --kl-coef / --reference"
            )
        from agents.sb3 import SB3_ALGOS

        parameters = set(inspect.signature(SB3_ALGOS[self.name].algo).parameters)
        check_hparams(settings.hparams, parameters - {"policy", "env", "_init_setup_model"},
                      self.name)  # fmt: skip

    def steps_per_learn(self, settings: TrainSpec) -> int:
        """A rollout for PPO / A2C (``n_steps`` per sub-env), one vector step for SAC."""
        if not self.on_policy:
            return settings.n_envs
        if self.uses_n_steps:
            return settings.n_envs * settings.n_steps
        from agents.sb3 import SB3_ALGOS

        config = SB3_ALGOS[self.name]
        own = inspect.signature(config.algo).parameters["n_steps"].default  # SB3's (A2C: 5)
        return settings.n_envs * int(config.defaults.get("n_steps", own))

    def build(
        self,
        settings: TrainSpec,
        env: gym.vector.VectorEnv,
        *,
        seed: int,
        env_seed: int,
        log_dir: Path | None,
    ) -> Agent:
        from stable_baselines3.common.vec_env import VecNormalize

        from agents.sb3 import SB3Agent, SB3VecEnvBridge

        venv = VecNormalize(SB3VecEnvBridge(env), norm_obs=False, norm_reward=True)
        overrides = {**settings.hparams}
        if self.uses_n_steps:
            overrides["n_steps"] = settings.n_steps
        return SB3Agent.from_name(self.name, venv, seed=seed, env_seed=env_seed, **overrides)

    def load(
        self,
        settings: TrainSpec,
        env: gym.vector.VectorEnv,
        directory: Path,
        *,
        log_dir: Path | None,
    ) -> Agent:
        from agents.sb3 import SB3Agent, SB3VecEnvBridge

        return SB3Agent.load(directory, self.name, SB3VecEnvBridge(env))


register_agent("ppo-kl", PPOKLFactory())
register_agent("sb3-ppo", SB3Factory("sb3-ppo", on_policy=True, uses_n_steps=True))
register_agent("sb3-sac", SB3Factory("sb3-sac", on_policy=False))
register_agent("sb3-a2c", SB3Factory("sb3-a2c", on_policy=True))
