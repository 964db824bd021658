"""What ``prefenv train`` is asked: :class:`TrainSpec`, its seeds, and ``run.json``.

Each field's docstring is its ``prefenv train`` command-line help (:mod:`prefenv.app.fields`).

(Over 400 lines: most of it is :class:`TrainSpec`'s field docstrings, which are the command line's
help; its checks and ``run.json`` reading stay beside the fields they check.)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

import prefenv
from prefenv.agent import RolloutSized, agent_factory
from prefenv.app import agents as _builtin_agents  # noqa: F401  (registers ppo-kl and sb3-*)
from prefenv.app.presets import preset_for
from prefenv.atomic import atomic_write
from prefenv.errors import CheckpointError, CheckpointNotFoundError
from prefenv.human import ON_TIMEOUT, HumanFeedbackConfig
from prefenv.label_noise import RobustLabels
from prefenv.loop import QUERY_SCHEDULES, PreferenceLoopConfig, whole_units
from prefenv.reward_training import RewardTrainConfig
from prefenv.sampling import QUERY_METHODS, SEGMENT_DRAWS
from prefenv.self_predictive import SelfPredictive
from prefenv.surf import Surf
from prefenv.teachers import make_teacher

__all__ = [
    "REFERENCES",
    "RUN_SCHEMA",
    "VECTORIZATIONS",
    "RunSeeds",
    "flag",
    "TrainSpec",
    "load_spec",
    "save_spec",
    "write_json_atomic",
]

REFERENCES = ("popularity", "greedy-click")
"""Production recommenders usable as PPO-KL's frozen reference (``TrainSpec.reference``)."""
VECTORIZATIONS = ("auto", "sync", "async", "vector_entry_point")
"""``TrainSpec.vectorization`` values; ``auto`` = the id's native vector env if any, else sync."""
RUN_SCHEMA = "prefenv.run/2"
"""``run.json`` schema. ``prefenv.run/1`` (read and upgraded) counted ``rounds`` after the initial
one and named a single ``agent_module``."""


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
    """Everything ``prefenv train`` needs; saved as ``run.json`` so ``resume`` can rebuild it.

    The defaults are the command line's: ``prefenv train`` with no options, ``prefenv.app.train()``
    with no settings and ``TrainSpec()`` are the same short run (HalfCheetah, PPO-KL, 250 oracle
    labels, 100k steps: a few minutes on 2 CPU cores).
    """

    env: str = "prefenv/HalfCheetah-v0"
    """Gymnasium id: prefenv/HalfCheetah-v0, prefenv/Hopper-v0, ..., any id a module given to
    --import registers, or my_pkg:my/Env-v0 (the module is imported first)."""
    agent: str = "ppo-kl"
    """Registered agent: ppo-kl, sb3-ppo, sb3-sac, sb3-a2c, or one an --import module registers."""
    imports: tuple[str, ...] = ()
    """Python modules imported first (repeat --import), whose import registers envs
    (gymnasium.register) or agents (prefenv.agent.register_agent); kept in run.json, so resume and
    eval import them again. Installed packages can declare 'prefenv.tasks' / 'prefenv.agents'
    entry points instead."""
    teacher: str = "oracle"
    """Synthetic teacher preset or '+'-composition: oracle, noisy, mistake, skip, myopic, equal,
    with parameters in parentheses (mistake(eps_mistake=0.2), noisy(beta=2)); or human: people
    label through `prefenv label --run OUT` while the agent trains."""
    queries: int = 250
    """Total query budget (skipped queries count)."""
    steps: int = 100_000
    """Total agent env steps (on-policy agents train in whole rollouts: see the start warning)."""
    rounds: int | None = None
    """Feedback rounds: each asks queries, refits the reward model, then trains the agent; unset:
    the task's reward-model entry in the presets table (steps_per_round; HalfCheetah: one round
    per 13,500 env steps after --initial-steps, 7 at 100k steps, 21 at 300k), else 7."""
    n_envs: int = 8
    """Parallel sub-envs."""
    seed: int = 0
    """Run seed: its numpy SeedSequence children seed the envs, the agent, the teacher, query
    sampling and the reward model (prefenv.app.spec.RunSeeds)."""
    segment_length: int = 50
    """Steps per compared segment (B-Pref: 50)."""
    initial_query_fraction: float = 0.1
    """Share of --queries asked in the initial round, on the initial policy's segments, in (0, 1);
    the rest spread over the later rounds by --query-schedule."""
    query_schedule: str = "hyperbolic"
    """How the queries after the initial round spread over the rounds: hyperbolic (round i gets a
    share in proportion to 1 / i, more while the reward is worst; imitation's default) or
    constant (equal shares)."""
    query_method: str = "auto"
    """uniform, disagreement or entropy (the first round is uniform either way), or auto: the
    task's reward-model entry in the presets table (query_method; HalfCheetah: disagreement),
    else uniform."""
    ensemble: int = 3
    """Reward-model ensemble members (B-Pref: 3)."""
    initial_steps: int = 10_240
    """Env steps of the initial policy before the first queries."""
    kl_coef: float = 0.0
    """PPO-KL leash to the reference: the initial policy, or --reference (0 = plain PPO). Nats of
    KL against the return-scaled reward (see PPOKLConfig.kl_coef)."""
    n_steps: int = 256
    """PPO rollout steps per sub-env (ppo-kl, sb3-ppo)."""
    reward_epochs: int = 60
    """Max epochs per reward refit (early stopping on held-out loss)."""
    reward_width: int = 64
    """Hidden units per reward-network layer (B-Pref: 256; smaller refits faster)."""
    reward_depth: int = 2
    """Hidden layers per reward network (B-Pref: 3)."""
    reward_output: str = "auto"
    """Reward-network output: tanh (B-Pref: each step's reward in [-1, 1]), linear (unbounded; a
    confident tanh model saturates, and then rewards a fast run no more than a slow one), sigmoid
    (in [0, 1]: never negative, so on a task that ends when the agent falls, falling never pays),
    or auto: the task's reward-model entry in the presets table (HalfCheetah: linear), else
    tanh."""
    shaping: float = 0.0
    """Uncertainty shaping k: reward = mean + k * std of the ensemble."""
    rune: bool = False
    """RUNE exploration bonus: reward = mean + k_t * std of the ensemble with k_t = 0.05 (1 -
    1e-5)^t, t = env steps (Liang et al. 2022); needs --ensemble >= 2, replaces --shaping."""
    unsupervised: bool = False
    """PEBBLE's unsupervised pre-training: the initial policy trains on a state-entropy reward
    (k-NN particle estimate, k = 5) during --initial-steps, so the first queries compare more
    varied behaviour."""
    robust_labels: bool = False
    """RIME's noise-robust reward training: each epoch, pairs whose loss is far above a dynamic
    threshold are flipped and those between the bounds dropped (Cheng et al. 2024)."""
    label_noise: float = 0.0
    """Assumed probability that a label is wrong, in [0, 0.5): the reward model fits the labels
    with the likelihood of a teacher who makes such mistakes, so a label it is sure is wrong costs
    at most -ln(label_noise) and stops pulling it (0: the plain Bradley-Terry loss). Estimate it
    from gold queries or annotator agreement; combines with --robust-labels."""
    label_smoothing: float | None = None
    """Train every label p as (1 - s) p + s / 2, in [0, 1): the predicted returns of a pair stop
    moving apart at |R1 - R0| = ln((2 - s) / s), so a bounded (tanh) output is not driven to its
    ceiling on every step that did not fall; unset: the task's reward-model entry in the presets
    table (label_smoothing), else 0 (the plain Bradley-Terry loss)."""
    surf: bool = False
    """SURF: confident pseudo-labels on unlabelled segment pairs from the query pool, and
    temporal crops of labelled pairs, in every refit (Park et al. 2022)."""
    reed: bool = False
    """REED: before every refit, the reward network's hidden layers learn to predict the next
    step's representation on transitions from the query pool, so few labels only have to weigh
    features the dynamics taught (Metcalf et al. 2024). For rewards of (obs, act); refused where
    the reward reads next_obs (the recommendation ids)."""
    query_window: int | None = None
    """QPA's policy-aligned queries: draw each round's pairs from the newest N finished episodes
    only (QPA: 10); 0 = every episode in the query pool; unset: the task's reward-model entry in
    the presets table (query_window; HalfCheetah: 10), else 0."""
    segment_draw: str = "episode"
    """How each compared segment's episode is drawn from the query pool: episode (every episode
    equally likely, B-Pref) or step (every window equally likely: where episodes end early, as
    Walker2d's and Hopper's falls do, the run's many short early episodes then stop outnumbering
    its long ones in the queries)."""
    vectorization: str = "auto"
    """auto (the id's native vector env when it registers one, e.g. the recommendation ids; else
    sync), sync, async or vector_entry_point."""
    rollout_workers: int = 0
    """PPO-KL's rollouts on N Ray actors, each stepping n_envs / N of the sub-envs with copies of
    the policy and reward model (0 = the local vector env). Needs pip install "prefenv[ray]";
    joins the Ray cluster named in RAY_ADDRESS, else starts a local one."""
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
    fallback_teacher: str = "oracle"
    """With --teacher human: the simulated teacher that answers what people left unanswered
    under --on-timeout simulate (the mixed mode)."""
    refit_every: int = 10
    """With --teacher human: refit the reward model as soon as this many new labels are in."""
    human_timeout: float = 600.0
    """With --teacher human: seconds a round waits for people, counted from posting its
    queries; the run never waits longer."""
    on_timeout: str = "continue"
    """With --teacher human, at a round's deadline: continue (close what is unanswered, go on
    with what is there), simulate (--fallback-teacher answers it), or pause (stop after the
    round; prefenv resume goes on)."""
    overlap: int = 1
    """With --teacher human: annotators asked per query (2 or more measures agreement)."""
    gold_rate: float = 0.1
    """With --teacher human: share of the queries an annotator sees that are gold questions
    (answer known from the true reward), giving each annotator an accuracy; 0: none."""
    instructions: str = ""
    """With --teacher human: the instruction text on the labelling page (empty: the task
    family's own)."""
    eval_episodes: int = 5
    """Episodes of the final agent, deterministic and sampled, run when training ends; their
    returns and lengths go into the summary (0 skips; prefenv eval runs more)."""
    preset: str = "auto"
    """Tuned agent settings for the task (prefenv/app/presets.toml): auto (the table's entry
    for --env and --agent, if any), or none (the agent's defaults). run.json records the entry
    used."""
    hparams: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Agent settings over the preset (PPOKLConfig fields for ppo-kl, the SB3 class's arguments
    for sb3-*): --hparams batch_size=256 log_std_init=-2, or --hparams-file FILE (TOML/JSON)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "imports", tuple(self.imports))  # a JSON list on load
        _check_values(self)
        prefenv.import_modules(self.imports)
        prefenv.resolve_env_id(self.env, prefenv.register_task_envs)
        if self.teacher != HUMAN:  # an unknown preset names the presets, and people
            try:
                make_teacher(self.teacher, np.random.default_rng(0))
            except ValueError as error:
                raise ValueError(
                    f"{error}; or {HUMAN}: people label through prefenv label"
                ) from None
        try:
            make_teacher(self.fallback_teacher, np.random.default_rng(0))
        except ValueError as error:
            raise ValueError(f"--fallback-teacher: {error}") from None
        agent_factory(self.agent).check(self)

    def with_preset(self) -> TrainSpec:
        """This spec with ``preset="auto"`` resolved: the table's values under ``hparams``.

        ``preset`` then names the entry used (``"prefenv/HalfCheetah-v0:ppo-kl"``) or is
        ``"none"``; a resolved spec is returned as it is, so a resumed run keeps its settings.
        """
        spec = self
        if spec.rounds is None:
            spec = dataclasses.replace(spec, rounds=spec.resolved_rounds())
        if spec.reward_output == "auto":  # recorded resolved in run.json, as the agent settings
            spec = dataclasses.replace(spec, reward_output=spec.resolved_reward_output())
        if spec.query_method == "auto":
            spec = dataclasses.replace(spec, query_method=spec.resolved_query_method())
        if spec.query_window is None:
            spec = dataclasses.replace(spec, query_window=spec.resolved_query_window())
        if spec.label_smoothing is None:
            spec = dataclasses.replace(spec, label_smoothing=spec.resolved_label_smoothing())
        if spec.preset != "auto":
            return spec
        entry = preset_for(spec.env, spec.agent)
        if entry is None:
            return dataclasses.replace(spec, preset="none")
        return dataclasses.replace(spec, preset=entry.name, hparams={**entry, **spec.hparams})

    def resolved_rounds(self) -> int:
        """``rounds`` with unset resolved: one round per ``steps_per_round`` env steps after the
        initial ones (at least 1) where the task's ``reward-model`` entry sets it, else
        :data:`DEFAULT_ROUNDS`."""
        if self.rounds is not None:
            return self.rounds
        per_round = self._reward_model_preset("steps_per_round", None)
        if per_round is None:
            return DEFAULT_ROUNDS
        return max(1, round((self.steps - self.initial_steps) / int(per_round)))

    def _reward_model_preset(self, key: str, default: Any) -> Any:
        """``key`` of the task's ``reward-model`` entry in the presets table, else ``default``."""
        entry = preset_for(self.env, REWARD_MODEL_PRESET)
        return entry.get(key, default) if entry is not None else default

    def resolved_reward_output(self) -> str:
        """``reward_output`` with ``auto`` resolved: the task's ``reward-model`` entry in the
        presets table (``output``), else ``tanh``."""
        if self.reward_output != "auto":
            return self.reward_output
        return str(self._reward_model_preset("output", "tanh"))

    def resolved_query_method(self) -> str:
        """``query_method`` with ``auto`` resolved: the entry's ``query_method``, else
        ``uniform``."""
        if self.query_method != "auto":
            return self.query_method
        return str(self._reward_model_preset("query_method", "uniform"))

    def resolved_query_window(self) -> int:
        """``query_window`` with unset resolved: the entry's ``query_window``, else 0 (every
        episode)."""
        if self.query_window is not None:
            return self.query_window
        return int(self._reward_model_preset("query_window", 0))

    def resolved_label_smoothing(self) -> float:
        """``label_smoothing`` with unset resolved: the entry's ``label_smoothing``, else 0."""
        if self.label_smoothing is not None:
            return self.label_smoothing
        return float(self._reward_model_preset("label_smoothing", 0.0))

    def check_budget(self) -> None:
        """Refuse a new run whose every round cannot train one whole rollout within ``steps``.

        Checked when a run starts (:func:`prefenv.app.api.start`), not when a saved ``run.json``
        is read: a run made before ``--steps`` was a ceiling still resumes and evaluates.

        Raises:
            ValueError: the fix named with the flags (a larger ``--steps``, fewer ``--rounds``...).
        """
        unit, rounds = self.step_unit(), self.resolved_rounds()
        initial, units = whole_units(self.initial_steps, self.steps, unit)
        if units < rounds:
            raise ValueError(
                f"--steps {self.steps} leaves {max(units, 0)} whole rollouts of {unit} steps after "
                f"--initial-steps {self.initial_steps} (run as {initial}), but each of --rounds "
                f"{rounds} trains at least one: raise --steps to {initial + rounds * unit}"
                " or more, or lower --rounds, --n-envs or --n-steps"
            )

    def step_unit(self) -> int:
        """Env steps the agent's ``learn`` calls come in (a whole rollout; 1 if it doesn't say)."""
        factory = agent_factory(self.agent)
        return factory.steps_per_learn(self) if isinstance(factory, RolloutSized) else 1

    def human_config(self) -> HumanFeedbackConfig:
        """The waiting rules of a --teacher human run."""
        return HumanFeedbackConfig(
            refit_every=self.refit_every, round_timeout=self.human_timeout,
            on_timeout=self.on_timeout, overlap=self.overlap, gold_rate=self.gold_rate,
        )  # fmt: skip

    def seeds(self) -> RunSeeds:
        """The run's independent seeds (see :class:`RunSeeds`)."""
        return RunSeeds.from_seed(self.seed)

    def loop_config(self) -> PreferenceLoopConfig:
        seeds = self.seeds()
        return PreferenceLoopConfig(
            total_timesteps=self.steps,
            total_queries=self.queries,
            n_rounds=self.resolved_rounds() - 1,  # the loop counts the rounds after the initial one
            initial_timesteps=self.initial_steps,
            initial_query_fraction=self.initial_query_fraction,
            schedule=self.query_schedule,
            segment_length=self.segment_length,
            query_method=self.resolved_query_method(),
            reward_train=RewardTrainConfig(
                max_epochs=self.reward_epochs,
                seed=seeds.reward_model,
                label_noise=self.label_noise,
                label_smoothing=self.resolved_label_smoothing(),
                robust=RobustLabels() if self.robust_labels else None,
                surf=Surf() if self.surf else None,
                self_predictive=SelfPredictive() if self.reed else None,
            ),
            seed=seeds.queries,
            step_unit=self.step_unit(),
            query_window=self.resolved_query_window() or None,
            segment_draw=self.segment_draw,
        )


