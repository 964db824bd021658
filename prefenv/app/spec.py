"""What ``prefenv train`` is asked: :class:`TrainSpec`, its seeds, and ``run.json``.

Each field's docstring is its ``prefenv train`` command-line help (:mod:`prefenv.app.fields`).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from prefenv.agent import agent_factory
from prefenv.app import agents as _builtin_agents  # noqa: F401  (registers ppo-kl and sb3-*)
from prefenv.atomic import atomic_write
from prefenv.errors import CheckpointError, CheckpointNotFoundError
from prefenv.loop import PreferenceLoopConfig
from prefenv.reward_training import RewardTrainConfig

__all__ = [
    "REFERENCES",
    "RUN_SCHEMA",
    "VECTORIZATIONS",
    "RunSeeds",
    "TrainSpec",
    "load_spec",
    "save_spec",
    "write_json_atomic",
]

REFERENCES = ("popularity", "greedy-click")
"""Production recommenders usable as PPO-KL's frozen reference (``TrainSpec.reference``)."""
VECTORIZATIONS = ("auto", "sync", "async", "vector_entry_point")
"""``TrainSpec.vectorization`` values; ``auto`` = the id's native vector env if any, else sync."""
RUN_SCHEMA = "prefenv.run/1"


class RunSeeds(NamedTuple):
    """A run's independent seeds: the children of ``np.random.SeedSequence(TrainSpec.seed)``.

    Spawn index 0 seeds the envs (first reset, restarts at checkpoints), 1 the agent's own
    randomness, 2 the teacher, 3 query sampling, 4 the reward model (initialisation and the
    split / bootstrap / minibatch order of every refit).
    """

    env: int
    agent: int
    teacher: int
    queries: int
    reward_model: int

    @classmethod
    def from_seed(cls, seed: int) -> RunSeeds:
        children = np.random.SeedSequence(seed).spawn(len(cls._fields))
        return cls(*(int(child.generate_state(1)[0]) for child in children))


