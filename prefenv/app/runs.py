"""Training runs on disk: build the env/agent/teacher stack, run the loop, checkpoint, resume.

A run folder holds everything needed to inspect or continue a run::

    runs/NAME/
      run.json              the TrainSpec (what `prefenv train` was asked)
      comparisons.sqlite    every query and label (durable, append-only)
      reward_model/         latest reward model (safetensors + config.json)
      agent/                latest agent checkpoint
      loop_state.json       loop counters, RNG states and per-round metrics
      rounds.csv            one row per feedback round
      agent_logs/           the agent's progress.csv and TensorBoard events (PPO-KL)
      learning_curve.png    true and learned return vs steps, labels used
      summary.json, summary.md

This module is the only place in ``prefenv`` that builds agents and task envs; it imports
``agents`` and ``envs`` lazily, inside functions, so ``import prefenv`` stays light.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from prefenv.atomic import atomic_write
from prefenv.loop import PreferenceLoop, PreferenceLoopConfig, RoundMetrics
from prefenv.recording import TrajectoryRecorder
from prefenv.reward_models import RewardEnsemble, load_reward_model
from prefenv.reward_training import RewardTrainConfig
from prefenv.store import ComparisonStore
from prefenv.teachers import make_teacher
from prefenv.wrappers import VectorPreferenceReward

__all__ = [
    "AGENTS",
    "REFERENCES",
    "TrainSpec",
    "TrainingRun",
    "episode_returns",
    "evaluate_run",
    "make_reference",
    "ppo_kl_config",
    "reward_uses_next_obs",
    "sb3_agent",
    "write_json_atomic",
]

AGENTS = ("ppo-kl", "sb3-ppo", "sb3-sac", "sb3-a2c")
REFERENCES = ("popularity", "greedy-click")
"""Production recommenders usable as PPO-KL's frozen reference (``TrainSpec.reference``)."""
VECTORIZATIONS = ("auto", "sync", "async", "vector_entry_point")
"""``TrainSpec.vectorization`` values; ``auto`` = the id's native vector env if any, else sync."""
RUN_SCHEMA = "prefenv.run/1"


