"""Training runs on disk: build the env/agent/teacher stack, run the loop, checkpoint, resume.

Over 400 lines: a run folder's whole life (build, run, checkpoint, resume, evaluate, and the human-
feedback wiring) is one object whose pieces share its state.

A run folder holds everything needed to inspect or continue a run::

    runs/NAME/
      run.json              the TrainSpec (what `prefenv train` was asked)
      comparisons.sqlite    every query and label (durable, append-only)
      reward_model/         latest reward model (safetensors + config.json)
      agent/                latest agent checkpoint (Agent.save)
      query_pool.npz        the finished episodes the next queries are cut from
      loop_state.json       loop counters, RNG states and per-round metrics
      rounds.csv            one row per feedback round
      agent_logs/           the agent's progress.csv and TensorBoard events (PPO-KL)
      learning_curve.png    true and learned return vs steps, labels used
      summary.json, summary.md

The agent comes from the registry (:func:`prefenv.agent.agent_factory`), never from a branch on
its name. A run resumed from its last checkpoint continues exactly as the run that never stopped
would (the same comparisons, reward model and agent parameters), because every piece of state is
saved: the agent (weights, optimiser, normalisers, RNG streams; it restarts its envs with a stored
seed), the reward model, the query pool, the loop's and the teacher's RNG states.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch

import prefenv
from prefenv.agent import agent_factory
from prefenv.app.reports import (
    ROUND_EVENTS_DIR,
    RoundEventWriter,
    episode_returns,
    plot_learning_curve,
    round_from_dict,
    write_rounds_csv,
    write_summary,
)
from prefenv.app.spec import (
    HUMAN,
    REWARD_OUTPUTS,
    RUN_SCHEMA,
    TrainSpec,
    load_spec,
    save_spec,
    write_json_atomic,
)
from prefenv.atomic import atomic_write
from prefenv.errors import CheckpointError
from prefenv.exploration import RuneSchedule
from prefenv.human import HumanFeedback, HumanPreferenceLoop
from prefenv.intrinsic import StateEntropyEstimator, StateEntropyReward
from prefenv.loop import PreferenceLoop, RoundMetrics
from prefenv.queue import QueryQueue
from prefenv.recording import TrajectoryRecorder
from prefenv.records import Trajectory
from prefenv.reward_models import RewardEnsemble, load_reward_model
from prefenv.store import ComparisonStore, StoreError
from prefenv.teachers import make_teacher
from prefenv.wrappers import VectorPreferenceReward

if TYPE_CHECKING:
    from agents.ppo_kl import RayRollouts, RemoteEnvs, WorkerEnv

__all__ = [
    "NEXT_OBS_METADATA",
    "TrainSpec",
    "TrainingRun",
    "evaluate_agent",
    "evaluate_run",
    "load_spec",
    "load_trajectories",
    "make_vector_env",
    "new_reward_model",
    "reward_uses_next_obs",
    "save_spec",
    "save_trajectories",
    "worker_env_stack",
    "write_json_atomic",
]

NEXT_OBS_METADATA = "prefenv_reward_next_obs"
"""Env ``metadata`` key: True when a step's outcome shows only in ``next_obs`` (a user's click),
so the learned reward must be ``r(obs, act, next_obs)``; otherwise ``r(obs, act)`` (B-Pref)."""

QUERY_POOL_FILE = "query_pool.npz"
FINAL_EVAL_FILE = "final_eval.json"
"""The final agent's deterministic and sampled evaluation (``TrainSpec.eval_episodes``)."""
LOG_DIR = "agent_logs"
"""The run folder's TensorBoard / CSV log folder (``tensorboard --logdir RUN/agent_logs``)."""


def reward_uses_next_obs(venv: gym.vector.VectorEnv) -> bool:
    """Whether a run's reward model reads ``next_obs``: the env's :data:`NEXT_OBS_METADATA`."""
    return bool(venv.metadata.get(NEXT_OBS_METADATA, False))


def make_vector_env(spec: TrainSpec) -> gym.vector.VectorEnv:
    """``spec``'s vector env, in the autoreset mode its agent's factory asks for."""
    mode = agent_factory(spec.agent).autoreset_mode
    return prefenv.make_vec(
        spec.env,
        spec.n_envs,
        vectorization_mode=None if spec.vectorization == "auto" else spec.vectorization,
        vector_kwargs={"autoreset_mode": mode},
        **spec.env_kwargs,
    )


