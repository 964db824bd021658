"""People as the teacher: a preference loop that posts queries and trains while they answer.

:class:`HumanPreferenceLoop` is the :class:`~prefenv.loop.PreferenceLoop` with the teacher's
``label(pairs)`` call replaced by the run's query queue (:class:`~prefenv.queue.QueryQueue`).
One round, with ``m = refit_every`` and the deadline ``posted + round_timeout``:

1. post the round's pairs (and a few gold questions, whose answer the true reward knows); a
   background thread renders what the page shows (clips, texts, tables), so rendering never
   holds up training;
2. before the first fit of a run there is nothing to train on: wait until the initial round is
   answered (past the undo window) or its deadline passes;
3. train the round's env steps in chunks, paced by the answers: the next chunk starts once the
   share of the round's queries answered reaches the share of its steps trained (or the
   deadline passed), so a fast simulator never trains a whole round on the last round's model
   while people are still answering (measured: unpaced, a person at 5 labels/s answered a round
   after its training had ended, and the agent learned from a reward model one round stale);
   before each chunk, when at least ``m`` new labels are in (older than the undo window),
   harvest them into the store and refit;
4. at the end of the round's steps, wait for the round's unanswered queries until the deadline,
   then act on ``on_timeout``:

   * ``"continue"``: close them (late labels are refused) and go on with what is there;
   * ``"simulate"``: close them and let the simulated ``fallback`` teacher answer them (the mixed
     mode: people label what they can, a synthetic teacher the rest);
   * ``"pause"``: leave them open and stop after this round (:attr:`HumanPreferenceLoop.paused`);
     a resumed run harvests whatever people answered meanwhile;

5. harvest what is left, refit if anything arrived since the last refit, and report.

The loop never waits past a deadline, so a run ends on time even when nobody answers. Which
comparisons came from people is in the store (teacher ``human:<name>``) and in each round's
:class:`~prefenv.loop.RoundMetrics` (``human_labels``, ``expired``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prefenv.loop import PreferenceLoop, RoundMetrics
from prefenv.presenters import PairPresenter
from prefenv.queue import HUMAN_PREFIX, QueryQueue
from prefenv.records import Comparison, Segment
from prefenv.reward_training import RewardTrainMetrics
from prefenv.sampling import sample_segment_pairs

__all__ = [
    "ON_TIMEOUT",
    "HumanFeedback",
    "HumanFeedbackConfig",
    "HumanPreferenceLoop",
    "NoLabelsError",
]

ON_TIMEOUT = ("continue", "simulate", "pause")
_GOLD_STREAM = 11  # seed-sequence word keeping gold draws apart from the query sampler's


class NoLabelsError(RuntimeError):
    """A human-fed run reached a deadline without a single label to train on."""


@dataclass(frozen=True)
class HumanFeedbackConfig:
    """How a run waits for people.

    Attributes:
        refit_every: m, refit the reward model as soon as this many new labels are in.
        round_timeout: seconds from posting a round's queries after which it stops waiting.
        on_timeout: "continue", "simulate" (the fallback teacher answers what is left) or
            "pause" (stop after the round; resume later).
        overlap: k, annotators asked per query (k >= 2 measures agreement).
        gold_rate: share of the queries an annotator is shown that are gold questions; the loop
            posts ``ceil(gold_rate * round queries)`` gold pairs per round (0: none).
        undo_seconds: a label is used for training only once it is this old (the page's undo
            works until then).
        chunk_steps: env steps trained between looks at the queue (rounded up to the agent's
            whole rollouts).
        poll_seconds: how often a waiting loop looks at the queue.
    """

    refit_every: int = 10
    round_timeout: float = 600.0
    on_timeout: str = "continue"
    overlap: int = 1
    gold_rate: float = 0.1
    undo_seconds: float = 5.0
    chunk_steps: int = 2048
    poll_seconds: float = 0.5

    def __post_init__(self) -> None:
        if self.refit_every < 1 or self.overlap < 1 or self.chunk_steps < 1:
            raise ValueError("refit_every, overlap and chunk_steps must be >= 1")
        if not self.round_timeout >= 0:
            raise ValueError(f"round_timeout must be >= 0 seconds, got {self.round_timeout}")
        if self.on_timeout not in ON_TIMEOUT:
            raise ValueError(f"on_timeout must be one of {ON_TIMEOUT}, got {self.on_timeout!r}")
        if not 0.0 <= self.gold_rate < 1.0:
            raise ValueError(f"gold_rate must be in [0, 1), got {self.gold_rate}")
        if self.undo_seconds < 0 or self.poll_seconds <= 0:
            raise ValueError("undo_seconds must be >= 0 and poll_seconds > 0")


class HumanFeedback:
    """The loop's side of the queue: post, present (in a background thread), harvest, close.

    Args:
        queue: the run's query queue.
        config: waiting rules.
        run: the run's name, recorded with each query.
        presenter_factory: builds the :class:`~prefenv.presenters.PairPresenter` in the
            rendering thread (an offscreen GL context belongs to the thread that made it).
        folder_stem: ``(query_id) -> (folder, stem)`` where the presenter writes its files.
        clock: seconds since the epoch (tests pass a fake one).
        sleep: waits that many seconds (tests pass a fake one).
    """

    def __init__(
        self,
        queue: QueryQueue,
        config: HumanFeedbackConfig,
        run: str,
        presenter_factory: Callable[[], PairPresenter],
        folder_stem: Callable[[int], tuple[Any, str]],
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.queue, self.config, self.run = queue, config, run
        self._factory, self._folder_stem = presenter_factory, folder_stem
        self._presenter: PairPresenter | None = None
        self._renderer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefenv-present")
        self._jobs: list[Future[None]] = []
        self.clock, self.sleep = clock, sleep

    def close(self) -> None:
        """Finish presenting what was posted, then stop the rendering thread."""
        self._renderer.shutdown(wait=True)

    def post(self, round: int, pairs: Sequence[tuple[Segment, Segment]],
             gold: Sequence[tuple[tuple[Segment, Segment], float]] = ()) -> list[int]:  # fmt: skip
        """Post a round's pairs and gold questions; they are presented in the background."""
        everything = [*pairs, *(pair for pair, _ in gold)]
        answers = [None] * len(pairs) + [answer for _, answer in gold]
        ids = self.queue.post(everything, run=self.run, round=round,
                              overlap=self.config.overlap, gold=answers)  # fmt: skip
        self._jobs.append(self._renderer.submit(self._present, ids, everything))
        return ids

    def present_missing(self, round: int) -> None:
        """Present the queries of ``round`` (gold ones too) that were posted but never shown:
        a run killed between posting and presenting resumes with all of them visible."""
        queries = [q for gold in (False, True)
                   for q in self.queue.round_queries(self.run, round, gold=gold) if q.media is None]  # fmt: skip
        if queries:
            ids = [q.id for q in queries]
            self._jobs.append(self._renderer.submit(self._present, ids, self.queue.pairs(ids)))

    def _present(self, ids: Sequence[int], pairs: Sequence[tuple[Segment, Segment]]) -> None:
        if self._presenter is None:
            self._presenter = self._factory()
        for query_id, (left, right) in zip(ids, pairs, strict=True):
            folder, stem = self._folder_stem(query_id)
            self.queue.set_media(query_id, self._presenter.present(left, right, folder, stem))

    def check_presenting(self) -> None:
        """Re-raise a rendering thread's error in the training thread (a broken presenter must
        stop the run, not leave people an empty queue)."""
        for job in [j for j in self._jobs if j.done()]:
            job.result()
            self._jobs.remove(job)

    def posted(self, round: int) -> list[int]:
        """The ids of the (non-gold) queries posted in ``round``."""
        return [q.id for q in self.queue.round_queries(self.run, round)]

    def deadline(self, round: int) -> float:
        queries = self.queue.round_queries(self.run, round)
        return (queries[0].posted if queries else self.clock()) + self.config.round_timeout

    def ready(self) -> int:
        """Labels that can be harvested now (past the undo window)."""
        return self.queue.unharvested(self.config.undo_seconds)

    def answered_share(self, round: int) -> float:
        """Share of ``round``'s queries that have all their labels (or are closed)."""
        posted = self.queue.round_queries(self.run, round)
        waiting = sum(q.closed is None and q.n_labels < q.overlap for q in posted)
        return 1.0 - waiting / len(posted) if posted else 1.0

    def unanswered(self, round: int) -> list[int]:
        """Open queries of ``round`` with fewer than ``overlap`` labels."""
        queries = self.queue.round_queries(self.run, round)
        return [q.id for q in queries if q.closed is None and q.n_labels < q.overlap]

    def wait(self, until: Callable[[], bool], deadline: float) -> None:
        """Poll ``until()`` every ``poll_seconds`` until it holds or ``deadline`` passes."""
        while not until() and self.clock() < deadline:
            self.check_presenting()
            self.sleep(min(self.config.poll_seconds, max(deadline - self.clock(), 0.0)))


