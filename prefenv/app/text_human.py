"""People label the text pipeline's rm stage (``prefenv text rm --teacher human``).

The rm stage asks people about the same SFT pairs it would give a synthetic teacher (stream
``rm_samples``), through the run's query queue (:class:`~prefenv.queue.QueryQueue`), exactly as
``prefenv train --teacher human`` does for the control tasks:

1. post the pairs not yet posted (a rerun finds them posted and posts none again), each with its
   ``"text"`` media (prompt and the two completions, :class:`~envs.text.presenter.TextPresenter`)
   in the same transaction: text needs no rendering, so no query is ever handed out half-made;
2. write ``labelling.json`` (and ``clips/``), so ``prefenv label --run OUT`` serves them;
3. wait until every query has ``--overlap`` labels or ``--human-timeout`` seconds pass
   (:meth:`~prefenv.human.HumanFeedback.wait`; counted from the start of this wait, so a rerun
   waits again), then act on ``--on-timeout``:

   * ``continue``: close the unanswered queries and train on what people gave; refused (the
     queries stay open) when nobody answered anything;
   * ``simulate``: close them and let ``--fallback-teacher`` answer them (the mixed mode);
   * ``pause``: leave them open and stop, training nothing: label them, then run the stage again;

4. harvest every label into the store: comparisons of teacher ``human:<annotator>`` (one per
   label, so a query labelled by ``k`` people gives ``k``); the fallback teacher's are stored as
   ``simulated:<its name>``, apart from the same preset's own ``--teacher`` labels of these pairs.

No gold questions are posted (gold rate 0): a text pair has no answer that a careful person
must give (the task's score is one opinion of the text), so an annotator's quality is better read
from agreement, with ``--overlap 2`` or more, on the stats page.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prefenv.app.media import presenter_of_env
from prefenv.app.runs import CLIPS_DIR, LABELLING_FILE
from prefenv.app.spec import write_json_atomic
from prefenv.human import HumanFeedback, HumanFeedbackConfig
from prefenv.queue import HUMAN_PREFIX, QueryQueue
from prefenv.records import Comparison, Segment
from prefenv.store import ComparisonStore

if TYPE_CHECKING:
    from prefenv.app.text_config import TextPipelineConfig

__all__ = [
    "SIMULATED_PREFIX",
    "HumanLabelling",
    "NoHumanLabelsError",
    "collect_human_labels",
    "label_sources",
    "rm_stage_teacher",
]

SIMULATED_PREFIX = "simulated:"
"""Teacher name prefix of the comparisons the fallback teacher gave for queries people left."""
ROUND = 0
"""The queue round of the rm stage's queries (the stage asks once, not in rounds)."""
SamplePairs = Callable[[int, int], list[tuple[Segment, Segment]]]
"""``(n, start) -> n`` text-segment pairs: the SFT pairs ``start .. start + n - 1`` of the stream."""


class NoHumanLabelsError(ValueError):
    """``--on-timeout continue`` found nothing to train on: nobody answered any query."""


def rm_stage_teacher(name: str) -> bool:
    """Whether a stored comparison's teacher is one a ``--teacher human`` rm stage trains on:
    a person (``human:<annotator>``) or the fallback for what people left (``simulated:...``)."""
    return name.startswith((HUMAN_PREFIX, SIMULATED_PREFIX))


@dataclass(frozen=True)
class HumanLabelling:
    """Where the rm stage's human labelling stands.

    Attributes:
        posted: the stage's queries in the run's queue.
        human: labels people gave them (skips included; one per person and query).
        simulated: comparisons the fallback teacher gave for queries people left.
        waiting: queries still open with fewer than ``overlap`` labels (only after a pause).
    """

    posted: int
    human: int
    simulated: int
    waiting: int

    @property
    def paused(self) -> bool:
        """The stage stopped with queries waiting (``--on-timeout pause``): nothing trained."""
        return self.waiting > 0

    def pause_message(self, out: Path) -> str:
        """What to do after a pause, naming both commands."""
        return (
            f"{self.waiting} of {self.posted} queries are still waiting for people "
            f"(--on-timeout pause), so the reward model was not trained. Label them "
            f"(prefenv label --run {out} --annotator NAME), then run `prefenv text rm --out "
            f"{out} --teacher human` again: it keeps the {self.human} labels given so far"
        )


def collect_human_labels(
    config: TextPipelineConfig, out: Path, tokenizer: Any, sample_pairs: SamplePairs
) -> HumanLabelling:
    """Post the missing queries, wait for people, then settle the unanswered ones.

    Args:
        config: the run's settings (``queries``, ``overlap``, ``human_timeout``,
            ``on_timeout``, ``fallback_teacher``).
        out: the run folder.
        tokenizer: the SFT model's tokenizer (the text presenter's env needs one).
        sample_pairs: the stage's SFT pairs by index (see :data:`SamplePairs`).

    Returns:
        The labelling's state; harvested into the store unless it :attr:`~HumanLabelling.paused`.

    Raises:
        NoHumanLabelsError: ``--on-timeout continue`` and not one label arrived.
    """
    store_path = out / "comparisons.sqlite"
    with ComparisonStore(store_path) as store, QueryQueue(store_path) as queue:
        presenter = _presenter(config, tokenizer)
        clips = out / CLIPS_DIR
        clips.mkdir(exist_ok=True)
        feedback = HumanFeedback(
            queue, _feedback_config(config), run=_write_labelling(config, out),
            presenter_factory=lambda: presenter,
            folder_stem=lambda query_id: (clips, f"q{query_id:06d}"),
        )  # fmt: skip
        try:
            posted = _post_missing(config, feedback, presenter, clips, sample_pairs)
            feedback.wait(lambda: not feedback.unanswered(ROUND),
                          feedback.clock() + config.human_timeout)  # fmt: skip
            return _settle(config, out, store, queue, posted, feedback.unanswered(ROUND))
        finally:
            feedback.close()