_AT_LEAST_ONE = ("rounds", "n_envs", "ensemble", "segment_length", "n_steps", "reward_epochs",
                 "reward_width", "reward_depth")  # fmt: skip


DEFAULT_ROUNDS = 7
"""Feedback rounds when ``--rounds`` is unset and the task's presets entry sets no
``steps_per_round``."""
REWARD_OUTPUTS = {"tanh": "tanh", "linear": None, "sigmoid": "sigmoid"}
"""``--reward-output`` choices (besides ``auto``) -> the reward network's ``output_activation``."""
REWARD_MODEL_PRESET = "reward-model"
"""The presets table's pseudo-agent whose entries set a task's reward-model settings."""
HUMAN = "human"
"""The --teacher value that makes people the teacher (:class:`prefenv.human.HumanPreferenceLoop`)."""


def flag(name: str) -> str:
    """The command-line flag of :class:`TrainSpec` field ``name`` (``n_envs`` -> ``--n-envs``)."""
    return "--import" if name == "imports" else f"--{name.replace('_', '-')}"


def _check_values(spec: TrainSpec) -> None:
    """Refuse settings that cannot run, naming the flag and the fix."""
    for name in _AT_LEAST_ONE:
        if getattr(spec, name) is not None and getattr(spec, name) < 1:
            raise ValueError(f"{flag(name)} must be at least 1, got {getattr(spec, name)}")
    if spec.rune and (spec.ensemble < 2 or spec.shaping):
        raise ValueError(
            "--rune scores k_t * std across ensemble members: it needs --ensemble 2 or more and "
            f"replaces --shaping (got --ensemble {spec.ensemble}, --shaping {spec.shaping})"
        )
    if not 0.0 <= spec.label_noise < 0.5:
        raise ValueError(
            f"--label-noise must be in [0, 0.5), got {spec.label_noise}: it is the probability "
            "that a label is wrong (e.g. 0.1 for one label in ten; 0 turns it off)"
        )
    if not 0.0 < spec.initial_query_fraction < 1.0:
        raise ValueError(
            f"--initial-query-fraction must be in (0, 1), got {spec.initial_query_fraction}: it is "
            "the share of --queries asked in the initial round (e.g. 0.1 for one label in ten)"
        )
    if spec.query_schedule not in QUERY_SCHEDULES:
        raise ValueError(f"unknown --query-schedule {spec.query_schedule!r}: choose one of "
                         f"{', '.join(QUERY_SCHEDULES)}")  # fmt: skip
    if spec.label_smoothing is not None and not 0.0 <= spec.label_smoothing < 1.0:
        raise ValueError(
            f"--label-smoothing must be in [0, 1), got {spec.label_smoothing}: it is the share of "
            "the way each label is pulled to 0.5 (e.g. 0.05; 0 turns it off)"
        )
    if spec.query_window is not None and spec.query_window < 0:
        raise ValueError(f"--query-window must be 0 (off) or a number of episodes, got "
                         f"{spec.query_window}")  # fmt: skip
    if spec.on_timeout not in ON_TIMEOUT:
        raise ValueError(f"unknown --on-timeout {spec.on_timeout!r}: choose one of "
                         f"{', '.join(ON_TIMEOUT)}")  # fmt: skip
    if not (spec.refit_every >= 1 and spec.overlap >= 1 and spec.human_timeout >= 0):
        raise ValueError("--refit-every and --overlap must be at least 1 and --human-timeout >= 0")
    if not 0.0 <= spec.gold_rate < 1.0:
        raise ValueError(f"--gold-rate must be in [0, 1), got {spec.gold_rate}")
    if spec.eval_episodes < 0:
        raise ValueError(f"--eval-episodes must be 0 (skip) or more, got {spec.eval_episodes}")
    if spec.reward_output not in ("auto", *REWARD_OUTPUTS):
        raise ValueError(f"unknown --reward-output {spec.reward_output!r}: choose one of auto, "
                         f"{', '.join(REWARD_OUTPUTS)}")  # fmt: skip
    if spec.queries < 2:
        raise ValueError(
            f"--queries must be at least 2, got {spec.queries}: the reward model needs labelled "
            "pairs to fit and hold out"
        )
    if spec.initial_steps < 0 or spec.steps <= spec.initial_steps:
        raise ValueError(
            f"--steps ({spec.steps}) must exceed --initial-steps ({spec.initial_steps}): the "
            "initial policy runs --initial-steps before the first queries, and the rounds train "
            "on the rest; raise --steps or lower --initial-steps"
        )
    if spec.segment_draw not in SEGMENT_DRAWS:
        raise ValueError(f"unknown --segment-draw {spec.segment_draw!r}: choose one of "
                         f"{', '.join(SEGMENT_DRAWS)}")  # fmt: skip
    if spec.query_method not in ("auto", *QUERY_METHODS):
        raise ValueError(
            f"unknown --query-method {spec.query_method!r}: choose one of auto, "
            f"{', '.join(QUERY_METHODS)}"
        )
    _check_rollout_workers(spec)
    if spec.vectorization not in VECTORIZATIONS:
        raise ValueError(
            f"unknown --vectorization {spec.vectorization!r}: choose one of "
            f"{', '.join(VECTORIZATIONS)}"
        )
    if spec.preset not in ("auto", "none") and ":" not in spec.preset:
        raise ValueError(f"--preset takes auto or none, got {spec.preset!r}")
    if spec.reference:
        if spec.reference not in REFERENCES:
            raise ValueError(
                f"unknown --reference {spec.reference!r}: choose one of {', '.join(REFERENCES)}"
            )
        if not spec.kl_coef > 0:
            raise ValueError(
                f"--reference {spec.reference} needs --kl-coef > 0 (got {spec.kl_coef}): with "
                "beta = 0 the reference is never used; e.g. --kl-coef 0.05"
            )
        if not spec.ref_temperature > 0:
            raise ValueError(f"--ref-temperature must be > 0, got {spec.ref_temperature}")


