"""The human query queue: pairs waiting for a person, inside the run's comparison store.

Over 400 lines: the queue's rules (assignment, overlap, leases, gold, undo, harvest) are each one
SQL transaction, and keeping them in one class keeps every rule beside the others it must not break.

A preference loop with a human teacher *posts* the pairs it wants labelled; people fetch them
through the labelling app (:mod:`prefenv.app.label_server`), one at a time, and answer "left",
"right", "equal" or "skip". The loop *harvests* the answers into the store's ``comparisons``
table, where every teacher's labels live, and refits on them. Everything is in the same SQLite
file as the comparisons (schema ``prefenv.comparisons/2``, tables in
:data:`prefenv.store_file.QUEUE_TABLES`), so a label is durable the moment :meth:`QueryQueue.label`
returns, whichever process (the trainer, the server) holds the file.

Rules, each enforced in one transaction so concurrent annotators cannot break them:

* A query is *assigned* to an annotator when :meth:`QueryQueue.next_for` hands it out; at most
  ``overlap`` annotators hold an active assignment (labelled, or handed out within
  ``lease_seconds``) of one query, and nobody gets a query twice.
* A label is accepted only for an open query assigned to that annotator
  (:class:`NotAssignedError`), once (:class:`AlreadyLabelledError`: the first label stands);
  unknown ids raise :class:`UnknownQueryError`, closed queries :class:`QueryClosedError`.
* *Gold questions* are queries whose answer is known (``gold`` 0.0 = left, 1.0 = right); they are
  mixed into each annotator's stream at ``gold_rate``, scored, and never harvested.
* :meth:`QueryQueue.undo` takes back an annotator's latest label while it is not yet harvested;
  the loop harvests only labels older than its undo window.

Annotators hold random access tokens; the store keeps only their SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prefenv.records import Comparison, Segment
from prefenv.store import decode_segments, encode_row, encode_segments
from prefenv.store_file import COLUMNS, SEGMENT_COLUMNS, StoreMissingError, connect

__all__ = [
    "CHOICES",
    "AlreadyLabelledError",
    "NotAssignedError",
    "NothingToUndoError",
    "Query",
    "QueryClosedError",
    "QueryQueue",
    "QueueError",
    "UnknownQueryError",
    "choice_label",
]

CHOICES = ("left", "right", "equal", "skip")
"""What a person may answer; "left" is the pair's first segment."""
_LABELS = {"left": 0.0, "right": 1.0, "equal": 0.5, "skip": None}
ANNOTATOR_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
HUMAN_PREFIX = "human:"
"""Harvested comparisons carry the teacher name ``human:<annotator>``."""

T = TypeVar("T")


def choice_label(choice: str) -> float | None:
    """The comparison label of an answer: left 0.0, right 1.0, equal 0.5, skip None."""
    if choice not in _LABELS:
        raise ValueError(f"choice must be one of {', '.join(CHOICES)}, got {choice!r}")
    return _LABELS[choice]


class QueueError(ValueError):
    """A queue request that cannot be done; nothing was written. ``status`` is its HTTP code."""

    status = 400


class UnknownQueryError(QueueError):
    """No query has this id."""

    status = 404


class NotAssignedError(QueueError):
    """The query exists but was not handed to this annotator."""

    status = 403


class AlreadyLabelledError(QueueError):
    """This annotator already labelled this query; the first label stands."""

    status = 409


class QueryClosedError(QueueError):
    """The query's round ended (expired or answered by a simulated teacher)."""

    status = 409


class NothingToUndoError(QueueError):
    """No label to take back: none given, or the latest one is already in a reward refit."""

    status = 409


@dataclass(frozen=True)
class Query:
    """One posted pair as the app shows it (``media`` is None until it has been presented)."""

    id: int
    public_id: str
    run: str
    round: int
    posted: float
    closed: float | None
    overlap: int
    gold: float | None
    media: dict[str, Any] | None
    n_labels: int = 0
    """Labels given so far (skips included; kept by :meth:`QueryQueue.label` and ``undo``)."""


_QUERY_COLUMNS = "id, public_id, run, round, posted, closed, overlap, gold, media, n_labels"


