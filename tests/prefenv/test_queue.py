"""Tests for the human query queue (prefenv/queue.py) inside the comparison store."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from prefenv.queue import (
    AlreadyLabelledError,
    NotAssignedError,
    NothingToUndoError,
    QueryClosedError,
    QueryQueue,
    QueueError,
    UnknownQueryError,
)
from prefenv.records import Comparison, Segment
from prefenv.store import SCHEMA, ComparisonStore, StoreMissingError

MEDIA = {"kind": "text", "prompt": "p", "left": "a", "right": "b"}


class FakeClock:
    """Seconds since the epoch that move only when a test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_pairs(n: int, seed: int = 0) -> list[tuple[Segment, Segment]]:
    """``n`` pairs of 3-step segments (obs dim 2, act dim 1) with text contexts."""
    rng = np.random.default_rng(seed)

    def segment(i: int, side: str) -> Segment:
        return Segment(
            obs=rng.normal(size=(4, 2)),
            acts=rng.uniform(-1, 1, size=(3, 1)),
            true_rewards=rng.normal(size=3),
            context={"prompt": f"p{i}", "completion": f"{side}{i}"},
        )

    return [(segment(i, "a"), segment(i, "b")) for i in range(n)]


def post(queue: QueryQueue, n: int, **kwargs: object) -> list[str]:
    """Post ``n`` presented pairs; returns their public ids in order."""
    ids = queue.post(make_pairs(n), run="r", round=0, media=[MEDIA] * n, **kwargs)  # type: ignore[arg-type]
    posted = [*queue.round_queries("r", 0), *queue.round_queries("r", 0, gold=True)]
    public = {query.id: query.public_id for query in posted}
    return [public[row_id] for row_id in ids]


def dump(path: Path) -> list[str]:
    """Every table's content, read through a fresh connection (what another process sees)."""
    with sqlite3.connect(path) as conn:
        return list(conn.iterdump())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(tmp_path: Path, clock: FakeClock) -> QueryQueue:
    with QueryQueue(tmp_path / "comparisons.sqlite", create=True, clock=clock) as opened:
        for name in ("alice", "bob", "carol"):
            opened.add_annotator(name)
        yield opened


def test_missing_store_is_refused_unless_created(tmp_path: Path) -> None:
    with pytest.raises(StoreMissingError, match="no comparison store .* --teacher human"):
        QueryQueue(tmp_path / "nothing.sqlite")
    assert not (tmp_path / "nothing.sqlite").exists()