def _check_rollout_workers(spec: TrainSpec) -> None:
    """``--rollout-workers``: PPO-KL only, not with people or PEBBLE. (That it divides
    ``--n-envs`` is checked when the workers start: evaluation copies of a spec have one env.)"""
    workers = spec.rollout_workers
    if workers < 0:
        raise ValueError(
            f"--rollout-workers must be 0 (the local vector env) or more, got {workers}"
        )
    if not workers:
        return
    if spec.agent != "ppo-kl":
        raise ValueError(
            f"--rollout-workers runs PPO-KL's rollouts on Ray actors; agent {spec.agent!r} "
            "steps its own env: use --agent ppo-kl, or drop --rollout-workers"
        )
    unsupported = {
        "--teacher human": (spec.teacher == HUMAN, "its rounds train in chunks between label "
                            "harvests, a loop not wired to rollout workers"),
        "--unsupervised": (spec.unsupervised, "PEBBLE's state-entropy reward keeps its k-NN "
                           "buffer of visited states in the learner, which the workers never fill"),
    }  # fmt: skip
    for name, (asked, why) in unsupported.items():
        if asked:
            raise ValueError(
                f"{name} does not run with --rollout-workers ({why}): drop one of the two"
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
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): the "
            "file was edited or damaged; restore it, or start a new run in another --out"
        ) from exc
    schema = payload.get("schema")
    if schema == "prefenv.run/1":
        payload = {"schema": RUN_SCHEMA, "spec": _upgrade_v1(payload["spec"])}
    if payload.get("schema") != RUN_SCHEMA:
        raise CheckpointError(
            f"{path} has schema {schema!r}, expected {RUN_SCHEMA!r}: it was written by another "
            "prefenv version; start a new run or use that version"
        )
    return TrainSpec(**{**BEFORE_PRESETS, **payload["spec"]})


BEFORE_PRESETS: dict[str, Any] = {
    "preset": "none",
    "reward_output": "tanh",
    "query_window": 0,
    "label_smoothing": 0.0,
}
"""What a run.json without these keys ran with (it was written before the field existed): such a
run resumes as it started, not with today's presets entry for its task."""


def _upgrade_v1(spec: dict[str, Any]) -> dict[str, Any]:
    """A ``prefenv.run/1`` spec in today's terms: the same run, the same number of rounds."""
    spec = dict(spec)
    spec["rounds"] = spec["rounds"] + 1  # v1 counted the rounds after the initial one
    module = spec.pop("agent_module", "")
    spec["imports"] = [module] if module else []
    spec["preset"] = "none"  # v1 runs ran at the agents' defaults
    return spec


def save_spec(spec: TrainSpec, out: Path) -> None:
    """Write ``out/run.json`` (atomically)."""
    write_json_atomic(out / "run.json", {"schema": RUN_SCHEMA, "spec": dataclasses.asdict(spec)})
