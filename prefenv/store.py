"""Durable, append-only comparison store on embedded SQLite, plus JSONL interop.

:class:`ComparisonStore` keeps every :class:`~prefenv.records.Comparison` a teacher (synthetic or
human) produced in one SQLite file. Each :meth:`ComparisonStore.append` is one transaction
committed with ``journal_mode=WAL`` and ``synchronous=FULL``, so a batch that ``append``
returned from survives the process being killed, and other processes may read the file (or
append to it) at the same time.

Layout of schema ``prefenv.comparisons/1``:

* ``meta(key TEXT PRIMARY KEY, value TEXT)`` with ``schema = "prefenv.comparisons/1"``.
* ``comparisons``: one row per comparison with an ``INTEGER PRIMARY KEY AUTOINCREMENT`` ``id``,
  ``label REAL`` (``NULL`` when the teacher skipped), ``teacher TEXT``, ``created REAL`` and, for
  each segment ``k`` in ``{0, 1}``, ``obs{k}`` / ``acts{k}`` / ``true_rewards{k}`` as ``.npy``
  bytes (dtype and shape in the header, lossless) and ``context{k}`` as JSON text (``NULL`` for
  no context).

:func:`export_jsonl` / :func:`import_jsonl` (in :mod:`prefenv.jsonl`, re-exported here) move
comparisons in and out in the Hugging Face prompt/chosen/rejected JSONL convention.
"""

from __future__ import annotations

import io
import json
import os
import re
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prefenv.jsonl import export_jsonl, import_jsonl
from prefenv.records import Comparison, Segment

__all__ = ["SCHEMA", "ComparisonStore", "StoreSchemaError", "export_jsonl", "import_jsonl"]

SCHEMA = "prefenv.comparisons/1"
"""Schema id written to (and required in) the ``meta`` table of every store."""

_SCHEMA_VERSION = 1
_SCHEMA_PATTERN = re.compile(r"prefenv\.comparisons/(\d+)")
_SQLITE_MAGIC = b"SQLite format 3\x00"
_BUSY_TIMEOUT_MS = 30_000
_ARRAYS = ("obs", "acts", "true_rewards")
_SEGMENT_COLUMNS = [f"{name}{k}" for k in (0, 1) for name in (*_ARRAYS, "context")]
_COLUMNS = ["label", "teacher", "created", *_SEGMENT_COLUMNS]