def test_v1_store_opens_upgraded_and_keeps_its_comparisons(tmp_path: Path) -> None:
    path = tmp_path / "comparisons.sqlite"
    pair = make_pairs(1)[0]
    old = [Comparison(*pair, label, teacher="oracle", created=1.0) for label in (0.0, 1.0, None)]
    with ComparisonStore(path) as store:
        store.append(old)
    with sqlite3.connect(path) as conn:  # make it exactly what prefenv wrote before the queue
        for table in ("queries", "assignments", "labels", "annotators"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("UPDATE meta SET value = 'prefenv.comparisons/1' WHERE key = 'schema'")

    with QueryQueue(path) as queue:
        queue.add_annotator("alice")
        (public_id,) = post(queue, 1)
        assert queue.next_for("alice").public_id == public_id
        queue.label("alice", public_id, "right")
        assert len(queue.harvest()) == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == SCHEMA
    with ComparisonStore(path) as store:
        assert store.teachers() == {"human:alice": 1, "oracle": 3}
        kept = store.load(labelled_only=False, teacher="oracle")
        assert [c.label for c in kept] == [0.0, 1.0, None]
        np.testing.assert_array_equal(kept[0].segment0.obs, pair[0].obs.astype(np.float32))


def test_tokens_identify_annotators_and_reset_revokes_the_old_one(queue: QueryQueue) -> None:
    token = queue.add_annotator("dave")
    assert queue.annotator_for_token(token) == "dave"
    assert queue.annotator_for_token("forged") is None
    assert token not in "".join(dump(queue.path)), "the store keeps only the token's hash"
    new = queue.reset_token("dave")
    assert queue.annotator_for_token(token) is None
    assert queue.annotator_for_token(new) == "dave"
    assert queue.annotators() == ["alice", "bob", "carol", "dave"]
    before = dump(queue.path)
    with pytest.raises(ValueError, match="already exists .* --reset-token"):
        queue.add_annotator("dave")
    with pytest.raises(ValueError, match="must be 1-64 letters"):
        queue.add_annotator("../x")
    with pytest.raises(ValueError, match="no annotator 'erin'"):
        queue.reset_token("erin")
    assert dump(queue.path) == before


def test_post_next_label_undo_harvest(queue: QueryQueue, clock: FakeClock) -> None:
    first, second = post(queue, 2)
    query = queue.next_for("alice")
    assert (query.public_id, query.media, query.gold, query.closed) == (first, MEDIA, None, None)
    assert queue.next_for("alice").public_id == first, "an unanswered assignment comes back"
    label_id = queue.label("alice", first, "left", response_seconds=2.5)
    assert queue.progress("alice") == {"labelled": 1, "open": 2, "answered": 1, "waiting": 1}
    assert queue.next_for("alice").public_id == second
    queue.label("alice", second, "equal", 1.0)

    clock.now += 1
    assert queue.undo("alice") == second
    assert queue.next_for("alice").public_id == second, "an undone query is handed out again"
    queue.label("alice", second, "right", 1.5)
    assert queue.next_for("alice") is None

    rows = queue.label_rows()
    assert [(r["id"], r["query"], r["annotator"], r["choice"]) for r in rows[:1]] == [
        (label_id, first, "alice", "left")
    ]
    assert [(r["choice"], r["response_seconds"]) for r in rows] == [("left", 2.5), ("right", 1.5)]
    harvested = queue.harvest()
    assert [c.label for c in harvested] == [0.0, 1.0]
    assert queue.harvest() == [], "a label is harvested once"
    assert queue.unharvested() == 0


def test_unpresented_queries_wait_for_their_media(queue: QueryQueue) -> None:
    (row_id,) = queue.post(make_pairs(1), run="r", round=0)
    assert queue.next_for("alice") is None
    queue.set_media(row_id, MEDIA)
    assert queue.next_for("alice").media == MEDIA


def test_overlap_two_hands_each_query_to_two_annotators_only(queue: QueryQueue) -> None:
    (public_id,) = post(queue, 1, overlap=2)
    assert queue.next_for("alice").public_id == public_id
    assert queue.next_for("bob").public_id == public_id
    assert queue.next_for("carol") is None
    queue.label("alice", public_id, "left")
    queue.label("bob", public_id, "right")
    assert queue.next_for("carol") is None, "a query labelled by its k annotators is done"
    assert queue.progress("carol") == {"labelled": 0, "open": 1, "answered": 1, "waiting": 0}
    assert {c.teacher: c.label for c in queue.harvest()} == {"human:alice": 0.0, "human:bob": 1.0}


def test_a_lapsed_lease_lets_another_annotator_take_the_query(
    queue: QueryQueue, clock: FakeClock
) -> None:
    (public_id,) = post(queue, 1)
    assert queue.next_for("alice", lease_seconds=60).public_id == public_id
    clock.now += 59
    assert queue.next_for("bob", lease_seconds=60) is None, "alice's lease still runs"
    clock.now += 2
    assert queue.next_for("bob", lease_seconds=60).public_id == public_id
    queue.label("bob", public_id, "left")
    with pytest.raises(NotAssignedError):
        queue.label("carol", public_id, "left")


def test_labelled_assignments_stay_active_after_their_lease(
    queue: QueryQueue, clock: FakeClock
) -> None:
    (public_id,) = post(queue, 1)
    queue.next_for("alice", lease_seconds=60)
    queue.label("alice", public_id, "left")
    clock.now += 3600
    assert queue.next_for("bob", lease_seconds=60) is None


def test_gold_questions_come_at_the_gold_rate_and_are_never_harvested(queue: QueryQueue) -> None:
    normal = set(post(queue, 40))
    gold = set(post(queue, 10, gold=[0.0, 1.0] * 5))
    handed = []
    for _ in range(20):
        query = queue.next_for("alice", gold_rate=0.25)
        handed.append(query.public_id)
        queue.label("alice", query.public_id, "left")
    assert sum(public_id in gold for public_id in handed) == 5
    assert len(set(handed)) == 20 and set(handed) <= normal | gold
    rows = queue.label_rows()
    assert {r["gold"] for r in rows if r["query"] in gold} == {0.0, 1.0}
    assert {r["gold"] for r in rows if r["query"] in normal} == {None}
    harvested = queue.harvest()
    assert len(harvested) == 15
    assert all(r["comparison_id"] is None for r in queue.label_rows() if r["query"] in gold)
    assert queue.progress("alice")["open"] == 40, "gold questions are not the run's queries"


def test_no_gold_without_a_gold_rate(queue: QueryQueue) -> None:
    post(queue, 3, gold=[1.0, 1.0, 1.0])
    (public_id,) = post(queue, 1)
    assert queue.next_for("alice").public_id == public_id
    queue.label("alice", public_id, "left")
    assert queue.next_for("alice") is None


@pytest.mark.parametrize("rate", [-0.1, 1.0])
def test_a_bad_gold_rate_is_refused(queue: QueryQueue, rate: float) -> None:
    with pytest.raises(ValueError, match=r"gold_rate must be in \[0, 1\)"):
        queue.next_for("alice", gold_rate=rate)


def test_harvest_respects_the_undo_window_and_maps_choices(
    queue: QueryQueue, clock: FakeClock
) -> None:
    choices = ["left", "right", "equal", "skip"]
    ids = post(queue, 4)
    pairs = queue.pairs([queue.query(public_id).id for public_id in ids])
    for public_id, choice in zip(ids, choices, strict=True):
        assert queue.next_for("alice").public_id == public_id
        queue.label("alice", public_id, choice)
        clock.now += 10  # labels at t0, t0+10, t0+20, t0+30; now t0+40
    assert queue.unharvested(older_than=25) == 2
    early = queue.harvest(older_than=25)
    assert [c.label for c in early] == [0.0, 1.0]
    clock.now += 100
    late = queue.harvest(older_than=25)
    assert [c.label for c in late] == [0.5, None]
    for comparison, (left, right), k in zip(early + late, pairs, range(4), strict=True):
        assert comparison.teacher == "human:alice"
        assert comparison.created == 1_700_000_000.0 + 10 * k
        np.testing.assert_array_equal(comparison.segment0.obs, left.obs)
        np.testing.assert_array_equal(comparison.segment1.acts, right.acts)
        assert comparison.segment1.context == right.context
    with ComparisonStore(queue.path) as store:
        assert store.teachers() == {"human:alice": 4}
        assert [c.label for c in store.load(labelled_only=False)] == [0.0, 1.0, 0.5, None]


def refusals(queue: QueryQueue, clock: FakeClock) -> dict[str, tuple[Callable[[], object], type]]:
    """Every refused request, set up on a fresh queue: name -> (call, expected error)."""
    labelled, closed, held, other, harvested = post(queue, 5)
    for public_id in (labelled, closed, held):
        assert queue.next_for("alice").public_id == public_id
        if public_id != held:
            queue.label("alice", public_id, "left")
    assert queue.next_for("bob").public_id == other
    assert queue.undo("alice") == closed  # takes back `closed`'s label, then closes it
    queue.close_queries([queue.query(closed).id])
    assert queue.next_for("carol").public_id == harvested
    queue.label("carol", harvested, "right")
    clock.now += 1
    queue.harvest()
    return {
        "unknown query": (lambda: queue.label("alice", "deadbeef", "left"), UnknownQueryError),
        "another's query": (lambda: queue.label("alice", other, "left"), NotAssignedError),
        "never handed": (lambda: queue.label("carol", held, "left"), NotAssignedError),
        "double label": (lambda: queue.label("alice", labelled, "right"), AlreadyLabelledError),
        "closed query": (lambda: queue.label("alice", closed, "left"), QueryClosedError),
        "bad choice": (lambda: queue.label("alice", held, "maybe"), ValueError),
        "bad seconds": (lambda: queue.label("alice", held, "left", float("nan")), QueueError),
        "undo nothing": (lambda: queue.undo("bob"), NothingToUndoError),
        "undo harvested": (lambda: queue.undo("carol"), NothingToUndoError),
    }


@pytest.mark.parametrize(
    ("name", "status"),
    [("unknown query", 404), ("another's query", 403), ("never handed", 403),
     ("double label", 409), ("closed query", 409), ("bad choice", None), ("bad seconds", 400),
     ("undo nothing", 409), ("undo harvested", 409)],
)  # fmt: skip
def test_each_refusal_has_its_status_and_writes_nothing(
    queue: QueryQueue, clock: FakeClock, name: str, status: int | None
) -> None:
    call, error = refusals(queue, clock)[name]
    before = dump(queue.path)
    with pytest.raises(error) as raised:
        call()
    if status is not None:
        assert raised.value.status == status
    assert str(raised.value), "a refusal says why"
    assert dump(queue.path) == before


def test_closed_queries_are_not_handed_out(queue: QueryQueue) -> None:
    first, second = post(queue, 2)
    assert queue.close_queries([queue.query(first).id]) == 1
    assert queue.close_queries([queue.query(first).id]) == 0, "closing twice changes nothing"
    assert queue.query(first).closed is not None
    assert queue.next_for("alice").public_id == second
    assert queue.progress("alice")["open"] == 1


def test_threads_with_their_own_connections_label_each_query_once(tmp_path: Path) -> None:
    path = tmp_path / "comparisons.sqlite"
    with QueryQueue(path, create=True) as queue:
        names = [f"a{i}" for i in range(6)]
        for name in names:
            queue.add_annotator(name)
        post(queue, 120)
    acknowledged: list[tuple[str, str]] = []
    lock = threading.Lock()

    def annotate(name: str) -> None:
        with QueryQueue(path) as own:
            while (query := own.next_for(name)) is not None:
                own.label(name, query.public_id, "left")
                with lock:
                    acknowledged.append((name, query.public_id))

    threads = [threading.Thread(target=annotate, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with QueryQueue(path) as queue:
        rows = queue.label_rows()
    assert len(acknowledged) == 120 == len({public_id for _, public_id in acknowledged})
    assert sorted((r["annotator"], r["query"]) for r in rows) == sorted(acknowledged)


def test_a_store_from_before_the_held_assignments_index_gets_it_when_opened(tmp_path):
    path = tmp_path / "comparisons.sqlite"
    QueryQueue(path, create=True).close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP INDEX assignments_held")
    QueryQueue(path).close()
    with sqlite3.connect(path) as conn:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM assignments WHERE annotator = ? AND assigned > ?",
            ("a", 0.0),
        ).fetchall()
    assert any("assignments_held" in str(row) for row in plan)