def new_reward_model(spec: TrainSpec, venv: gym.vector.VectorEnv) -> RewardEnsemble:
    """A fresh reward model for ``spec`` on ``venv``'s spaces, seeded by the run's seed."""
    spaces = (venv.single_observation_space, venv.single_action_space)
    with torch.random.fork_rng(devices=[]):  # seeded, leaving the global stream alone
        torch.manual_seed(spec.seeds().reward_model)
        return RewardEnsemble.for_spaces(
            *spaces,
            n_members=spec.ensemble,
            hidden_sizes=(spec.reward_width,) * spec.reward_depth,
            output_activation=REWARD_OUTPUTS[spec.resolved_reward_output()],
            use_next_obs=reward_uses_next_obs(venv),
        )


def learned_reward_stack(
    spec: TrainSpec, venv: gym.vector.VectorEnv, reward_model: Any
) -> tuple[VectorPreferenceReward, TrajectoryRecorder]:
    """``venv`` -> learned reward (``spec``'s shaping) -> recorder: a run's env stack."""
    shaping = RuneSchedule() if spec.rune else spec.shaping
    reward_env = VectorPreferenceReward(venv, reward_model, shaping=shaping)
    return reward_env, TrajectoryRecorder(reward_env)


def worker_env_stack(spec: TrainSpec, num_envs: int) -> WorkerEnv:
    """One rollout worker's stack for ``--rollout-workers``: ``num_envs`` sub-envs of ``spec``'s
    env under the run's learned reward and a recorder. Its reward model is fresh (the run's
    architecture); the learner's snapshot replaces it before the first step. Module-level, so
    ``functools.partial(worker_env_stack, spec)`` pickles to the Ray actors."""
    from agents.ppo_kl import WorkerEnv

    venv = make_vector_env(dataclasses.replace(spec, n_envs=num_envs, rollout_workers=0))
    reward_env, recorder = learned_reward_stack(spec, venv, new_reward_model(spec, venv))
    return WorkerEnv(recorder, recorder, reward_env)


def remote_envs(spec: TrainSpec) -> RemoteEnvs:
    """The learner's stand-in for the ``spec.n_envs`` sub-envs its rollout workers step."""
    from agents.ppo_kl import RemoteEnvs

    template = make_vector_env(dataclasses.replace(spec, n_envs=1, rollout_workers=0))
    template.close()  # read for its spaces and metadata only
    return RemoteEnvs(template, spec.n_envs)


class StepProgress(gym.vector.VectorWrapper):
    """Counts the agent's env steps into a progress bar (set :attr:`bar`; None counts nothing)."""

    def __init__(self, env: gym.vector.VectorEnv) -> None:
        super().__init__(env)
        self.bar: Any = None

    def step(self, actions: Any) -> Any:
        result = self.env.step(actions)
        self.advance(self.num_envs)
        return result

    def advance(self, steps: int) -> None:
        """Count ``steps`` env steps (rollout workers report theirs here)."""
        if self.bar is not None:
            self.bar.update(steps)