_CREATE_TABLES = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE comparisons (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    label REAL,
    teacher TEXT NOT NULL,
    created REAL NOT NULL,
    {", ".join(f"{name}{k} BLOB NOT NULL" for k in (0, 1) for name in _ARRAYS)},
    context0 TEXT,
    context1 TEXT
);
CREATE INDEX comparisons_teacher ON comparisons (teacher, id);
INSERT INTO meta (key, value) VALUES ('schema', '{SCHEMA}');
"""


class StoreSchemaError(ValueError):
    """The file is not a comparison store this version of prefenv can read."""


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
            must be a prefenv store of schema :data:`SCHEMA` or an empty SQLite database.

    Raises:
        StoreSchemaError: ``path`` holds something else (another SQLite database, another
            schema version, or not SQLite at all); the file is left untouched.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise IsADirectoryError(
                f"comparison store path {self.path} is a folder: pass a file path"
            )
        _check_sqlite_header(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=_BUSY_TIMEOUT_MS / 1000)
        except sqlite3.Error as error:
            raise OSError(f"cannot open comparison store {self.path}: {error}") from error
        try:
            _open_schema(conn, self.path)
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the file; further calls on this object raise. Closing twice is fine."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

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
        rows = [_encode_row(index, comparison) for index, comparison in enumerate(comparisons)]
        if not rows:
            return []
        db = self._db
        sql = f"INSERT INTO comparisons ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
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
            f"SELECT id, {', '.join(_COLUMNS)} FROM comparisons WHERE {' AND '.join(clauses)} "
            "ORDER BY id LIMIT ?"
        )
        return [(int(row[0]), self._decode_row(row)) for row in self._db.execute(sql, params)]

    def _decode_row(self, row: tuple[Any, ...]) -> Comparison:
        row_id, label, teacher, created, *segment_values = row
        values = dict(zip(_SEGMENT_COLUMNS, segment_values, strict=True))
        try:
            segments = [
                Segment(
                    **{name: _array_from_bytes(values[f"{name}{k}"]) for name in _ARRAYS},
                    context=None
                    if values[f"context{k}"] is None
                    else json.loads(values[f"context{k}"]),
                )
                for k in (0, 1)
            ]
            return Comparison(segments[0], segments[1], label, teacher=teacher, created=created)
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"comparison store {self.path}: row {row_id} cannot be decoded ({error}); "
                "the file was modified outside prefenv"
            ) from error


# -- opening and schema checks ---------------------------------------------------------------


def _check_sqlite_header(path: Path) -> None:
    """Reject a non-empty file that is not SQLite before SQLite touches it."""
    if not path.exists():
        return
    with path.open("rb") as file:
        head = file.read(len(_SQLITE_MAGIC))
    if head and head != _SQLITE_MAGIC:
        raise StoreSchemaError(
            f"{path} is not a prefenv comparison store (found a non-SQLite file starting with "
            f"{head[:8]!r}): pass a new path, or move that file away"
        )


def _open_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Check (or, for an empty database, create) the schema, then set the durability pragmas."""
    try:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as error:
        raise StoreSchemaError(
            f"{path} is not a prefenv comparison store (SQLite cannot read it: {error}): pass a "
            "new path, or move that file away"
        ) from error
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    if tables:
        _check_schema(conn, path, tables)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    if not tables:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
                conn.execute("ROLLBACK")  # another process created it first: check theirs
                _check_schema(conn, path, {"meta", "comparisons"})
                return
            # One statement at a time: executescript() would commit on its own.
            for statement in _CREATE_TABLES.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def _check_schema(conn: sqlite3.Connection, path: Path, tables: set[str]) -> None:
    found = None
    if "meta" in tables:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.DatabaseError:
            row = None
        found = None if row is None else str(row[0])
    if found is None:
        listed = ", ".join(sorted(tables))
        raise StoreSchemaError(
            f"{path} is not a prefenv comparison store (an SQLite database with tables "
            f"{listed} and no prefenv schema): pass a new path"
        )
    if found == SCHEMA:
        if "comparisons" not in tables:
            raise StoreSchemaError(
                f"{path} says schema {SCHEMA} but has no comparisons table: the file was damaged "
                "outside prefenv; pass a new path"
            )
        return
    match = _SCHEMA_PATTERN.fullmatch(found)
    if match and int(match.group(1)) > _SCHEMA_VERSION:
        raise StoreSchemaError(
            f"{path} was written by schema {found}, newer than this prefenv ({SCHEMA}): upgrade "
            "prefenv to read it"
        )
    raise StoreSchemaError(
        f"{path} has unknown schema {found!r}, this prefenv reads {SCHEMA}: export it to JSONL "
        "with the prefenv that wrote it, or pass a new path"
    )


# -- row encoding ----------------------------------------------------------------------------


def _array_to_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _array_from_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


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


def _encode_row(index: int, comparison: Comparison) -> tuple[Any, ...]:
    if not isinstance(comparison, Comparison):
        raise TypeError(
            f"comparison {index} of the batch is a {type(comparison).__name__}, not a Comparison"
        )
    values: list[Any] = [comparison.label, comparison.teacher, float(comparison.created)]
    for k, segment in enumerate((comparison.segment0, comparison.segment1)):
        values.extend(_array_to_bytes(getattr(segment, name)) for name in _ARRAYS)
        values.append(_context_to_json(segment.context, f"comparison {index} segment{k}"))
    return tuple(values)