@dataclass(frozen=True)
class TrainSpec:
    """Everything ``prefenv train`` needs; saved as ``run.json`` so ``resume`` can rebuild it."""

    env: str = "prefenv/HalfCheetah-v0"
    """Gymnasium id (prefenv/HalfCheetah-v0, prefenv/Hopper-v0, ... or any registered id)."""
    agent: str = "ppo-kl"
    """Registered agent: ppo-kl, sb3-ppo, sb3-sac, sb3-a2c, or one a module registers (see
    --agent-module)."""
    agent_module: str = ""
    """Python module imported first, whose import registers more agents with
    prefenv.agent.register_agent (e.g. my_pkg.agents); kept in run.json for resume and eval.
    Installed packages can declare a 'prefenv.agents' entry point instead."""
    teacher: str = "oracle"
    """Synthetic teacher preset or '+'-composition: oracle, noisy, mistake, skip, myopic, equal."""
    queries: int = 1000
    """Total query budget (skipped queries count)."""
    steps: int = 1_000_000
    """Total agent env steps."""
    rounds: int = 20
    """Reward-model refits after the initial one."""
    n_envs: int = 8
    """Parallel sub-envs."""
    seed: int = 0
    """Run seed: its numpy SeedSequence children seed the envs, the agent, the teacher, query
    sampling and the reward model (prefenv.app.spec.RunSeeds)."""
    segment_length: int = 50
    """Steps per compared segment (B-Pref: 50)."""
    query_method: str = "uniform"
    """uniform, disagreement or entropy."""
    ensemble: int = 3
    """Reward-model ensemble members (B-Pref: 3)."""
    initial_steps: int = 16_384
    """Env steps of the initial policy before the first queries."""
    kl_coef: float = 0.0
    """PPO-KL leash to the reference: the initial policy, or --reference (0 = plain PPO). Nats of
    KL against the return-scaled reward (see PPOKLConfig.kl_coef)."""
    n_steps: int = 256
    """PPO rollout steps per sub-env (ppo-kl, sb3-ppo)."""
    reward_epochs: int = 100
    """Max epochs per reward refit (early stopping on held-out loss)."""
    reward_width: int = 64
    """Hidden units per reward-network layer (B-Pref: 256; smaller refits faster)."""
    reward_depth: int = 2
    """Hidden layers per reward network (B-Pref: 3)."""
    shaping: float = 0.0
    """Uncertainty shaping k: reward = mean + k * std of the ensemble."""
    vectorization: str = "auto"
    """auto (the id's native vector env when it registers one, e.g. the recommendation ids; else
    sync), sync, async or vector_entry_point."""
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """JSON keyword arguments for gymnasium.make, e.g. '{"objective_weights": {"reward_forward":
    1, "reward_ctrl": 3}}'."""
    reference: str = ""
    """PPO-KL's frozen reference: a production recommender (popularity, greedy-click) for
    prefenv/RecSlate-v0 / RecSingle-v0 (needs --kl-coef > 0; the agent then runs without
    observation normalisation, as the reference reads raw observations); empty: the initial
    policy."""
    ref_temperature: float = 1.0
    """Softmax temperature of the --reference recommender (lower = sharper)."""

    def __post_init__(self) -> None:
        if self.vectorization not in VECTORIZATIONS:
            raise ValueError(
                f"vectorization must be one of {', '.join(VECTORIZATIONS)}, "
                f"got {self.vectorization!r}"
            )
        if self.n_envs < 1 or self.ensemble < 1:
            raise ValueError("n_envs and ensemble must be >= 1")
        if self.reference:
            if self.reference not in REFERENCES:
                raise ValueError(
                    f"unknown reference {self.reference!r}: choose one of {', '.join(REFERENCES)}"
                )
            if not self.kl_coef > 0:
                raise ValueError(
                    f"--reference {self.reference} needs --kl-coef > 0 (got {self.kl_coef}): with "
                    "beta = 0 the reference is never used; e.g. --kl-coef 0.05"
                )
            if not self.ref_temperature > 0:
                raise ValueError(f"ref_temperature must be > 0, got {self.ref_temperature}")
        if self.agent_module:
            try:
                importlib.import_module(self.agent_module)
            except ImportError as exc:
                raise ValueError(
                    f"--agent-module {self.agent_module!r} cannot be imported ({exc}): install it "
                    "or put it on PYTHONPATH"
                ) from exc
        agent_factory(self.agent).check(self)

    def seeds(self) -> RunSeeds:
        """The run's independent seeds (see :class:`RunSeeds`)."""
        return RunSeeds.from_seed(self.seed)

    def loop_config(self) -> PreferenceLoopConfig:
        seeds = self.seeds()
        return PreferenceLoopConfig(
            total_timesteps=self.steps,
            total_queries=self.queries,
            n_rounds=self.rounds,
            initial_timesteps=self.initial_steps,
            segment_length=self.segment_length,
            query_method=self.query_method,
            reward_train=RewardTrainConfig(max_epochs=self.reward_epochs, seed=seeds.reward_model),
            seed=seeds.queries,
        )


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON crash-safely (temp file + fsync + rename): a kill never leaves half a file."""
    atomic_write(path, lambda handle: json.dump(payload, handle, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)  # type: ignore[arg-type]
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def load_spec(out: str | os.PathLike[str]) -> TrainSpec:
    """The :class:`TrainSpec` of run folder ``out`` (its ``run.json``)."""
    path = Path(out) / "run.json"
    if not path.exists():
        raise CheckpointNotFoundError(
            f"{path} not found: {out} is not a prefenv run folder (start one with prefenv train)"
        )
    payload = json.loads(path.read_text())
    if payload.get("schema") != RUN_SCHEMA:
        raise CheckpointError(
            f"{path} has schema {payload.get('schema')!r}, expected {RUN_SCHEMA!r}: it was "
            "written by another prefenv version; start a new run or use that version"
        )
    return TrainSpec(**payload["spec"])


def save_spec(spec: TrainSpec, out: Path) -> None:
    """Write ``out/run.json`` (atomically)."""
    write_json_atomic(out / "run.json", {"schema": RUN_SCHEMA, "spec": dataclasses.asdict(spec)})
