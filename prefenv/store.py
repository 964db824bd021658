"""Durable, append-only comparison store on embedded SQLite, plus JSONL interop.

:class:`ComparisonStore` keeps every :class:`~prefenv.records.Comparison` a teacher (synthetic or
human) produced in one SQLite file. Each :meth:`ComparisonStore.append` is one transaction
committed with ``journal_mode=WAL`` and ``synchronous=FULL``, so a batch that ``append``
returned from survives the process being killed, and other processes may read the file (or
append to it) at the same time.

Layout of schema ``prefenv.comparisons/1``:

* ``meta(key TEXT PRIMARY KEY, value TEXT)`` with ``schema = "prefenv.comparisons/1"`` and
  ``store_id`` (a random uuid4 hex written when the store is created; a store made by an older
  prefenv gets one the first time it is opened): :attr:`ComparisonStore.identity`.
* ``comparisons``: one row per comparison with an ``INTEGER PRIMARY KEY AUTOINCREMENT`` ``id``,
  ``label REAL`` (``NULL`` when the teacher skipped), ``teacher TEXT``, ``created REAL`` and, for
  each segment ``k`` in ``{0, 1}``, ``obs{k}`` / ``acts{k}`` / ``true_rewards{k}`` as ``.npy``
  bytes (dtype and shape in the header, lossless) and ``context{k}`` as JSON text (``NULL`` for
  no context).

The newest rows of an open (or killed) store live in ``<name>-wal`` beside the file until SQLite
copies them back ("checkpoints"); :meth:`ComparisonStore.close` does so, so a closed store is one
self-contained file. :meth:`ComparisonStore.open_existing` reopens a store whose rows must still
be there (resuming a run): it never creates one and reads every row before it answers. The file
checks and error types live in :mod:`prefenv.store_file` and are re-exported here.

:func:`export_jsonl` / :func:`import_jsonl` (in :mod:`prefenv.jsonl`, re-exported here) move
comparisons in and out in the Hugging Face prompt/chosen/rejected JSONL convention.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefenv.jsonl import export_jsonl, import_jsonl
from prefenv.npy_codec import array_from_bytes, array_to_bytes
from prefenv.records import Comparison, Segment
from prefenv.store_file import (
    ARRAYS,
    COLUMNS,
    SCHEMA,
    SEGMENT_COLUMNS,
    StoreDamagedError,
    StoreError,
    StoreMismatchError,
    StoreMissingError,
    StoreSchemaError,
    connect,
    verify_readable,
)

__all__ = [
    "SCHEMA",
    "ComparisonStore",
    "StoreDamagedError",
    "StoreError",
    "StoreMismatchError",
    "StoreMissingError",
    "StoreSchemaError",
    "export_jsonl",
    "import_jsonl",
]


class ComparisonStore:
    """Append-only store of comparisons in one SQLite file.

    The store is safe to reopen and keep appending to, and safe to share between processes:
    writers wait up to 30 s for each other, readers never block writers (WAL). One object
    should be used from one thread.

    Example:
        >>> with ComparisonStore("runs/exp1/comparisons.sqlite") as store:  # doctest: +SKIP
        ...     ids = store.append(comparisons)
        ...     labelled = store.load()

    Args:
        path: the store file; created (with its parent folders) if missing. An existing file
            must be a prefenv store of schema :data:`SCHEMA` or an empty SQLite database. To
            reopen a store that must exist and be whole, use :meth:`open_existing`.

    Raises:
        StoreSchemaError: ``path`` holds something else (another SQLite database, another
            schema version, or not SQLite at all); the file is left untouched.
        StoreDamagedError: ``path`` is a store SQLite cannot read, or is missing or empty while
            its ``-wal`` file holds rows (opening would discard them); nothing is touched.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        conn, self._identity = connect(self.path)
        self._conn: sqlite3.Connection | None = conn

    @classmethod
    def open_existing(
        cls, path: str | os.PathLike[str], *, min_rows: int = 0, identity: str | None = None
    ) -> ComparisonStore:
        """Open a store that must already exist and be whole, e.g. to resume a run.

        Unlike the constructor it never creates a store. Before opening it for writing it reads
        the file without changing it: ``PRAGMA quick_check``, then every comparison's row.

        Example:
            >>> store = ComparisonStore.open_existing(  # doctest: +SKIP
            ...     "runs/exp1/comparisons.sqlite", min_rows=235, identity=saved_store_id
            ... )

        Args:
            path: the store file.
            min_rows: the store must hold at least this many comparisons (skipped ones
                included), e.g. the labels a saved run says it trained on.
            identity: the store must carry this :attr:`identity` (e.g. the one a saved run
                recorded); ``None`` accepts any.

        Returns:
            The open store.

        Raises:
            StoreMissingError: no file, a 0-byte file, or an SQLite file without tables.
            StoreDamagedError: not SQLite, cut short or otherwise unreadable, or a ``-wal``
                file left without its main file. ``readable_rows`` / ``recorded_rows`` say how
                many comparisons can still be read and how many the store once held.
            StoreSchemaError: another SQLite database, or another schema version.
            StoreMismatchError: another identity, or fewer than ``min_rows`` comparisons.
        """
        if min_rows < 0:
            raise ValueError(f"min_rows must be >= 0, got {min_rows}")
        path = Path(path)
        verify_readable(path, min_rows)
        store = cls(path)
        try:
            store._check_expected(min_rows, identity)
        except BaseException:
            store.close()
            raise
        return store

    def _check_expected(self, min_rows: int, identity: str | None) -> None:
        name, count = self.path.name, self.count()
        if identity is not None and identity != self.identity:
            raise StoreMismatchError(
                f"comparison store {self.path} has identity {self.identity}, not the expected "
                f"{identity}: it is another store (a new one made in its place, or another run's "
                f"copy). Put the original {name} and {name}-wal back from one backup",
                readable_rows=count,
            )
        if count < min_rows:
            raise StoreMismatchError(
                f"comparison store {self.path} holds {count} comparisons, fewer than the "
                f"{min_rows} expected: it was cut back or replaced by an older copy. Rows not yet "
                f"checkpointed live in {name}-wal, so a deleted {name}-wal (or a copy made "
                f"without it) loses them. Restore {name} and {name}-wal together from one backup",
                readable_rows=count,
            )

    @property
    def identity(self) -> str:
        """This store's id (32 hex digits), fixed when it was created; copies share it."""
        return self._identity

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Checkpoint and close the file; further calls on this object raise. Twice is fine.

        The checkpoint copies the rows from ``<name>-wal`` into the file and empties the -wal,
        so a store nobody else has open is one self-contained file. It does not wait for other
        processes reading or writing the store: then the last one to close finishes it.
        """
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # the rows stay committed in the -wal file; the next open checkpoints them
        finally:
            conn.close()

    def __enter__(self) -> ComparisonStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else f"{len(self)} comparisons"
        return f"ComparisonStore({str(self.path)!r}, {state})"

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(
                f"comparison store {self.path} is closed: open a new ComparisonStore"
            )
        return self._conn

    # -- writing -----------------------------------------------------------------------------

    def append(self, comparisons: Sequence[Comparison]) -> list[int]:
        """Add comparisons in one transaction: either all are stored or none is.

        Every row is encoded before anything is written, so a comparison whose context is not
        JSON-serialisable fails the whole batch without touching the file.

        Args:
            comparisons: the batch, labelled or skipped (``label=None``).

        Returns:
            The new rows' ids, increasing, in the order of ``comparisons``.

        Raises:
            TypeError: an item is not a :class:`~prefenv.records.Comparison`.
            ValueError: a segment context is not a JSON-serialisable mapping.
        """
        rows = [encode_row(index, comparison) for index, comparison in enumerate(comparisons)]
        if not rows:
            return []
        db = self._db
        sql = f"INSERT INTO comparisons ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        db.execute("BEGIN IMMEDIATE")
        try:
            ids = [int(db.execute(sql, row).lastrowid or 0) for row in rows]
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return ids

    # -- reading -----------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of stored comparisons, skipped ones included."""
        return self.count()

    def count(self, labelled_only: bool = False) -> int:
        """Number of stored comparisons (only those with a label if ``labelled_only``)."""
        where = " WHERE label IS NOT NULL" if labelled_only else ""
        return int(self._db.execute(f"SELECT COUNT(*) FROM comparisons{where}").fetchone()[0])

    def teachers(self) -> dict[str, int]:
        """Comparisons per teacher (skipped ones included), sorted by teacher name."""
        rows = self._db.execute(
            "SELECT teacher, COUNT(*) FROM comparisons GROUP BY teacher ORDER BY teacher"
        )
        return {teacher: int(n) for teacher, n in rows}

    def load(
        self,
        labelled_only: bool = True,
        teacher: str | None = None,
        since_id: int = 0,
        limit: int | None = None,
    ) -> list[Comparison]:
        """Read comparisons back in id (append) order.

        Args:
            labelled_only: drop skipped comparisons (``label is None``).
            teacher: keep only this teacher's comparisons.
            since_id: keep only rows with ``id > since_id`` (ids come from :meth:`append` or
                :meth:`load_with_ids`), for reading what arrived since the last look.
            limit: at most this many rows (the first ones after the filters).

        Returns:
            The comparisons; arrays are float32, contexts are plain dicts (or ``None``).
        """
        rows = self.load_with_ids(labelled_only, teacher, since_id, limit)
        return [comparison for _, comparison in rows]

    def load_with_ids(
        self,
        labelled_only: bool = True,
        teacher: str | None = None,
        since_id: int = 0,
        limit: int | None = None,
    ) -> list[tuple[int, Comparison]]:
        """Like :meth:`load`, but each comparison comes with its row id.

        Feed the last id back as ``since_id`` to poll for new rows without missing any that
        another process appends meanwhile.
        """
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        clauses, params = ["id > ?"], [since_id]
        if labelled_only:
            clauses.append("label IS NOT NULL")
        if teacher is not None:
            clauses.append("teacher = ?")
            params.append(teacher)
        params.append(-1 if limit is None else limit)
        sql = (
            f"SELECT id, {', '.join(COLUMNS)} FROM comparisons WHERE {' AND '.join(clauses)} "
            "ORDER BY id LIMIT ?"
        )
        return [(int(row[0]), self._decode_row(row)) for row in self._db.execute(sql, params)]

    def _decode_row(self, row: tuple[Any, ...]) -> Comparison:
        row_id, label, teacher, created, *segment_values = row
        values = dict(zip(SEGMENT_COLUMNS, segment_values, strict=True))
        try:
            left, right = decode_segments(values)
            return Comparison(left, right, label, teacher=teacher, created=created)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"comparison store {self.path}: row {row_id} cannot be decoded ({error}); "
                "the file was modified outside prefenv"
            ) from error