def _query(row: Sequence[Any]) -> Query:
    media = None if row[8] is None else json.loads(row[8])
    return Query(int(row[0]), row[1], row[2], int(row[3]), row[4], row[5], int(row[6]), row[7],
                 media, int(row[9]))  # fmt: skip


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class QueryQueue:
    """The query queue of one comparison store; safe to share between threads (one lock).

    Args:
        path: the store file. It must exist (the run's trainer creates it) unless ``create``.
        create: create a new store if the file is missing.
        clock: seconds since the epoch (tests pass a fake one).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise StoreMissingError(
                f"no comparison store at {self.path}: start the run first (`prefenv train "
                f"--teacher human --out {self.path.parent}`), or pass the run folder that has one",
                readable_rows=0,
            )
        self._conn, self.identity = connect(self.path, any_thread=True)
        self._lock = threading.Lock()
        self.clock = clock

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> QueryQueue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction under the lock: all of it is written, or none.

        ``durable`` commits wait for the disk (``synchronous=FULL``): labels, posts, harvests.
        A hand-out (``next_for``) need not: it survives a killed process either way (WAL), only
        a power cut could lose it, and a lost lease costs nothing; the next durable commit
        syncs it too. Skipping that fsync halves the disk waits of a label's round trip.
        """
        with self._lock:
            conn = self._conn
            conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # -- annotators ---------------------------------------------------------------------------

    def add_annotator(self, name: str) -> str:
        """Register an annotator; returns their new access token (shown once, stored hashed).

        Raises:
            ValueError: a bad name, or one already registered (use :meth:`reset_token`).
        """
        if not ANNOTATOR_PATTERN.fullmatch(name):
            raise ValueError(
                f"annotator name {name!r} must be 1-64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        token = secrets.token_urlsafe(24)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM annotators WHERE name = ?", (name,)).fetchone():
                raise ValueError(
                    f"annotator {name!r} already exists in {self.path}: pick another name, or "
                    "`prefenv label --reset-token NAME` for a new link"
                )
            conn.execute(
                "INSERT INTO annotators VALUES (?, ?, ?)", (name, _hash(token), self.clock())
            )
        return token

    def reset_token(self, name: str) -> str:
        """A new token for ``name``; the old one stops working."""
        token = secrets.token_urlsafe(24)
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE annotators SET token_sha256 = ? WHERE name = ?", (_hash(token), name)
            )
            if cursor.rowcount == 0:
                raise ValueError(f"no annotator {name!r} in {self.path}: add them first")
        return token

    def annotator_for_token(self, token: str) -> str | None:
        """The annotator holding ``token``, or None."""
        rows = self._read("SELECT name FROM annotators WHERE token_sha256 = ?", (_hash(token),))
        return rows[0][0] if rows else None

    def annotators(self) -> list[str]:
        return [
            name for (name,) in self._read("SELECT name FROM annotators ORDER BY created, name")
        ]

    # -- the loop's side ----------------------------------------------------------------------

    def post(
        self,
        pairs: Sequence[tuple[Segment, Segment]],
        *,
        run: str,
        round: int,
        overlap: int = 1,
        gold: Sequence[float | None] | None = None,
        media: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[int]:
        """Post pairs for people, in one transaction; returns their row ids in order.

        Args:
            pairs: the segment pairs (left = first).
            run: the run they belong to (shown on the stats page).
            round: the loop round that asked them.
            overlap: how many annotators should label each (k, for agreement).
            gold: per pair, the known answer (0.0 left, 1.0 right) of a gold question, or None.
            media: per pair, what the page shows; None posts them unpresented (not handed out
                until :meth:`set_media`).
        """
        if overlap < 1:
            raise ValueError(f"overlap must be >= 1, got {overlap}")
        n = len(pairs)
        gold = list(gold) if gold is not None else [None] * n
        media = list(media) if media is not None else [None] * n
        if len(gold) != n or len(media) != n:
            raise ValueError(f"gold and media need one entry per pair ({n})")
        if any(g not in (None, 0.0, 1.0) for g in gold):
            raise ValueError("a gold answer must be 0.0 (left), 1.0 (right) or None")
        now = self.clock()
        rows = []
        for index, (pair, known, shown) in enumerate(zip(pairs, gold, media, strict=True)):
            rows.append([secrets.token_hex(8), run, round, now, overlap, known,
                         None if shown is None else json.dumps(dict(shown)),
                         *encode_segments(pair, f"pair {index}")])  # fmt: skip
        columns = ["public_id", "run", "round", "posted", "overlap", "gold", "media",
                   *SEGMENT_COLUMNS]  # fmt: skip
        sql = f"INSERT INTO queries ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        with self._write() as conn:
            return [int(conn.execute(sql, row).lastrowid or 0) for row in rows]

    def set_media(self, query_id: int, media: Mapping[str, Any]) -> None:
        """Attach what the page shows; the query is handed out from then on."""
        with self._write() as conn:
            conn.execute(
                "UPDATE queries SET media = ? WHERE id = ?", (json.dumps(dict(media)), query_id)
            )

    def pairs(self, query_ids: Sequence[int]) -> list[tuple[Segment, Segment]]:
        """The segment pairs of the given queries, in that order."""
        with self._lock:
            found = self._pairs_locked(self._conn, query_ids)
        return [found[query_id] for query_id in query_ids]

    def round_queries(self, run: str, round: int, gold: bool = False) -> list[Query]:
        """The queries (``gold`` ones, or the others) a round posted, oldest first."""
        where = "gold IS NOT NULL" if gold else "gold IS NULL"
        rows = self._read(
            f"SELECT {_QUERY_COLUMNS} FROM queries WHERE run = ? AND round = ? AND {where} "
            "ORDER BY id", (run, round))  # fmt: skip
        return [_query(row) for row in rows]

    def answers(self, query_ids: Sequence[int]) -> dict[int, int]:
        """Labels given (skips included) per query id."""
        found = dict(self._read(
            f"SELECT id, n_labels FROM queries WHERE id IN ({', '.join('?' * len(query_ids))})",
            list(query_ids)))  # fmt: skip
        return {query_id: int(found.get(query_id, 0)) for query_id in query_ids}

    def close_queries(self, query_ids: Sequence[int]) -> int:
        """Close open queries (their round ended); labels for them are refused from now on."""
        now = self.clock()
        with self._write() as conn:
            return sum(
                conn.execute(
                    "UPDATE queries SET closed = ? WHERE id = ? AND closed IS NULL", (now, query_id)
                ).rowcount
                for query_id in query_ids
            )

    def unharvested(self, older_than: float = 0.0) -> int:
        """Labels of non-gold queries not yet harvested, given at least ``older_than`` s ago."""
        rows = self._read(
            "SELECT COUNT(*) FROM labels JOIN queries ON queries.id = labels.query_id "
            "WHERE comparison_id IS NULL AND gold IS NULL AND labels.created <= ?",
            (self.clock() - older_than,),
        )
        return int(rows[0][0])

    def harvest(self, older_than: float = 0.0) -> list[Comparison]:
        """Turn the unharvested labels into comparisons in the store, in one transaction.

        Only labels of non-gold queries given at least ``older_than`` seconds ago (the undo
        window) are taken; each becomes one comparison of teacher ``human:<annotator>`` (a skip
        becomes a skipped comparison), appended to ``comparisons`` and marked harvested.

        Returns:
            The new comparisons, in label order.
        """
        cutoff = self.clock() - older_than
        with self._write() as conn:
            rows = conn.execute(
                "SELECT labels.id, query_id, annotator, choice, created FROM labels JOIN queries "
                "ON queries.id = labels.query_id WHERE comparison_id IS NULL AND gold IS NULL "
                "AND labels.created <= ? ORDER BY labels.id", (cutoff,)).fetchall()  # fmt: skip
            if not rows:
                return []
            pairs = self._pairs_locked(conn, sorted({row[1] for row in rows}))
            insert = (f"INSERT INTO comparisons ({', '.join(COLUMNS)}) "
                      f"VALUES ({', '.join('?' * len(COLUMNS))})")  # fmt: skip
            comparisons = []
            for index, (label_id, query_id, annotator, choice, created) in enumerate(rows):
                left, right = pairs[query_id]
                comparison = Comparison(left, right, choice_label(choice),
                                        teacher=HUMAN_PREFIX + annotator, created=created)  # fmt: skip
                row_id = conn.execute(insert, encode_row(index, comparison)).lastrowid
                conn.execute("UPDATE labels SET comparison_id = ? WHERE id = ?", (row_id, label_id))
                comparisons.append(comparison)
            return comparisons

    def _pairs_locked(
        self, conn: sqlite3.Connection, query_ids: Sequence[int]
    ) -> dict[int, tuple[Segment, Segment]]:
        out = {}
        for query_id in query_ids:
            row = conn.execute(
                f"SELECT {', '.join(SEGMENT_COLUMNS)} FROM queries WHERE id = ?", (query_id,)
            ).fetchone()
            if row is None:
                raise UnknownQueryError(f"no query {query_id}")
            out[query_id] = decode_segments(dict(zip(SEGMENT_COLUMNS, row, strict=True)))
        return out

    # -- the app's side -----------------------------------------------------------------------

    def query(self, public_id: str) -> Query:
        rows = self._read(f"SELECT {_QUERY_COLUMNS} FROM queries WHERE public_id = ?", (public_id,))
        if not rows:
            raise UnknownQueryError(f"no query with id {public_id!r}: it was never posted here")
        return _query(rows[0])

    def next_for(
        self, annotator: str, *, gold_rate: float = 0.0, lease_seconds: float = 600.0
    ) -> Query | None:
        """The query to show ``annotator`` now (assigning it), or None when nothing is left.

        Their own unanswered assignment within its lease comes first; then a gold question
        when fewer than ``gold_rate`` of the queries they were handed were gold; then the oldest
        presented open query with fewer than ``overlap`` active holders. A lapsed assignment is
        not handed out again (someone else may hold the query now), but an answer to it is
        still accepted: a query may then get more than ``overlap`` labels, never fewer.
        """
        if not 0.0 <= gold_rate < 1.0:
            raise ValueError(f"gold_rate must be in [0, 1), got {gold_rate}")
        now = self.clock()
        with self._write(durable=False) as conn:
            held = conn.execute(
                f"SELECT {_QUERY_COLUMNS.replace('id,', 'q.id,', 1)} FROM queries q JOIN "
                "assignments a ON a.query_id = q.id WHERE a.annotator = ? AND q.closed IS NULL "
                "AND q.media IS NOT NULL AND a.assigned > ? AND NOT EXISTS (SELECT 1 FROM labels l "
                "WHERE l.query_id = q.id AND l.annotator = ?) ORDER BY a.assigned, q.id LIMIT 1",
                (annotator, now - lease_seconds, annotator)).fetchone()  # fmt: skip
            if held is not None:
                return _query(held)
            chosen = None
            handed, gold_handed = conn.execute(
                "SELECT COUNT(*), COUNT(q.gold) FROM assignments a JOIN queries q ON "
                "q.id = a.query_id WHERE a.annotator = ?", (annotator,)).fetchone()  # fmt: skip
            if gold_rate > 0 and gold_handed < gold_rate * (handed + 1):
                chosen = conn.execute(
                    f"SELECT {_QUERY_COLUMNS} FROM queries q WHERE gold IS NOT NULL AND closed "
                    "IS NULL AND media IS NOT NULL AND NOT EXISTS (SELECT 1 FROM assignments a "
                    "WHERE a.query_id = q.id AND a.annotator = ?) ORDER BY id LIMIT 1",
                    (annotator,)).fetchone()  # fmt: skip
            if chosen is None:
                chosen = conn.execute(
                    f"SELECT {_QUERY_COLUMNS} FROM queries q WHERE gold IS NULL AND closed IS NULL "
                    "AND n_labels < overlap AND media IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "
                    "assignments a WHERE "
                    "a.query_id = q.id AND a.annotator = ?) AND (SELECT COUNT(*) FROM assignments a "
                    "WHERE a.query_id = q.id AND (a.assigned > ? OR EXISTS (SELECT 1 FROM labels l "
                    "WHERE l.query_id = q.id AND l.annotator = a.annotator))) < q.overlap "
                    "ORDER BY id LIMIT 1", (annotator, now - lease_seconds)).fetchone()  # fmt: skip
            if chosen is None:
                return None
            conn.execute("INSERT INTO assignments VALUES (?, ?, ?)", (chosen[0], annotator, now))
            return _query(chosen)

    def label(
        self, annotator: str, public_id: str, choice: str, response_seconds: float | None = None
    ) -> int:
        """Record ``annotator``'s answer to a query; durable when this returns (the label's id).

        Raises:
            UnknownQueryError, NotAssignedError, QueryClosedError, AlreadyLabelledError: see the
                module docstring; nothing is written.
            ValueError: an unknown choice or a negative / non-finite response time.
        """
        choice_label(choice)
        if response_seconds is not None and not (
            math.isfinite(response_seconds) and response_seconds >= 0
        ):
            raise QueueError(
                f"response_seconds must be a finite number >= 0, got {response_seconds}"
            )
        with self._write() as conn:
            row = conn.execute(
                "SELECT id, closed FROM queries WHERE public_id = ?", (public_id,)
            ).fetchone()
            if row is None:
                raise UnknownQueryError(f"no query with id {public_id!r}: it was never posted here")
            query_id, closed = row
            if not conn.execute("SELECT 1 FROM assignments WHERE query_id = ? AND annotator = ?",
                                (query_id, annotator)).fetchone():  # fmt: skip
                raise NotAssignedError(
                    f"query {public_id} was not assigned to {annotator}: label the queries the "
                    "app hands you"
                )
            given = conn.execute("SELECT choice FROM labels WHERE query_id = ? AND annotator = ?",
                                 (query_id, annotator)).fetchone()  # fmt: skip
            if given is not None:
                raise AlreadyLabelledError(
                    f"{annotator} already labelled query {public_id} ({given[0]!r}); the first "
                    "label stands (undo it first to change it)"
                )
            if closed is not None:
                raise QueryClosedError(
                    f"query {public_id} is closed: its round ended before this label came"
                )
            conn.execute("UPDATE queries SET n_labels = n_labels + 1 WHERE id = ?", (query_id,))
            cursor = conn.execute(
                "INSERT INTO labels (query_id, annotator, choice, created, response_seconds) "
                "VALUES (?, ?, ?, ?, ?)", (query_id, annotator, choice, self.clock(),
                                           response_seconds))  # fmt: skip
            return int(cursor.lastrowid or 0)

    def undo(self, annotator: str) -> str:
        """Take back ``annotator``'s latest label; returns its query's id (handed out again next).

        Raises:
            NothingToUndoError: no label, or the latest one was already used in a refit.
        """
        with self._write() as conn:
            row = conn.execute(
                "SELECT l.id, l.comparison_id, q.public_id FROM labels l JOIN queries q ON "
                "q.id = l.query_id WHERE annotator = ? ORDER BY l.id DESC LIMIT 1",
                (annotator,),
            ).fetchone()
            if row is None:
                raise NothingToUndoError(f"{annotator} has no label to undo")
            label_id, harvested, public_id = row
            if harvested is not None:
                raise NothingToUndoError(
                    f"the last label of {annotator} (query {public_id}) is already in the reward "
                    "model's training data and cannot be taken back"
                )
            conn.execute("DELETE FROM labels WHERE id = ?", (label_id,))
            conn.execute(
                "UPDATE queries SET n_labels = n_labels - 1 WHERE public_id = ?", (public_id,)
            )
            conn.execute(
                "UPDATE assignments SET assigned = ? WHERE query_id = (SELECT id FROM queries "
                "WHERE public_id = ?) AND annotator = ?", (self.clock(), public_id, annotator))  # fmt: skip
            return public_id

    def progress(self, annotator: str) -> dict[str, int]:
        """``labelled`` by this annotator, ``open`` queries posted and not yet closed,
        ``answered`` open queries with all their ``overlap`` labels, ``waiting`` for anyone."""
        labelled = self._read("SELECT COUNT(*) FROM labels WHERE annotator = ?", (annotator,))[0][0]
        open_, answered = self._read(
            "SELECT COUNT(*), COALESCE(SUM(n_labels >= overlap), 0) FROM queries "
            "WHERE closed IS NULL AND gold IS NULL")[0]  # fmt: skip
        return {"labelled": int(labelled), "open": int(open_), "answered": int(answered),
                "waiting": int(open_) - int(answered)}  # fmt: skip

    def label_rows(self) -> list[dict[str, Any]]:
        """Every label with its query's gold answer and round (for statistics), in label order."""
        rows = self._read(
            "SELECT l.id, q.public_id, q.round, l.annotator, l.choice, l.created, "
            "l.response_seconds, q.gold, l.comparison_id FROM labels l JOIN queries q ON "
            "q.id = l.query_id ORDER BY l.id")  # fmt: skip
        keys = ("id", "query", "round", "annotator", "choice", "created", "response_seconds",
                "gold", "comparison_id")  # fmt: skip
        return [dict(zip(keys, row, strict=True)) for row in rows]