@dataclass
class HumanPreferenceLoop(PreferenceLoop):
    """A :class:`~prefenv.loop.PreferenceLoop` whose labels come from people (module docstring).

    The inherited ``teacher`` is the simulated teacher that answers expired queries under
    ``on_timeout="simulate"``; gold answers come from the true reward, not from it.

    Attributes:
        feedback: the queue side (posting, presenting, harvesting).
        paused: set when a round ended with ``on_timeout="pause"`` and queries unanswered.
    """

    feedback: HumanFeedback | None = None
    paused: bool = False
    _last_metrics: RewardTrainMetrics | None = field(default=None, init=False, repr=False)
    _last_relabelled: int = field(default=0, init=False, repr=False)
    _unrefit: list[Comparison] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.feedback is None:
            raise ValueError("HumanPreferenceLoop needs feedback (the run's query queue)")

    @property
    def done(self) -> bool:
        return self.paused or super().done

    def step(self) -> RoundMetrics:
        """One round with people as the teacher (see the module docstring)."""
        assert self.feedback is not None
        feedback, config = self.feedback, self.feedback.config
        start = time.perf_counter()
        self._initial_phase()
        posted = feedback.posted(self.round)
        if posted:  # a resumed round keeps what it posted, and shows what was never shown
            feedback.present_missing(self.round)
        else:
            budget = self._queries[self.round]
            feedback.post(self.round, self._select_pairs(budget), self._gold_pairs(budget))
            posted = feedback.posted(self.round)
        self.labels_used += len(posted)
        deadline = feedback.deadline(self.round)
        comparisons: list[Comparison] = []
        refits = 0
        if self.store.count(labelled_only=True) == 0:  # nothing to train on yet
            # the first fit waits for the whole initial round: a model from a handful of labels,
            # one or two of them careless, can point the policy the wrong way for a whole round
            feedback.wait(lambda: feedback.ready() >= len(posted), deadline)
            refits += self._harvest_refit(comparisons, at_least=1, undo_window=False)
            if self.store.count(labelled_only=True) == 0:
                self._nobody_answered(len(posted), comparisons)
                refits += self._harvest_refit(comparisons, at_least=1, undo_window=False)
        steps = self._round_steps[self.round + 1]
        chunk = -(-config.chunk_steps // self.config.step_unit) * self.config.step_unit
        done = 0
        while done < steps:
            if done:  # paced: the agent never gets ahead of the round's answers by a chunk
                share = done / steps
                feedback.wait(lambda s=share: feedback.answered_share(self.round) >= s, deadline)
                refits += self._harvest_refit(comparisons, at_least=config.refit_every)
            self.agent.learn(min(chunk, steps - done))
            done += min(chunk, steps - done)
            feedback.check_presenting()
            refits += self._harvest_refit(comparisons, at_least=config.refit_every)
        feedback.wait(lambda: not feedback.unanswered(self.round), deadline)
        expired = feedback.unanswered(self.round)
        if expired and config.on_timeout == "pause":
            self.paused = True
        elif expired:
            feedback.queue.close_queries(expired)
            if config.on_timeout == "simulate":
                self._simulate(expired, comparisons)
        refits += self._harvest_refit(comparisons, at_least=1, undo_window=False)
        if self._last_metrics is None and self.history:  # resumed, nothing new this round
            self._last_metrics = self.history[-1].reward_model
        assert self._last_metrics is not None  # a run without labels stopped before training
        return self._finish_round(
            start, comparisons, self._last_metrics, self._last_relabelled, refits=refits,
            human_labels=sum(c.teacher.startswith(HUMAN_PREFIX) for c in comparisons),
            expired=len(expired) if config.on_timeout != "pause" else 0,
        )  # fmt: skip

    def _harvest_refit(
        self, comparisons: list[Comparison], at_least: int, undo_window: bool = True
    ) -> int:
        """Harvest labels and refit when at least ``at_least`` arrived (new ones or ones already
        stored since the last refit); 1 if it refit, else 0."""
        assert self.feedback is not None
        older = self.feedback.config.undo_seconds if undo_window else 0.0
        if self.feedback.queue.unharvested(older) < at_least and not self._unrefit:
            return 0
        new = self.feedback.queue.harvest(older)
        comparisons.extend(new)
        self._unrefit.extend(new)
        if len(self._unrefit) < at_least or self.store.count(labelled_only=True) == 0:
            return 0
        self._last_metrics, self._last_relabelled = self._refit()
        self._unrefit.clear()
        return 1

    def _nobody_answered(self, n_posted: int, comparisons: list[Comparison]) -> None:
        """The deadline passed before the first label of the run: with nothing to train on,
        only ``on_timeout="simulate"`` can go on (the fallback answers); otherwise stop."""
        assert self.feedback is not None
        config = self.feedback.config
        if config.on_timeout == "simulate":
            expired = self.feedback.unanswered(self.round)
            self.feedback.queue.close_queries(expired)
            self._simulate(expired, comparisons)
            return
        raise NoLabelsError(
            f"nobody answered the {n_posted} queries of round {self.round} within "
            f"--human-timeout {config.round_timeout:g} s, and the reward model has no label to "
            "train on, so the run stopped before training on it. The queries stay posted: serve "
            "them (prefenv label --run RUN), then `prefenv resume --out RUN`; or start with "
            "--on-timeout simulate to let a simulated teacher answer what people leave"
        )

    def _simulate(self, expired: Sequence[int], comparisons: list[Comparison]) -> None:
        """The fallback teacher answers the expired queries; stored like any teacher's."""
        assert self.feedback is not None
        simulated = self.teacher.label(self.feedback.queue.pairs(expired))
        self.store.append(simulated)
        comparisons.extend(simulated)
        self._unrefit.extend(simulated)

    def _gold_pairs(self, budget: int) -> list[tuple[tuple[Segment, Segment], float]]:
        """``ceil(gold_rate * budget)`` pairs whose true returns differ most, with the answer.

        Drawn from the query pool (4 candidates per gold pair), by a generator seeded by the
        round: the clearest pairs, so a wrong answer means a careless or confused annotator.
        """
        assert self.feedback is not None
        n = math.ceil(self.feedback.config.gold_rate * budget)
        if n == 0:
            return []
        rng = np.random.default_rng([self.config.seed, _GOLD_STREAM, self.round])
        candidates = sample_segment_pairs(
            self.query_pool(), 4 * n, self.config.segment_length, rng=rng,
            cut_at_termination=self.config.cut_at_termination, draw=self.config.segment_draw,
        )  # fmt: skip
        gaps = np.array([b.true_rewards.sum() - a.true_rewards.sum() for a, b in candidates])
        order = [i for i in np.argsort(-np.abs(gaps)) if gaps[i] != 0][:n]
        return [(candidates[i], 1.0 if gaps[i] > 0 else 0.0) for i in order]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "paused": self.paused}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.paused = False  # resuming is the way out of a pause