class TrainingRun:
    """One run folder's live objects: env stack, reward model, agent, teacher, store, loop.

    Args:
        spec: what to run (saved as ``run.json`` by the caller).
        out: the run folder.
        resume: continue from the folder's last checkpoint instead of starting afresh.
    """

    def __init__(self, spec: TrainSpec, out: str | os.PathLike[str], resume: bool = False):
        self.spec = spec
        self.out = Path(out)
        self.seeds = seeds = spec.seeds()
        self.factory = agent_factory(spec.agent)
        venv = remote_envs(spec) if spec.rollout_workers else make_vector_env(spec)
        self.reward_model = self._reward_model(venv, resume)
        self.reward_env, self.recorder = learned_reward_stack(spec, venv, self.reward_model)
        # PEBBLE: above the recorder, so its returns and the teacher's segments never see it;
        # a resumed run is past the initial phase and needs none
        self.intrinsic = None
        if spec.unsupervised and not resume:
            capacity = max(10_000, spec.initial_steps)  # BPref keeps every unsupervised state
            self.intrinsic = StateEntropyReward(
                self.recorder, StateEntropyEstimator(capacity=capacity)
            )
        self.progress = StepProgress(self.intrinsic or self.recorder)  # counts into the bar
        agent_env = self._agent_env()
        agent_dir, log_dir = self.out / "agent", self.out / LOG_DIR
        if resume:
            self.agent = self.factory.load(spec, agent_env, agent_dir, log_dir=log_dir)
            self.reward_env.shaping_steps = int(self.agent.num_timesteps)  # RUNE's k_t goes on
        else:
            self.agent = self.factory.build(
                spec, agent_env, seed=seeds.agent, env_seed=seeds.env, log_dir=log_dir
            )
        self.teacher_rng = np.random.default_rng(seeds.teacher)
        human = spec.teacher == HUMAN  # then the simulated teacher only fills in (simulate)
        self.teacher = make_teacher(spec.fallback_teacher if human else spec.teacher,
                                    self.teacher_rng)  # fmt: skip
        self.store = _open_store(self.out, resume)
        parts = dict(
            env=self.recorder,
            agent=self.agent,
            teacher=self.teacher,
            store=self.store,
            reward_model=self.reward_model,
            config=spec.loop_config(),
            reward_fn=self.reward_env.learned_rewards,
            reward_env=self.reward_env,
            intrinsic_env=self.intrinsic,
        )
        self.feedback = _human_feedback(spec, self.out) if human else None
        self.loop = (
            HumanPreferenceLoop(**parts, feedback=self.feedback)
            if self.feedback is not None
            else PreferenceLoop(**parts)
        )
        self.started = time.time()
        self.elapsed_before = 0.0
        if resume:
            self._restore()

    def _reward_model(self, venv: gym.vector.VectorEnv, resume: bool) -> Any:
        if resume:
            spaces = (venv.single_observation_space, venv.single_action_space)
            return load_reward_model(self.out / "reward_model", *spaces)
        return new_reward_model(self.spec, venv)

    def _agent_env(self) -> gym.vector.VectorEnv:
        """The agent's env: the stack above, and with ``--rollout-workers`` the Ray actors that
        step copies of it (they send finished episodes to the recorder, steps to the bar)."""
        self.rollouts: RayRollouts | None = None
        if not self.spec.rollout_workers:
            return self.progress
        from agents.ppo_kl import RayRollouts
        from prefenv.app.agents import RolloutWorkersEnv

        self.rollouts = RayRollouts(
            functools.partial(worker_env_stack, self.spec),
            self.spec.rollout_workers,
            self.spec.n_envs,
            reward_env=self.reward_env,
            recorder=self.recorder,
            on_steps=self.progress.advance,
        )
        return RolloutWorkersEnv(self.progress, self.rollouts)

    def _restore(self) -> None:
        state = json.loads((self.out / "loop_state.json").read_text())
        self.loop.load_state_dict(state["loop"])
        self.loop.history = [round_from_dict(r) for r in state["history"]]
        self.teacher_rng.bit_generator.state = state["teacher_rng"]
        self.elapsed_before = float(state.get("elapsed", 0.0))
        pool = self.out / QUERY_POOL_FILE
        if pool.exists():  # runs from before the pool was saved resume with an empty one
            self.loop.restore_query_pool(load_trajectories(pool))

    def run(self, progress: bool = True) -> dict[str, Any]:
        """Run (or continue) the loop to the end, checkpointing after every round.

        Args:
            progress: show a bar of env steps (all rounds), with the last round's returns, the
                reward model's held-out accuracy and the labels used.
        """
        from tqdm import tqdm

        from prefenv.app.budget import plan_budget

        total = max(plan_budget(self.spec).total, self.loop.timesteps)
        # a resumed run hides events a killed process wrote after its last checkpoint
        resumed_at = self.loop.history[-1].timesteps if self.loop.history else None
        events = RoundEventWriter(self.out / LOG_DIR / ROUND_EVENTS_DIR, resumed_at_step=resumed_at)
        with events, tqdm(total=total, initial=self.loop.timesteps, disable=not progress,
                          unit="step", unit_scale=True, dynamic_ncols=True) as bar:  # fmt: skip
            self.progress.bar = bar
            bar.set_postfix_str(f"round {self.loop.round + 1}/{self.spec.resolved_rounds()}")
            while not self.loop.done:
                metrics = self.loop.step()
                events.write(metrics)  # before the checkpoint names this round done
                self.checkpoint()
                bar.set_postfix_str(_round_postfix(metrics, self.spec.resolved_rounds()))
            self.progress.bar = None
        if self.rollouts is not None:
            self.rollouts.close()
        if self.feedback is not None:
            self.feedback.close()
            self.feedback.queue.close()
        if self.paused:
            summary = self.write_summary()
            self.store.close()
            return summary
        if self.spec.eval_episodes and not (self.out / FINAL_EVAL_FILE).exists():
            evaluation = evaluate_run(self.out, self.spec.eval_episodes, spec=self.spec)
            write_json_atomic(self.out / FINAL_EVAL_FILE, evaluation)
        summary = self.write_summary()
        self.store.close()
        return summary

    @property
    def paused(self) -> bool:
        """A --teacher human run stopped after a round people left unanswered (--on-timeout
        pause); ``prefenv resume`` continues it."""
        return isinstance(self.loop, HumanPreferenceLoop) and self.loop.paused

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.started

    def checkpoint(self) -> None:
        """Reward model, agent, query pool, loop state and reports, each written atomically.

        ``loop_state.json`` goes last: it names the round a resume continues after.
        """
        self.reward_model.save_pretrained(self.out / "reward_model")
        self.agent.save(self.out / "agent")
        save_trajectories(self.out / QUERY_POOL_FILE, self.loop.query_pool())
        write_json_atomic(
            self.out / "loop_state.json",
            {
                "schema": RUN_SCHEMA,
                "loop": self.loop.state_dict(),
                "teacher_rng": self.teacher_rng.bit_generator.state,
                "history": [dataclasses.asdict(m) for m in self.loop.history],
                "elapsed": self.elapsed,
                "store_id": self.store.identity,
            },
        )
        write_rounds_csv(self.out / "rounds.csv", self.loop.history)
        plot_learning_curve(self.loop.history, self.out / "learning_curve.png", self.spec)

    def write_summary(self) -> dict[str, Any]:
        """``summary.json`` / ``summary.md`` of the rounds so far."""
        return write_summary(
            self.out, self.spec, self.loop.history, self.elapsed, self.factory.on_policy
        )


