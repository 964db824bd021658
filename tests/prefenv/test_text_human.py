"""`prefenv text rm --teacher human` (issue 13): people label the rm stage's SFT pairs through
the run's query queue, with a timeout that continues, simulates or pauses."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from envs.text.tasks import TASKS
from prefenv.app.cli import main
from prefenv.app.text_runs import TextPipelineConfig, run_pipeline
from prefenv.jsonl import import_jsonl
from prefenv.queue import Query, QueryQueue
from prefenv.store import ComparisonStore

TINY = {
    "base_train_steps": 20, "sft_steps": 8, "sft_demos": 100, "queries": 24, "rm_epochs": 2,
    "max_new_tokens": 6, "eval_prompts": 12,
}  # fmt: skip
ARGS = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
QUERIES = TINY["queries"]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> Path:
    """A run folder whose base and sft stages finished (copied by each test)."""
    out = tmp_path_factory.mktemp("text_human") / "run"
    run_pipeline(TextPipelineConfig(**TINY), out, stages=("base", "sft"))
    return out


@pytest.fixture
def run(sft_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(sft_run, out)
    return out


def rm(out: Path, *extra: str) -> int:
    """``prefenv text rm --out OUT --teacher human`` with the tiny settings."""
    return main(["text", "rm", "--out", str(out), *ARGS, "--teacher", "human", *extra])


def preferred(query: Query) -> str:
    """What the task's true score prefers between the two completions a person is shown."""
    scorer, media = TASKS[TextPipelineConfig().task](), query.media or {}
    left, right = (scorer(media["prompt"], media[side]) for side in ("left", "right"))
    return "left" if left > right else "right" if right > left else "equal"


def answer_all(queue: QueryQueue, name: str, stop: threading.Event | None = None) -> int:
    """``name`` answers every query handed out until none is left (or, with ``stop``, until it
    is set, waiting for queries to appear); returns how many."""
    answered = 0
    while stop is None or not stop.is_set():
        query = queue.next_for(name)
        if query is None:
            if stop is None:
                return answered
            stop.wait(0.05)
            continue
        queue.label(name, query.public_id, preferred(query), response_seconds=0.2)
        answered += 1
    return answered


def rm_metrics(out: Path) -> dict:
    return json.loads((out / "reward_model" / "stage.json").read_text())


def queries(out: Path) -> list[Query]:
    with QueryQueue(out / "comparisons.sqlite") as queue:
        return queue.round_queries(out.name, 0)


def test_the_rm_stage_trains_on_what_a_person_answers(run, capsys) -> None:
    with QueryQueue(run / "comparisons.sqlite", create=True) as queue:
        queue.add_annotator("alice")  # `prefenv label --run OUT --annotator alice`
    stop, done = threading.Event(), []

    def person() -> None:  # answers through the queue while the stage waits
        with QueryQueue(run / "comparisons.sqlite") as queue:
            done.append(answer_all(queue, "alice", stop))

    thread = threading.Thread(target=person)
    thread.start()
    try:
        assert rm(run, "--human-timeout", "120") == 0
    finally:
        stop.set()
        thread.join(timeout=30)
    assert done == [QUERIES]
    assert f"prefenv label --run {run}" in capsys.readouterr().out
    # The reward model trained on the person's comparisons only, each as the scorer prefers.
    exported = import_jsonl(run / "comparisons.jsonl")
    assert len(exported) == QUERIES and {c.teacher for c in exported} == {"human:alice"}
    with ComparisonStore(run / "comparisons.sqlite") as store:
        assert store.teachers() == {"human:alice": QUERIES}
        for _, c in store.load_with_ids(labelled_only=False):
            s0, s1 = float(c.segment0.true_rewards[0]), float(c.segment1.true_rewards[0])
            assert c.label == (0.0 if s0 > s1 else 1.0 if s1 > s0 else 0.5)
    metrics = rm_metrics(run)
    assert metrics["teacher"] == "human" and metrics["comparisons"] == QUERIES
    assert metrics["labels_human"] == QUERIES and metrics["labels_simulated"] == 0
    # What `prefenv label --run OUT` reads: the text presenter's media, no gold questions.
    labelling = json.loads((run / "labelling.json").read_text())
    assert labelling["kind"] == "text" and labelling["gold_rate"] == 0.0
    assert (run / "clips").is_dir()
    posted = queries(run)
    assert len(posted) == QUERIES and all(q.media and q.media["kind"] == "text" for q in posted)


def test_nobody_answers_and_the_fallback_teacher_simulates_every_label(run) -> None:
    assert rm(run, "--human-timeout", "0.2", "--on-timeout", "simulate") == 0
    metrics = rm_metrics(run)
    assert metrics["labels_human"] == 0 and metrics["labels_simulated"] == QUERIES
    exported = import_jsonl(run / "comparisons.jsonl")
    assert {c.teacher for c in exported} == {"simulated:oracle"} and len(exported) == QUERIES
    assert all(q.closed is not None for q in queries(run))  # late labels are refused


def test_a_pause_trains_nothing_and_a_rerun_uses_the_labels_given_meanwhile(run, capsys):
    assert rm(run, "--human-timeout", "0.2", "--on-timeout", "pause") == 0
    out = capsys.readouterr().out
    assert f"{QUERIES} of {QUERIES} queries are still waiting" in out
    assert f"prefenv text rm --out {run} --teacher human" in out
    assert not (run / "reward_model" / "stage.json").exists()
    # --on-timeout continue with nothing at all to train on is refused; the queries stay open.
    assert rm(run, "--human-timeout", "0.2", "--on-timeout", "continue") == 2
    assert "nobody answered any of the 24 queries" in capsys.readouterr().err
    assert not (run / "reward_model" / "stage.json").exists()
    assert len(queries(run)) == QUERIES and all(q.closed is None for q in queries(run))
    with QueryQueue(run / "comparisons.sqlite") as queue:
        queue.add_annotator("bob")
        assert answer_all(queue, "bob") == QUERIES
    # The rerun finds its queries posted and answered: no new ones, no waiting, trained.
    assert rm(run, "--human-timeout", "0.2", "--on-timeout", "pause") == 0
    assert len(queries(run)) == QUERIES
    metrics = rm_metrics(run)
    assert metrics["labels_human"] == QUERIES and metrics["labels_simulated"] == 0