@dataclass(frozen=True)
class TrainSpec:
    """Everything ``prefenv train`` needs; saved as ``run.json`` so ``resume`` can rebuild it.

    Attributes:
        env: Gymnasium id (``prefenv/HalfCheetah-v0``, or any registered id).
        agent: one of ``ppo-kl``, ``sb3-ppo``, ``sb3-sac``, ``sb3-a2c``.
        teacher: preset name or '+'-composition (``oracle``, ``noisy+mistake``, ...).
        queries: total query budget.
        steps: total agent env steps.
        rounds: reward-model refits after the initial one.
        n_envs: parallel sub-envs.
        seed: seeds envs, agent, teacher and query sampling.
        segment_length: steps per compared segment.
        query_method: ``uniform``, ``disagreement`` or ``entropy``.
        ensemble: reward-model ensemble members.
        initial_steps: env steps of the initial policy before the first queries.
        kl_coef: PPO-KL leash to the reference (the initial policy unless ``reference`` is
            set; 0 = plain PPO).
        n_steps: PPO rollout length per sub-env.
        reward_epochs: max epochs per reward refit.
        reward_width: hidden units per reward-network layer (B-Pref: 256; smaller refits faster).
        reward_depth: hidden layers of each reward network (B-Pref: 3).
        shaping: uncertainty shaping k (mean + k * std) of the learned reward.
        vectorization: ``auto`` (the id's native vector env when it registers one, e.g. the
            recommendation ids; else ``sync``), ``sync``, ``async`` or ``vector_entry_point``.
        env_kwargs: keyword arguments for ``gymnasium.make`` (e.g. objective_weights).
        reference: ``""`` (the initial policy) or a production recommender from
            :data:`REFERENCES` as PPO-KL's frozen reference (recommendation envs; needs
            ``kl_coef > 0``). It reads raw observations, so the agent then runs without
            observation normalisation.
        ref_temperature: softmax temperature of the production reference (lower = sharper).
    """

    env: str = "prefenv/HalfCheetah-v0"
    agent: str = "ppo-kl"
    teacher: str = "oracle"
    queries: int = 1000
    steps: int = 1_000_000
    rounds: int = 20
    n_envs: int = 8
    seed: int = 0
    segment_length: int = 50
    query_method: str = "uniform"
    ensemble: int = 3
    initial_steps: int = 16_384
    kl_coef: float = 0.0
    n_steps: int = 256
    reward_epochs: int = 100
    reward_width: int = 64
    reward_depth: int = 2
    shaping: float = 0.0
    vectorization: str = "auto"
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    reference: str = ""
    ref_temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.agent not in AGENTS:
            raise ValueError(f"unknown agent {self.agent!r}: choose one of {', '.join(AGENTS)}")
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
            if self.agent != "ppo-kl":
                raise ValueError(
                    f"--reference leashes PPO-KL to a production policy; agent {self.agent!r} has "
                    "no KL leash: use --agent ppo-kl or drop --reference"
                )
            if not self.kl_coef > 0:
                raise ValueError(
                    f"--reference {self.reference} needs --kl-coef > 0 (got {self.kl_coef}): with "
                    "beta = 0 the reference is never used; e.g. --kl-coef 0.05"
                )
            if not self.ref_temperature > 0:
                raise ValueError(f"ref_temperature must be > 0, got {self.ref_temperature}")

    def loop_config(self) -> PreferenceLoopConfig:
        return PreferenceLoopConfig(
            total_timesteps=self.steps,
            total_queries=self.queries,
            n_rounds=self.rounds,
            initial_timesteps=self.initial_steps,
            segment_length=self.segment_length,
            query_method=self.query_method,
            reward_train=RewardTrainConfig(max_epochs=self.reward_epochs, seed=self.seed),
            seed=self.seed,
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
        return dataclasses.asdict(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _make_vector_env(spec: TrainSpec) -> gym.vector.VectorEnv:
    import prefenv

    # SB3 sees finished sub-envs reset on the same step (its VecEnv convention)
    mode = (
        gym.vector.AutoresetMode.NEXT_STEP
        if spec.agent == "ppo-kl"
        else gym.vector.AutoresetMode.SAME_STEP
    )
    return prefenv.make_vec(
        spec.env,
        spec.n_envs,
        vectorization_mode=None if spec.vectorization == "auto" else spec.vectorization,
        vector_kwargs={"autoreset_mode": mode},
        **spec.env_kwargs,
    )


def ppo_kl_config(spec: TrainSpec, norm_obs: bool = True) -> Any:
    """The ``PPOKLConfig`` ``prefenv train`` gives PPO-KL for ``spec`` (shared with benchmarks)."""
    from agents.ppo_kl import PPOKLConfig

    return PPOKLConfig(
        n_steps=spec.n_steps,
        norm_obs=norm_obs,
        norm_reward=True,  # learned rewards change scale at every refit
        kl_coef=spec.kl_coef,
        seed=spec.seed,
    )


def sb3_agent(spec: TrainSpec, bridge: Any) -> Any:
    """The SB3 agent ``prefenv train`` builds for ``spec`` on an SB3 VecEnv ``bridge``.

    Learned rewards change scale at every refit, so returns are scaled by ``VecNormalize``
    (rewards only), as PPO-KL's ``norm_reward`` does.
    """
    from stable_baselines3.common.vec_env import VecNormalize

    from agents.sb3 import SB3Agent, make_sb3_agent

    venv = VecNormalize(bridge, norm_obs=False, norm_reward=True)
    overrides = {"n_steps": spec.n_steps} if spec.agent == "sb3-ppo" else {}
    return SB3Agent(make_sb3_agent(spec.agent, venv, seed=spec.seed, **overrides))


class TrainingRun:
    """One run folder's live objects: env stack, reward model, agent, teacher, store, loop."""

    def __init__(self, spec: TrainSpec, out: str | os.PathLike[str], resume: bool = False):
        self.spec = spec
        self.out = Path(out)
        venv = _make_vector_env(spec)
        if resume:
            self.reward_model = load_reward_model(
                self.out / "reward_model", venv.single_observation_space, venv.single_action_space
            )
        else:
            self.reward_model = RewardEnsemble.for_spaces(
                venv.single_observation_space,
                venv.single_action_space,
                n_members=spec.ensemble,
                hidden_sizes=(spec.reward_width,) * spec.reward_depth,
                use_next_obs=reward_uses_next_obs(venv),
            )
        self.reward_env = VectorPreferenceReward(venv, self.reward_model, shaping=spec.shaping)
        self.recorder = TrajectoryRecorder(self.reward_env)
        self.agent = self._build_agent(resume)
        self.teacher_rng = rng = np.random.default_rng(spec.seed)
        self.teacher = make_teacher(spec.teacher, rng)
        self.store = ComparisonStore(self.out / "comparisons.sqlite")
        self.loop = PreferenceLoop(
            env=self.recorder,
            agent=self.agent,
            teacher=self.teacher,
            store=self.store,
            reward_model=self.reward_model,
            config=spec.loop_config(),
            reward_fn=self.reward_env.learned_rewards,
        )
        self.started = time.time()
        self.elapsed_before = 0.0
        if resume:
            state = json.loads((self.out / "loop_state.json").read_text())
            self.loop.load_state_dict(state["loop"])
            rng.bit_generator.state = state["teacher_rng"]
            self.loop.history = [_round_from_dict(r) for r in state["history"]]
            self.elapsed_before = float(state.get("elapsed", 0.0))

    # ------------------------------------------------------------------ agents
    def _build_agent(self, resume: bool) -> Any:
        spec = self.spec
        agent_dir = self.out / "agent"
        if spec.agent == "ppo-kl":
            from agents.ppo_kl import PPOKL

            ref_policy = make_reference(spec, self.recorder)
            if resume:
                return PPOKL.load_checkpoint(
                    agent_dir, self.recorder, ref_policy=ref_policy, log_dir=self.out / "agent_logs"
                )
            # PPO-KL feeds its reference the policy's observations: a production reference
            # scores raw observations, so normalisation is off when one is the leash
            config = ppo_kl_config(spec, norm_obs=ref_policy is None)
            return PPOKL(
                self.recorder, config, ref_policy=ref_policy, log_dir=self.out / "agent_logs"
            )
        from stable_baselines3.common.vec_env import VecNormalize

        from agents.sb3 import SB3Agent, SB3VecEnvBridge

        bridge = SB3VecEnvBridge(self.recorder)
        bridge.seed(spec.seed)
        if resume:
            venv = VecNormalize.load(str(agent_dir / "vecnormalize.pkl"), bridge)
            return SB3Agent.load(agent_dir / "sb3.zip", spec.agent, venv)
        return sb3_agent(spec, bridge)

    def _save_agent(self) -> None:
        agent_dir = self.out / "agent"
        if self.spec.agent == "ppo-kl":
            self.agent.save_checkpoint(agent_dir)
        else:
            self.agent.save(agent_dir / "sb3.zip")
            tmp = agent_dir / ".vecnormalize.tmp.pkl"
            self.agent.model.get_vec_normalize_env().save(str(tmp))
            os.replace(tmp, agent_dir / "vecnormalize.pkl")

    # ------------------------------------------------------------------ running
    def run(self, progress: bool = True) -> dict[str, Any]:
        """Run (or continue) the loop to the end, checkpointing after every round."""
        from tqdm import tqdm

        total = self.loop.config.n_rounds + 1
        with tqdm(total=total, initial=self.loop.round, disable=not progress, unit="round") as bar:
            while not self.loop.done:
                metrics = self.loop.step()
                self.checkpoint()
                bar.update(1)
                bar.set_postfix(
                    true=f"{metrics.true_return:.0f}",
                    learned=f"{metrics.learned_return:.1f}",
                    acc=f"{metrics.reward_model.val_accuracy:.2f}",
                    labels=metrics.labels_used,
                )
        summary = self.write_summary()
        self.store.close()
        return summary

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.started

    def checkpoint(self) -> None:
        """Reward model, agent, loop state and per-round outputs, each written atomically."""
        self.reward_model.save_pretrained(self.out / "reward_model")
        self._save_agent()
        write_json_atomic(
            self.out / "loop_state.json",
            {
                "schema": RUN_SCHEMA,
                "loop": self.loop.state_dict(),
                "teacher_rng": self.teacher_rng.bit_generator.state,
                "history": [dataclasses.asdict(m) for m in self.loop.history],
                "elapsed": self.elapsed,
            },
        )
        _write_rounds_csv(self.out / "rounds.csv", self.loop.history)
        plot_learning_curve(self.loop.history, self.out / "learning_curve.png", self.spec)

    def write_summary(self) -> dict[str, Any]:
        history = self.loop.history
        last = history[-1]
        finished = [m for m in history if not math.isnan(m.true_return)]
        summary = {
            "env": self.spec.env,
            "agent": self.spec.agent,
            "teacher": self.spec.teacher,
            "seed": self.spec.seed,
            "timesteps": last.timesteps,
            "labels_used": last.labels_used,
            "final_true_return": finished[-1].true_return if finished else None,
            "final_learned_return": finished[-1].learned_return if finished else None,
            "best_true_return": max((m.true_return for m in finished), default=None),
            "reward_model_val_accuracy": last.reward_model.val_accuracy,
            "return_correlation": last.return_correlation,
            "hacking_alarms": [m.round for m in history if m.hacking_alarm],
            "wall_clock_s": round(self.elapsed, 1),
            "plot": str(self.out / "learning_curve.png"),
            "store": str(self.out / "comparisons.sqlite"),
        }
        write_json_atomic(self.out / "summary.json", summary)
        (self.out / "summary.md").write_text(_summary_markdown(summary, self.spec))
        return summary


NEXT_OBS_METADATA = "prefenv_reward_next_obs"
"""Env ``metadata`` key: True when a step's outcome shows only in ``next_obs`` (a user's click),
so the learned reward must be ``r(obs, act, next_obs)``; otherwise ``r(obs, act)`` (B-Pref)."""


def reward_uses_next_obs(venv: gym.vector.VectorEnv) -> bool:
    """Whether a run's reward model reads ``next_obs``: the env's :data:`NEXT_OBS_METADATA`."""
    return bool(venv.metadata.get(NEXT_OBS_METADATA, False))


def make_reference(spec: TrainSpec, venv: Any) -> Any:
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


def _round_from_dict(row: dict[str, Any]) -> RoundMetrics:
    from prefenv.reward_training import MemberTrainMetrics, RewardTrainMetrics

    rm = dict(row["reward_model"])
    rm["members"] = tuple(MemberTrainMetrics(**m) for m in rm["members"])
    fields = {k: (math.nan if v is None else v) for k, v in row.items() if k != "reward_model"}
    rm = {k: (math.nan if v is None else v) for k, v in rm.items()}
    return RoundMetrics(reward_model=RewardTrainMetrics(**rm), **fields)


_CSV_FIELDS = (
    "round timesteps labels_used labels_this_round skipped_this_round true_return "
    "learned_return return_correlation episodes hacking_alarm seconds"
).split()


def _write_rounds_csv(path: Path, history: list[RoundMetrics]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*_CSV_FIELDS, "rm_val_accuracy", "rm_val_loss", "rm_seconds"])
        for m in history:
            writer.writerow(
                [getattr(m, f) for f in _CSV_FIELDS]
                + [m.reward_model.val_accuracy, m.reward_model.val_loss, m.reward_model.seconds]
            )
    os.replace(tmp, path)


def plot_learning_curve(history: list[RoundMetrics], path: Path, spec: TrainSpec) -> None:
    """True and learned return vs env steps (two y axes), labels used, reward-model accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m.timesteps for m in history]
    fig, (ax, ax_labels) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=[3, 1.4])
    ax.plot(steps, [m.true_return for m in history], "o-", color="tab:blue", label="true return")
    ax.set_ylabel("true return (hidden)", color="tab:blue")
    learned_ax = ax.twinx()
    learned_ax.plot(
        steps,
        [m.learned_return for m in history],
        "s--",
        color="tab:orange",
        label="learned return",
    )
    learned_ax.set_ylabel("learned return", color="tab:orange")
    for m in history:
        if m.hacking_alarm:
            ax.axvline(m.timesteps, color="tab:red", alpha=0.3)
    ax.set_title(f"{spec.env} | {spec.agent} | teacher {spec.teacher} | seed {spec.seed}")
    ax.grid(alpha=0.3)
    ax_labels.plot(steps, [m.labels_used for m in history], "o-", color="tab:green")
    ax_labels.set_ylabel("labels used", color="tab:green")
    ax_labels.set_xlabel("env steps")
    acc_ax = ax_labels.twinx()
    acc_ax.plot(steps, [m.reward_model.val_accuracy for m in history], "x:", color="tab:purple")
    acc_ax.set_ylabel("RM held-out acc.", color="tab:purple")
    acc_ax.set_ylim(0.4, 1.02)
    ax_labels.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _summary_markdown(summary: dict[str, Any], spec: TrainSpec) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
        return str(value)

    rows = "\n".join(f"| {k} | {fmt(v)} |" for k, v in summary.items())
    return (
        f"# prefenv run: {spec.env} / {spec.agent} / teacher {spec.teacher}\n\n"
        f"| field | value |\n|---|---|\n{rows}\n\n"
        f"![learning curve](learning_curve.png)\n"
    )


def load_spec(out: str | os.PathLike[str]) -> TrainSpec:
    path = Path(out) / "run.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: {out} is not a prefenv run folder (start one with prefenv train)"
        )
    payload = json.loads(path.read_text())
    if payload.get("schema") != RUN_SCHEMA:
        raise ValueError(
            f"{path} has schema {payload.get('schema')!r}, expected {RUN_SCHEMA!r}: it was "
            "written by another prefenv version; start a new run or use that version"
        )
    return TrainSpec(**payload["spec"])


def save_spec(spec: TrainSpec, out: Path) -> None:
    write_json_atomic(out / "run.json", {"schema": RUN_SCHEMA, "spec": dataclasses.asdict(spec)})


def episode_returns(
    venv: gym.vector.VectorEnv, predict: Any, episodes: int, seed: int
) -> tuple[list[float], list[float]]:
    """Run ``predict(obs) -> actions`` on sub-env 0 of ``venv`` for ``episodes`` full episodes.

    Returns:
        True returns (``info["true_reward"]`` when reported, else the env reward) and the
        returns of the reward the env gave (the learned reward under a preference wrapper).
    """
    true_returns: list[float] = []
    learned_returns: list[float] = []
    obs, _ = venv.reset(seed=seed)
    true_sum = learned_sum = 0.0
    while len(true_returns) < episodes:
        obs, reward, terminated, truncated, info = venv.step(predict(obs))
        true_sum += float(info["true_reward"][0]) if "true_reward" in info else float(reward[0])
        learned_sum += float(reward[0])
        if terminated[0] or truncated[0]:
            true_returns.append(true_sum)
            learned_returns.append(learned_sum)
            true_sum = learned_sum = 0.0
            obs, _ = venv.reset()
    return true_returns, learned_returns


def evaluate_run(
    out: str | os.PathLike[str], episodes: int = 10, seed: int = 12345
) -> dict[str, Any]:
    """Deterministic episodes of the run's latest agent: true and learned return."""
    spec = load_spec(out)
    run = TrainingRun(spec, out, resume=True)
    eval_spec = dataclasses.replace(spec, n_envs=1)
    venv = VectorPreferenceReward(_make_vector_env(eval_spec), run.reward_model)
    true_returns, learned_returns = episode_returns(venv, run.agent.predict, episodes, seed)
    venv.close()
    run.store.close()
    return {
        "episodes": episodes,
        "true_return_mean": float(np.mean(true_returns)),
        "true_return_std": float(np.std(true_returns)),
        "learned_return_mean": float(np.mean(learned_returns)),
    }