def _round_postfix(metrics: RoundMetrics, rounds: int) -> str:
    """``round 3/7 | true 1,204 | learned 35.1 | RM acc 0.93 | labels 120``."""
    returns = (
        "no episode finished"
        if math.isnan(metrics.true_return)
        else f"true {metrics.true_return:,.0f} | learned {metrics.learned_return:,.1f}"
    )
    fit = metrics.reward_model  # under RewardTrainConfig.min_val held-out pairs, none are held
    accuracy = (
        f"RM train acc {fit.train_accuracy:.2f}"
        if math.isnan(fit.val_accuracy)
        else f"RM acc {fit.val_accuracy:.2f}"
    )
    return (
        f"round {metrics.round + 1}/{rounds} done | {returns} | {accuracy} | "
        f"labels {metrics.labels_used}"
    )


def save_trajectories(path: Path, trajectories: Sequence[Trajectory]) -> None:
    """Write context-free trajectories to one ``.npz`` (atomically): their steps concatenated.

    Raises:
        ValueError: a trajectory carries a context (runs record none).
    """
    if any(t.context is not None for t in trajectories):
        raise ValueError("save_trajectories stores context-free trajectories only")
    arrays = {
        "lengths": np.array([len(t) for t in trajectories], dtype=np.int64),
        "terminated": np.array([t.terminated for t in trajectories], dtype=bool),
    }
    if trajectories:
        arrays["obs"] = np.concatenate([t.obs for t in trajectories])
        arrays["acts"] = np.concatenate([t.acts for t in trajectories])
        arrays["true_rewards"] = np.concatenate([t.true_rewards for t in trajectories])
    atomic_write(path, lambda handle: np.savez(handle, **arrays), binary=True)


def load_trajectories(path: Path) -> list[Trajectory]:
    """The trajectories :func:`save_trajectories` wrote, in the same order."""
    with np.load(path) as data:
        lengths, terminated = data["lengths"], data["terminated"]
        if len(lengths) == 0:
            return []
        step_ends = np.cumsum(lengths)[:-1]
        obs_ends = step_ends + np.arange(1, len(lengths))  # T + 1 observations each
        return [
            Trajectory(obs, acts, rewards, bool(done))
            for obs, acts, rewards, done in zip(
                np.split(data["obs"], obs_ends),
                np.split(data["acts"], step_ends),
                np.split(data["true_rewards"], step_ends),
                terminated,
                strict=True,
            )
        ]