def _feedback_config(config: TextPipelineConfig) -> HumanFeedbackConfig:
    return HumanFeedbackConfig(
        round_timeout=config.human_timeout, on_timeout=config.on_timeout,
        overlap=config.overlap, gold_rate=0.0,
    )  # fmt: skip


def _presenter(config: TextPipelineConfig, tokenizer: Any) -> Any:
    """The text task env's presenter (its ``metadata`` names :class:`TextPresenter`)."""
    from envs.text import TextTask

    env = TextTask(config.task, tokenizer, max_new_tokens=config.max_new_tokens)
    return presenter_of_env(env, f"the {config.task} text task")


def _write_labelling(config: TextPipelineConfig, out: Path) -> str:
    """``labelling.json`` for ``prefenv label``; returns the run's name (kept by a rerun, even in
    a renamed folder)."""
    path = out / LABELLING_FILE
    name = json.loads(path.read_text())["run"] if path.is_file() else out.name
    write_json_atomic(path, {
        "run": name, "env": f"prefenv text ({config.task})", "kind": "text", "instructions": "",
        "gold_rate": 0.0, "overlap": config.overlap, "lease_seconds": 600,
        "round_timeout": config.human_timeout, "on_timeout": config.on_timeout,
    })  # fmt: skip
    return name


def _post_missing(
    config: TextPipelineConfig,
    feedback: HumanFeedback,
    presenter: Any,
    clips: Path,
    sample_pairs: SamplePairs,
) -> list[int]:
    """Post the pairs ``have .. queries - 1`` with their media; returns every posted query id."""
    have = len(feedback.posted(ROUND))
    if have < config.queries:
        pairs = sample_pairs(config.queries - have, have)
        media = [presenter.present(left, right, clips, f"rm{have + i:06d}")
                 for i, (left, right) in enumerate(pairs)]  # fmt: skip
        feedback.queue.post(pairs, run=feedback.run, round=ROUND, overlap=config.overlap,
                            media=media)  # fmt: skip
    return feedback.posted(ROUND)


def _settle(
    config: TextPipelineConfig,
    out: Path,
    store: ComparisonStore,
    queue: QueryQueue,
    posted: Sequence[int],
    expired: Sequence[int],
) -> HumanLabelling:
    """Act on ``on_timeout`` for the ``expired`` queries, then harvest every label."""
    given = sum(queue.answers(posted).values())
    simulated = sum(n for t, n in store.teachers().items() if t.startswith(SIMULATED_PREFIX))
    if expired and config.on_timeout == "pause":
        return HumanLabelling(len(posted), given, simulated, waiting=len(expired))
    if expired and config.on_timeout == "continue" and given + simulated == 0:
        raise NoHumanLabelsError(
            f"nobody answered any of the {len(posted)} queries within --human-timeout "
            f"{config.human_timeout:g} s, so there is nothing to train on (the queries stay "
            f"posted): serve them with `prefenv label --run {out} --annotator NAME` "
            "and run this stage again, raise --human-timeout, or use --on-timeout simulate"
        )
    queue.close_queries(expired)
    queue.harvest()  # every label: the stage trains now, so the undo window ends here
    if expired and config.on_timeout == "simulate":
        fallback = _fallback_teacher(config)
        answers = fallback.label(queue.pairs(expired))
        store.append([_simulated(c) for c in answers])
        simulated += len(answers)
    return HumanLabelling(len(posted), given, simulated, waiting=0)


def _fallback_teacher(config: TextPipelineConfig) -> Any:
    from envs.text.feedback import make_text_teacher
    from envs.text.tasks import TASKS

    rng = np.random.default_rng(config.stream_seed("rm_fallback"))
    return make_text_teacher(config.fallback_teacher, TASKS[config.task](), rng)


def _simulated(comparison: Comparison) -> Comparison:
    return replace(comparison, teacher=SIMULATED_PREFIX + comparison.teacher)


def label_sources(comparisons: Sequence[Comparison], from_file: bool) -> dict[str, Any]:
    """``labels_human`` (teacher ``human:<annotator>``) and ``labels_simulated`` (a synthetic
    teacher's) among the rm stage's training comparisons; a ``--comparisons-file``'s other rows
    are neither (``labels_simulated`` None: the file says who labelled them)."""
    human = sum(c.teacher.startswith(HUMAN_PREFIX) for c in comparisons)
    return {
        "labels_human": human,
        "labels_simulated": None if from_file else len(comparisons) - human,
    }