# -- row encoding ----------------------------------------------------------------------------


def _context_to_json(context: Mapping[str, Any] | None, where: str) -> str | None:
    if context is None:
        return None
    if not isinstance(context, Mapping):
        raise ValueError(f"{where} context must be a mapping or None, got {type(context).__name__}")
    try:
        return json.dumps(dict(context), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{where} context is not JSON-serialisable ({error}): keep only str, int, float "
            "(finite), bool, None, lists and str-keyed dicts in a context; nothing was written"
        ) from error


def encode_segments(pair: tuple[Segment, Segment], where: str) -> list[Any]:
    """The values of :data:`~prefenv.store_file.SEGMENT_COLUMNS` for a pair of segments (the
    comparisons table and the human query queue store pairs alike); ``where`` names the pair in
    errors."""
    values: list[Any] = []
    for k, segment in enumerate(pair):
        values.extend(array_to_bytes(getattr(segment, name)) for name in ARRAYS)
        values.append(_context_to_json(segment.context, f"{where} segment{k}"))
    return values


def decode_segments(values: Mapping[str, Any]) -> tuple[Segment, Segment]:
    """The pair :func:`encode_segments` stored, from ``{column: value}`` of its columns."""
    left, right = (
        Segment(
            **{name: array_from_bytes(values[f"{name}{k}"]) for name in ARRAYS},
            context=None if values[f"context{k}"] is None else json.loads(values[f"context{k}"]),
        )
        for k in (0, 1)
    )
    return left, right


def encode_row(index: int, comparison: Comparison) -> tuple[Any, ...]:
    """The values of :data:`~prefenv.store_file.COLUMNS` for one comparison of a batch."""
    if not isinstance(comparison, Comparison):
        raise TypeError(
            f"comparison {index} of the batch is a {type(comparison).__name__}, not a Comparison"
        )
    pair = (comparison.segment0, comparison.segment1)
    return (comparison.label, comparison.teacher, float(comparison.created),
            *encode_segments(pair, f"comparison {index}"))  # fmt: skip