def evaluate_run(
    out: str | os.PathLike[str],
    episodes: int = 10,
    seed: int = 12345,
    spec: TrainSpec | None = None,
) -> dict[str, Any]:
    """Episodes of the run's latest agent, deterministic and sampled: returns and lengths.

    Returns:
        ``{"episodes", "true_return_mean" (deterministic, the headline), "deterministic": {...},
        "sampled": {...}}``, each mode with ``true_return_mean`` / ``_std``,
        ``learned_return_mean`` and ``length_mean`` (a deterministic policy can fall where its
        sampled twin runs on, so both are reported). Loads ``run.json``, the reward model and
        the agent; the comparison store is not opened.
    """
    out = Path(out)
    spec = spec or load_spec(out)  # the run's own settings (default: its run.json)
    venv = make_vector_env(spec)
    spaces = (venv.single_observation_space, venv.single_action_space)
    reward_model = load_reward_model(out / "reward_model", *spaces)
    agent = agent_factory(spec.agent).load(
        spec, VectorPreferenceReward(venv, reward_model), out / "agent", log_dir=None
    )
    eval_env = VectorPreferenceReward(
        make_vector_env(dataclasses.replace(spec, n_envs=1)), reward_model
    )
    evaluation = evaluate_agent(agent, eval_env, episodes, seed)
    eval_env.close()
    venv.close()
    return evaluation


def evaluate_agent(
    agent: Any, eval_env: gym.vector.VectorEnv, episodes: int, seed: int
) -> dict[str, Any]:
    """``episodes`` deterministic and ``episodes`` sampled episodes of ``agent`` on sub-env 0 of
    ``eval_env`` (reset with ``seed``): ``{"episodes", "true_return_mean" (deterministic),
    "deterministic": {...}, "sampled": {...}}`` as :func:`evaluate_run` reports them."""
    modes = {
        mode: episode_returns(
            eval_env, lambda obs, d=(mode == "deterministic"): agent.predict(obs, d), episodes, seed
        ).summary()
        for mode in ("deterministic", "sampled")
    }
    return {"episodes": episodes, "true_return_mean": modes["deterministic"]["true_return_mean"],
            **modes}  # fmt: skip


LABELLING_FILE = "labelling.json"
"""What ``prefenv label`` needs of a --teacher human run: its name, env, page text, gold rate."""
CLIPS_DIR = "clips"
"""The run folder's media files (the labelling page's clips), written as queries are posted."""


def _human_feedback(spec: TrainSpec, out: Path) -> HumanFeedback:
    """The queue side of a --teacher human run, and its ``labelling.json`` for the server."""
    from prefenv.app.media import presenter_for

    clips = out / CLIPS_DIR
    clips.mkdir(parents=True, exist_ok=True)
    config = spec.human_config()
    saved = out / LABELLING_FILE  # a resumed run keeps its name, even in a renamed folder
    name = json.loads(saved.read_text())["run"] if saved.is_file() else out.name
    write_json_atomic(saved, {
        "run": name, "env": spec.env, "instructions": spec.instructions,
        "gold_rate": config.gold_rate, "overlap": config.overlap, "lease_seconds": 600,
        "round_timeout": config.round_timeout, "on_timeout": config.on_timeout,
    })  # fmt: skip
    return HumanFeedback(
        QueryQueue(out / "comparisons.sqlite"), config, run=name,
        presenter_factory=lambda: presenter_for(spec.env, spec.env_kwargs),
        folder_stem=lambda query_id: (clips, f"q{query_id:06d}"),
    )  # fmt: skip


def _open_store(out: Path, resume: bool) -> ComparisonStore:
    """The run's comparison store: created for a new run; for a resume, the one it used, whole.

    A resume never creates a store: it checks the file against ``loop_state.json`` (the store's
    identity, and at least as many rows as the labels the run used) and refuses otherwise,
    naming the row counts: resuming on an empty or foreign store would lose the labels the
    reward model was trained on.
    """
    path = out / "comparisons.sqlite"
    if not resume:
        return ComparisonStore(path)
    state = json.loads((out / "loop_state.json").read_text())
    # comparisons in the store at the checkpoint; runs before issue 13 stored one per label used
    used = int(state["loop"].get("stored", state["loop"]["labels_used"]))
    try:
        return ComparisonStore.open_existing(path, min_rows=used, identity=state.get("store_id"))
    except StoreError as exc:
        raise CheckpointError(
            f"cannot resume {out}: the run recorded {used} labels in loop_state.json, and "
            f"{str(exc).rstrip('. ')}. To start over instead: `prefenv train --overwrite --out {out}` (or another --out)"
        ) from exc
