"""The preference loop: collect -> select pairs -> teacher -> store -> refit -> continue the agent.

Agent-agnostic (PEBBLE / imitation style). The loop owns nothing but the schedule: it receives
an env stack whose top is a :class:`prefenv.recording.TrajectoryRecorder` over a
:class:`prefenv.wrappers.VectorPreferenceReward`, an :class:`prefenv.agent.Agent` trained *on
that env* (its ``learn(n_steps)`` continues where it stopped: prefenv's PPO-KL, or SB3 through the
bridge), a teacher, a durable store and the reward model the wrapper reads. Each round returns a
:class:`RoundMetrics`, including a reward-hacking alarm that fires when the learned return rises
while the true return falls.

The switchable methods of issue 14 plug in here as options of :class:`PreferenceLoopConfig`
(``query_window``, SURF and RIME through ``reward_train``) and of the loop (``intrinsic_env``).
The module is just over 400 lines: the config, its two schedules and the round are one
algorithm, and each method adds only the line that calls it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prefenv.agent import Agent, RelabellingAgent, RewardFn
from prefenv.intrinsic import StateEntropyReward
from prefenv.recording import EpisodeStats, TrajectoryRecorder
from prefenv.records import Comparison, Segment, Trajectory
from prefenv.reward_training import RewardTrainConfig, RewardTrainMetrics, train_reward_model
from prefenv.sampling import QUERY_METHODS, SEGMENT_DRAWS, sample_segment_pairs, select_queries
from prefenv.self_predictive import Transitions, check_model
from prefenv.store import ComparisonStore
from prefenv.teachers import Teacher
from prefenv.wrappers import VectorPreferenceReward

__all__ = [
    "PreferenceLoop",
    "PreferenceLoopConfig",
    "QUERY_SCHEDULES",
    "RoundMetrics",
    "query_schedule",
    "hacking_alarm",
    "step_schedule",
    "whole_units",
]


QUERY_SCHEDULES = ("hyperbolic", "constant")
"""How the queries after the initial round spread over the rounds (:func:`query_schedule`)."""


@dataclass(frozen=True)
class PreferenceLoopConfig:
    """Schedule of a preference-learning run.

    Attributes:
        total_timesteps: agent env steps over the whole run.
        total_queries: query budget (skipped queries count against it).
        n_rounds: feedback rounds after the initial one (one reward refit each); 0 runs the
            initial round alone, which asks the whole budget.
        initial_query_fraction: share of the budget asked on the initial policy's segments.
        initial_timesteps: env steps the initial policy runs before the first queries.
        schedule: how the remaining budget spreads over rounds: "constant" or "hyperbolic"
            (more queries early, imitation's default shape).
        segment_length: H, steps per compared segment (B-Pref: 50).
        query_method: "uniform", "disagreement" or "entropy" (first round is always uniform).
        cut_at_termination: segments of terminated episodes may run into the termination and
            end there, shorter (a fall, a user leaving), so comparisons see what staying alive is
            worth; needs a teacher with gamma = 1 (see :func:`prefenv.sampling.sample_segment_pairs`).
        oversample: candidate pool multiple for the active query methods.
        reward_train: Bradley-Terry trainer settings for every refit.
        query_window: draw queries from the newest ``query_window`` finished episodes only
            (QPA's policy-aligned queries, :data:`prefenv.sampling.QPA_WINDOW`); None: all of
            the query pool.
        segment_draw: how a segment's episode is drawn from the pool: "episode" (each equally
            likely, B-Pref) or "step" (each window equally likely, so the many short falls of
            a run's start do not outnumber its long episodes; :data:`prefenv.sampling.SEGMENT_DRAWS`).
        step_unit: the env steps an ``agent.learn`` call comes in whole multiples of (an
            on-policy agent's rollout, ``n_envs * n_steps``); every learn call asks a multiple
            of it, so the run never takes more than ``total_timesteps`` (see
            :func:`step_schedule`). 1 for agents that stop at any step.
        seed: seeds query sampling.
    """

    total_timesteps: int
    total_queries: int = 1000
    n_rounds: int = 20
    initial_query_fraction: float = 0.1
    initial_timesteps: int = 10_000
    schedule: str = "hyperbolic"
    segment_length: int = 50
    query_method: str = "uniform"
    cut_at_termination: bool = True
    oversample: int = 10
    reward_train: RewardTrainConfig = field(default_factory=RewardTrainConfig)
    seed: int = 0
    step_unit: int = 1
    query_window: int | None = None
    segment_draw: str = "episode"

    def __post_init__(self) -> None:
        if self.total_timesteps <= self.initial_timesteps:
            raise ValueError(
                f"total_timesteps ({self.total_timesteps}) must exceed initial_timesteps "
                f"({self.initial_timesteps}): raise --steps or lower initial_timesteps"
            )
        if self.total_queries < 2:
            raise ValueError(f"total_queries must be >= 2, got {self.total_queries}")
        if self.n_rounds < 0:
            raise ValueError(f"n_rounds must be >= 0, got {self.n_rounds}")
        if not 0.0 < self.initial_query_fraction < 1.0:
            raise ValueError("initial_query_fraction must be in (0, 1)")
        if self.schedule not in QUERY_SCHEDULES:
            raise ValueError(f"schedule must be one of {QUERY_SCHEDULES}, got {self.schedule!r}")
        if self.query_method not in QUERY_METHODS:
            raise ValueError(
                f"query_method must be one of {QUERY_METHODS}, got {self.query_method!r}"
            )
        if self.segment_draw not in SEGMENT_DRAWS:
            raise ValueError(
                f"segment_draw must be one of {SEGMENT_DRAWS}, got {self.segment_draw!r}"
            )
        if self.segment_length < 1 or self.oversample < 1 or self.step_unit < 1:
            raise ValueError("segment_length, oversample and step_unit must be >= 1")
        schedule = step_schedule(self)
        if min(schedule[1:]) < 1:
            raise ValueError(
                f"total_timesteps ({self.total_timesteps}) leaves {schedule[0]} initial steps and "
                f"{sum(schedule[1:])} for {self.n_rounds + 1} rounds in whole units of "
                f"{self.step_unit} steps: every round needs at least one unit"
            )


SURF_MAX_PAIRS = 5_000
"""At most this many unlabelled pairs per refit (50-step segments of 17 features: about 35 MB)."""
_SURF_STREAM = 7  # a seed-sequence word that keeps SURF's draws apart from the query sampler's
_REED_STREAM = 8  # and REED's transitions apart from both


def query_schedule(config: PreferenceLoopConfig) -> list[int]:
    """Queries per round: index 0 is the initial round, then ``n_rounds`` more; sums to the budget."""
    if config.n_rounds == 0:
        return [config.total_queries]
    initial = max(1, round(config.total_queries * config.initial_query_fraction))
    rest = config.total_queries - initial
    if config.schedule == "constant":
        weights = np.ones(config.n_rounds)
    else:  # hyperbolic: weight 1 / (1 + i), front-loads feedback while the reward is worst
        weights = 1.0 / (1.0 + np.arange(config.n_rounds))
    raw = rest * weights / weights.sum()
    counts = np.floor(raw).astype(int)
    counts[np.argsort(counts - raw)[: rest - counts.sum()]] += 1  # largest remainders
    return [initial, *counts.tolist()]


@dataclass(frozen=True)
class RoundMetrics:
    """What one feedback round did and how the agent is doing.

    Attributes:
        round: 0 for the initial round.
        timesteps: agent env steps so far.
        labels_used: queries asked so far (skipped ones included).
        labels_this_round: queries asked this round.
        skipped_this_round: queries the teacher skipped this round.
        reward_model: the refit's metrics (held-out accuracy among them).
        true_return: mean true return of the episodes finished during this round's training.
        learned_return: mean learned return of the same episodes.
        return_correlation: Pearson correlation between their learned and true returns (NaN if
            fewer than 3 episodes or constant returns). Learned returns of different rounds come
            from different reward models: compare them within a round, not across rounds.
        episodes: episodes finished during this round's training.
        hacking_alarm: within this round, learned return rose while true return fell.
        seconds: wall-clock of this round.
        relabelled: replay-buffer transitions rescored with the refit model (off-policy agents).
        refits: reward-model refits this round (a human-fed round refits as labels arrive).
        human_labels: labels from people among ``labels_this_round`` (the rest are simulated).
        expired: queries posted for people this round that closed unanswered at its deadline.
    """

    round: int
    timesteps: int
    labels_used: int
    labels_this_round: int
    skipped_this_round: int
    reward_model: RewardTrainMetrics
    true_return: float
    learned_return: float
    return_correlation: float
    episodes: int
    hacking_alarm: bool
    seconds: float
    relabelled: int = 0
    refits: int = 1
    human_labels: int = 0
    expired: int = 0


def _correlation(stats: Sequence[EpisodeStats]) -> float:
    if len(stats) < 3:
        return math.nan
    true = np.array([s.true_return for s in stats])
    learned = np.array([s.learned_return for s in stats])
    if true.std() == 0 or learned.std() == 0:
        return math.nan
    return float(np.corrcoef(true, learned)[0, 1])


def hacking_alarm(stats: Sequence[EpisodeStats], min_episodes: int = 4) -> bool:
    """Reward-hacking alarm over one round's episodes, in the order they finished.

    Within a round the reward model is fixed, so learned returns are comparable: the alarm fires
    when the learned return trends up (least-squares slope > 0) while the true return trends down
    and the two are negatively correlated. Fewer than ``min_episodes`` episodes never fire it.
    """
    if len(stats) < min_episodes:
        return False
    x = np.arange(len(stats), dtype=float)
    true = np.array([s.true_return for s in stats])
    learned = np.array([s.learned_return for s in stats])
    true_slope = np.polyfit(x, true, 1)[0]
    learned_slope = np.polyfit(x, learned, 1)[0]
    correlation = _correlation(stats)
    return bool(learned_slope > 0 and true_slope < 0 and correlation < 0)


@dataclass
class PreferenceLoop:
    """Runs the schedule. Mutable state: the round and timestep/label counters, the query RNG.

    Attributes:
        env: the recorder at the top of the agent's env stack.
        agent: an :class:`~prefenv.agent.Agent` that continues training on ``env``.
        teacher: labels pairs (synthetic, or a human front end with the same protocol).
        store: durable comparison store; every label is appended before the refit.
        reward_model: the model refit in place each round.
        config: the schedule.
        reward_fn: ``(obs, actions, next_obs, n) -> [n]`` learned rewards of stored transitions
            (``VectorPreferenceReward.learned_rewards``). After each refit an agent that is a
            :class:`~prefenv.agent.RelabellingAgent` (SB3 agents; SAC keeps a replay buffer)
            rescores its stored transitions with it, as PEBBLE does; other agents relabel
            nothing (``RoundMetrics.relabelled == 0``).
        reward_env: the env stack's learned-reward wrapper. Right after each refit (before any
            relabelling) it gets the new snapshot ``reward_model.predictor()``; without it the
            wrapper keeps scoring with the snapshot it was built with.
        intrinsic_env: PEBBLE's unsupervised pre-training: a
            :class:`~prefenv.intrinsic.StateEntropyReward` above the recorder, enabled while the
            initial policy trains (round 0's ``initial_timesteps``) and switched off before the
            first queries; None trains the initial policy on the learned reward as it is.
    """

    env: TrajectoryRecorder
    agent: Agent
    teacher: Teacher
    store: ComparisonStore
    reward_model: Any
    config: PreferenceLoopConfig
    reward_fn: RewardFn | None = None
    reward_env: VectorPreferenceReward | None = None
    intrinsic_env: StateEntropyReward | None = None
    round: int = 0
    timesteps: int = 0
    labels_used: int = 0
    history: list[RoundMetrics] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.config.seed)
        self._queries = query_schedule(self.config)
        self._round_steps = step_schedule(self.config)
        self._restored: list[Trajectory] = []
        if self.config.reward_train.self_predictive is not None:
            check_model(self.reward_model)  # at the start, not at the first refit

    @property
    def done(self) -> bool:
        return self.round > self.config.n_rounds

    def run(self, callback: Callable[[RoundMetrics], Any] | None = None) -> list[RoundMetrics]:
        """Run the remaining rounds; ``callback(metrics)`` after each (e.g. log and checkpoint)."""
        while not self.done:
            metrics = self.step()
            if callback is not None:
                callback(metrics)
        return self.history

    def step(self) -> RoundMetrics:
        """One round: (round 0: run the initial policy) -> query -> store -> refit -> train."""
        start = time.perf_counter()
        self._initial_phase()
        # rows stored after the last finished round belong to this round (a killed run resumed):
        # keep them and ask only for the rest of the round's budget
        budget = self._queries[self.round]
        pending = []
        if len(self.store) > self.labels_used:
            pending = self.store.load(labelled_only=False)[
                self.labels_used : self.labels_used + budget
            ]
        n_new = budget - len(pending)
        comparisons = pending + (self._ask(n_new) if n_new > 0 else [])
        self.store.append(comparisons[len(pending) :])
        self.labels_used += len(comparisons)
        reward_metrics, relabelled = self._refit()
        self.agent.learn(self._round_steps[self.round + 1])
        return self._finish_round(start, comparisons, reward_metrics, relabelled)

    def _initial_phase(self) -> None:
        """Round 0 only: train the initial policy, then switch PEBBLE's intrinsic reward off."""
        if self.round != 0:
            return
        self.agent.learn(self._round_steps[0])
        if self.intrinsic_env is not None:  # whole rollouts: none straddles the switch
            self.intrinsic_env.enabled = False
        self.env.pop_episode_stats()

    def _refit(self) -> tuple[RewardTrainMetrics, int]:
        """Refit the reward model on every stored label, hand the wrapper the new snapshot and
        let a relabelling agent rescore its buffer; ``(metrics, transitions relabelled)``."""
        labelled = self.store.load(labelled_only=True)
        reward_metrics = train_reward_model(
            self.reward_model, labelled, self.config.reward_train,
            unlabelled=self._unlabelled_pairs(len(labelled)),
            transitions=self._transitions(),
        )  # fmt: skip
        if self.reward_env is not None:
            self.reward_env.set_predictor(self.reward_model.predictor())
        relabelled = 0
        if isinstance(self.agent, RelabellingAgent) and self.reward_fn is not None:
            relabelled = self.agent.relabel_rewards(self.reward_fn)
        return reward_metrics, relabelled

    def _finish_round(
        self,
        start: float,
        comparisons: Sequence[Comparison],
        reward_metrics: RewardTrainMetrics,
        relabelled: int,
        **extra: Any,
    ) -> RoundMetrics:
        """The round's metrics from the episodes it finished; advances to the next round."""
        # on-policy agents round a learn call up to whole rollouts: count what they did
        self.timesteps = int(self.agent.num_timesteps)
        stats = self.env.pop_episode_stats()
        true_return = float(np.mean([s.true_return for s in stats])) if stats else math.nan
        learned_return = float(np.mean([s.learned_return for s in stats])) if stats else math.nan
        metrics = RoundMetrics(
            round=self.round,
            timesteps=self.timesteps,
            labels_used=self.labels_used,
            labels_this_round=len(comparisons),
            skipped_this_round=sum(c.label is None for c in comparisons),
            reward_model=reward_metrics,
            true_return=true_return,
            learned_return=learned_return,
            return_correlation=_correlation(stats),
            episodes=len(stats),
            hacking_alarm=hacking_alarm(stats),
            seconds=time.perf_counter() - start,
            relabelled=relabelled,
            **extra,
        )
        self.history.append(metrics)
        self.round += 1
        return metrics

    def query_pool(self) -> list[Trajectory]:
        """The finished episodes queries are cut from, oldest first.

        The episodes restored by :meth:`restore_query_pool`, then the recorder's, within the
        recorder's ``capacity_steps`` (oldest dropped first): the pool a recorder that never
        stopped would hold. (Exact unless the recorder itself dropped episodes since the
        restore, i.e. recorded more than ``capacity_steps`` steps before the next checkpoint.)
        """
        pool = [*self._restored, *self.env.trajectories]
        steps = sum(len(t) for t in pool)
        drop = 0
        while steps > self.env.capacity_steps and len(pool) - drop > 1:
            steps -= len(pool[drop])
            drop += 1
        self._restored = self._restored[drop:]
        return pool[drop:]

    def restore_query_pool(self, trajectories: Sequence[Trajectory]) -> None:
        """Put back the :meth:`query_pool` of a checkpoint (a resumed run starts a new recorder)."""
        self._restored = list(trajectories)

    def _unlabelled_pairs(self, n_labelled: int) -> list[tuple[Segment, Segment]] | None:
        """SURF's unlabelled pairs for this round's refit (None when SURF is off).

        ``Surf.unlabelled_per_label`` pairs per label, at most :data:`SURF_MAX_PAIRS`, cut from
        the query pool with a generator seeded by the round, so a resumed run draws the same.
        """
        surf = self.config.reward_train.surf
        if surf is None:
            return None
        rng = np.random.default_rng([self.config.seed, _SURF_STREAM, self.round])
        return sample_segment_pairs(
            self.query_pool(),
            min(surf.unlabelled_per_label * n_labelled, SURF_MAX_PAIRS),
            self.config.segment_length,
            rng=rng,
            cut_at_termination=self.config.cut_at_termination,
            draw=self.config.segment_draw,
        )

    def _transitions(self) -> Transitions | None:
        """REED's transitions for this round's refit (None when REED is off), drawn uniformly
        from the query pool with a generator seeded by the round, so a resumed run draws the
        same."""
        reed = self.config.reward_train.self_predictive
        if reed is None:
            return None
        rng = np.random.default_rng([self.config.seed, _REED_STREAM, self.round])
        transitions = Transitions.sample(self.query_pool(), reed.transitions_per_refit, rng)
        if transitions is None:
            raise ValueError(
                "REED found no episode of two or more steps in the query pool to learn the "
                "dynamics from: raise initial_timesteps or turn REED off"
            )
        return transitions

    def _ask(self, n_queries: int) -> list[Comparison]:
        return self.teacher.label(self._select_pairs(n_queries))

    def _select_pairs(self, n_queries: int) -> list[tuple[Segment, Segment]]:
        """This round's query pairs from the query pool (adapting the teacher's thresholds)."""
        trajectories = self.query_pool()
        if not trajectories:
            raise RuntimeError(
                "no finished episode recorded yet: raise initial_timesteps so the initial policy "
                "finishes at least one episode per sub-env before the first queries"
            )
        recent = trajectories[-10:]  # B-Pref adapts thresholds to the last 10 episodes
        self.teacher.adapt(
            float(np.mean([t.true_return for t in recent])),
            int(np.mean([len(t) for t in recent])),
            self.config.segment_length,
        )
        method = self.config.query_method if self.round > 0 else "uniform"
        return select_queries(
            trajectories,
            n_queries,
            method=method,
            reward_model=self.reward_model,
            segment_length=self.config.segment_length,
            oversample=self.config.oversample,
            rng=self._rng,
            cut_at_termination=self.config.cut_at_termination,
            window=self.config.query_window,
            draw=self.config.segment_draw,
        )

    def state_dict(self) -> dict[str, Any]:
        """Counters and RNG state, JSON-able, for resuming a killed run (see :meth:`query_pool`)."""
        return {
            "round": self.round,
            "timesteps": self.timesteps,
            "labels_used": self.labels_used,
            "stored": len(self.store),
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.round = int(state["round"])
        self.timesteps = int(state["timesteps"])
        self.labels_used = int(state["labels_used"])
        self._rng.bit_generator.state = state["rng"]


def whole_units(initial_timesteps: int, total_timesteps: int, unit: int) -> tuple[int, int]:
    """``(initial, units)``: the initial phase rounded up to whole ``unit`` steps, and how many
    whole units fit after it under ``total_timesteps`` (negative when none do)."""
    initial = -(-initial_timesteps // unit) * unit
    return initial, (total_timesteps - initial) // unit


def step_schedule(config: PreferenceLoopConfig) -> list[int]:
    """Env steps of each ``agent.learn`` call: the initial policy's, then one per round's refit.

    Every call asks whole ``step_unit`` multiples: the initial phase ``initial_timesteps``
    rounded up to one, then the whole units left under ``total_timesteps`` split as evenly as
    possible over the ``n_rounds + 1`` rounds (earlier rounds take the odd ones). The run takes
    ``sum(step_schedule(config)) <= total_timesteps`` steps, less by under one unit per call.
    """
    unit, parts = config.step_unit, config.n_rounds + 1
    initial, units = whole_units(config.initial_timesteps, config.total_timesteps, unit)
    base, extra = divmod(max(units, 0), parts)
    return [initial, *((base + (1 if i < extra else 0)) * unit for i in range(parts))]
