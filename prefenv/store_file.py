"""The comparison store's file: its SQLite layout, its errors, and how a file is trusted.

Over 400 lines: the schema (both table sets and the upgrade from schema 1) and every check that
decides whether a file may be trusted belong together; the messages that explain each refusal take
the room.

:mod:`prefenv.store` reads and writes rows; this module decides whether a file on disk may be
opened as a store at all: the schema check (and creation), the store's identity, the ``-wal``
file rule, and the read-only damage check behind
:meth:`prefenv.store.ComparisonStore.open_existing`. Every error type here is re-exported by
:mod:`prefenv.store`.

SQLite in WAL mode keeps the newest committed rows in ``<name>-wal`` beside the file until a
checkpoint copies them in. So "the store" is the file plus, while open or after a crash, its
-wal: messages say so wherever a missing or stale -wal can explain what was found.

:func:`connect` and :func:`verify_readable` are the two entry points :mod:`prefenv.store` uses.
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from pathlib import Path

__all__ = [
    "SCHEMA",
    "StoreDamagedError",
    "StoreError",
    "StoreMismatchError",
    "StoreMissingError",
    "StoreSchemaError",
]

SCHEMA = "prefenv.comparisons/2"
"""Schema id written to (and required in) the ``meta`` table of every store. Version 2 adds the
human query queue (:data:`QUEUE_TABLES`); a version-1 store is upgraded in place when opened."""

_SCHEMA_VERSION = 2
_SCHEMA_V1 = "prefenv.comparisons/1"
_SCHEMA_PATTERN = re.compile(r"prefenv\.comparisons/(\d+)")
_SQLITE_MAGIC = b"SQLite format 3\x00"
BUSY_TIMEOUT_MS = 30_000
ARRAYS = ("obs", "acts", "true_rewards")
SEGMENT_COLUMNS = [f"{name}{k}" for k in (0, 1) for name in (*ARRAYS, "context")]
COLUMNS = ["label", "teacher", "created", *SEGMENT_COLUMNS]

_CREATE_TABLES = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE comparisons (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    label REAL,
    teacher TEXT NOT NULL,
    created REAL NOT NULL,
    {", ".join(f"{name}{k} BLOB NOT NULL" for k in (0, 1) for name in ARRAYS)},
    context0 TEXT,
    context1 TEXT
);
CREATE INDEX comparisons_teacher ON comparisons (teacher, id);
INSERT INTO meta (key, value) VALUES ('schema', '{SCHEMA}');
"""
ASSIGNMENTS_HELD = (
    "CREATE INDEX IF NOT EXISTS assignments_held ON assignments (annotator, assigned)"
)
"""An annotator's held assignments, newest lease first: ``QueryQueue.next_for`` looks these up on
every hand-out (without it, 30 ms per call with 6,000 open queries instead of ~1 ms)."""
QUEUE_TABLES = f"""
CREATE TABLE queries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    public_id TEXT NOT NULL UNIQUE,
    run TEXT NOT NULL,
    round INTEGER NOT NULL,
    posted REAL NOT NULL,
    closed REAL,
    overlap INTEGER NOT NULL,
    n_labels INTEGER NOT NULL DEFAULT 0,
    gold REAL,
    media TEXT,
    {", ".join(f"{name}{k} BLOB NOT NULL" for k in (0, 1) for name in ARRAYS)},
    context0 TEXT,
    context1 TEXT
);
CREATE INDEX queries_open ON queries (closed, gold, id);
CREATE TABLE assignments (
    query_id INTEGER NOT NULL REFERENCES queries (id),
    annotator TEXT NOT NULL,
    assigned REAL NOT NULL,
    PRIMARY KEY (query_id, annotator)
);
{ASSIGNMENTS_HELD};
CREATE TABLE labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    query_id INTEGER NOT NULL REFERENCES queries (id),
    annotator TEXT NOT NULL,
    choice TEXT NOT NULL,
    created REAL NOT NULL,
    response_seconds REAL,
    comparison_id INTEGER,
    UNIQUE (query_id, annotator)
);
CREATE INDEX labels_unharvested ON labels (comparison_id, id);
CREATE TABLE annotators (
    name TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    created REAL NOT NULL
);
"""
"""The human query queue (schema 2): queries posted for people, who was assigned each, the
labels they gave and the annotators' hashed access tokens (see :mod:`prefenv.queue`)."""
_ADD_IDENTITY = "INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', ?)"
_SCAN = f"SELECT {', '.join(SEGMENT_COLUMNS)} FROM comparisons ORDER BY id"


class StoreError(ValueError):
    """A comparison store cannot be used as asked; the message says what was found and the fix.

    A ``ValueError``, so the command line reports it in one line.

    Attributes:
        readable_rows: comparisons that could be read back from the file (0 for a missing or
            empty store), or ``None`` when SQLite could not count them.
        recorded_rows: comparisons the store itself says it once held (the last row id it
            handed out), or ``None`` when that could not be read.
    """

    def __init__(
        self, message: str, *, readable_rows: int | None = None, recorded_rows: int | None = None
    ) -> None:
        super().__init__(message)
        self.readable_rows = readable_rows
        self.recorded_rows = recorded_rows


class StoreSchemaError(StoreError):
    """The file is not a comparison store this version of prefenv can read."""


class StoreDamagedError(StoreSchemaError):
    """The file is (or was) a comparison store, but SQLite cannot read all of it.

    Raised for a file cut short or overwritten, and for a ``-wal`` file whose main file is gone.
    """


class StoreMissingError(StoreError, FileNotFoundError):
    """``ComparisonStore.open_existing`` found no store: no file, 0 bytes, or no tables."""


class StoreMismatchError(StoreError):
    """The store opens but is not the one expected: another identity, or fewer rows."""


def connect(path: Path, *, any_thread: bool = False) -> tuple[sqlite3.Connection, str]:
    """Open (creating it if missing) the store at ``path``: the connection and its identity.

    ``any_thread`` lets other threads use the connection (the caller then serialises access).

    Raises:
        StoreSchemaError: not a store of this schema (:class:`StoreDamagedError`: unreadable);
            the file is left untouched.
    """
    check_store_files(path)
    problem = _not_sqlite(path)
    if problem is not None:
        raise StoreSchemaError(
            f"{path} is not a prefenv comparison store ({problem}): pass a new path, or move "
            "that file away"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(
            path,
            isolation_level=None,
            timeout=BUSY_TIMEOUT_MS / 1000,
            check_same_thread=not any_thread,
        )
    except sqlite3.Error as error:
        raise OSError(f"cannot open comparison store {path}: {error}") from error
    try:
        return conn, _open_schema(conn, path)
    except BaseException:
        conn.close()
        raise


def check_store_files(path: Path) -> None:
    """Refuse a folder, and a -wal file whose main file is missing or empty, before SQLite runs.

    SQLite opening a missing or 0-byte store deletes a -wal file lying beside it, and with it
    the rows it holds, so this check comes before any connection.
    """
    if path.is_dir():
        raise IsADirectoryError(f"comparison store path {path} is a folder: pass a file path")
    wal = path.with_name(f"{path.name}-wal")
    if not wal.is_file() or wal.stat().st_size == 0:
        return
    if path.is_file() and path.stat().st_size > 0:
        return
    what = "is missing" if not path.exists() else "is empty (0 bytes)"
    raise StoreDamagedError(
        f"comparison store {path} {what}, but {wal.name} ({wal.stat().st_size} bytes) is still "
        f"there: it holds the store's newest rows, which SQLite cannot read without the main file "
        f"and would delete on open; nothing was touched. Restore {path.name} and {wal.name} "
        f"together from one backup, or move {wal.name} away to start a new store"
    )


def _not_sqlite(path: Path) -> str | None:
    """What is wrong with a non-empty file that is not SQLite, or None (SQLite, empty, absent).

    SQLite itself answers first: a plain ``open()`` + ``close()`` of a store this process
    already has open would drop the process's POSIX locks on it, and another process could then
    checkpoint and delete the ``-wal`` under this process's connections (their later commits
    would be lost). Only a file SQLite calls "not a database" is read directly, for the message.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        conn = _connect_read_only(path)
        try:
            conn.execute("PRAGMA schema_version").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as error:
        if "not a database" not in str(error):
            return None  # damage and locks are judged by the checks that follow
        with path.open("rb") as file:  # not SQLite: no SQLite lock of this process is on it
            head = file.read(len(_SQLITE_MAGIC))
        if head != _SQLITE_MAGIC:  # an SQLite header over garbage is a damaged store instead
            return f"found a non-SQLite file starting with {head[:8]!r}"
    return None


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot change the file (it may add an empty -wal and a -shm beside it)."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000)


def verify_readable(path: Path, expected: int) -> None:
    """Raise unless ``path`` holds an SQLite database whose comparisons can all be read back.

    Reads through a read-only connection, so a damaged file (and its -wal) is left as found. A
    database without a ``comparisons`` table but with other tables passes: the schema check of
    :func:`connect` names what it is.

    Args:
        path: the store file.
        expected: comparisons the caller expects (0: no expectation), named in the messages.

    Raises:
        StoreMissingError: no file, 0 bytes, or an SQLite database without tables.
        StoreDamagedError: not SQLite, unreadable, or a -wal file without its main file.
    """
    check_store_files(path)
    name = path.name
    if not path.exists() or path.stat().st_size == 0:
        what = "is missing" if not path.exists() else "is empty (0 bytes)"
        raise StoreMissingError(
            f"comparison store {path} {what}{_expected(expected)}: restore {name} (and "
            f"{name}-wal, if the backup has one) from a backup",
            readable_rows=0,
        )
    problem = _not_sqlite(path)
    if problem is None:
        try:
            conn = _connect_read_only(path)
        except sqlite3.Error as error:
            raise OSError(f"cannot open comparison store {path}: {error}") from error
        try:
            problem = _read_problem(conn, path, expected)
        finally:
            conn.close()
    if problem is not None:
        raise _damaged(path, problem, expected)


def _read_problem(conn: sqlite3.Connection, path: Path, expected: int) -> str | None:
    """Run quick_check and read every comparison; the first problem found, or None."""
    try:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        if not tables:
            raise StoreMissingError(
                f"comparison store {path} is an empty SQLite database{_expected(expected)}: a new "
                f"store's tables and rows sit in {path.name}-wal until checkpointed, so that file "
                f"was probably deleted or not copied along. Restore {path.name} and "
                f"{path.name}-wal together from one backup",
                readable_rows=0,
            )
        if "comparisons" not in tables:
            return None
        report = [
            line for (text,) in conn.execute("PRAGMA quick_check") for line in text.split("\n")
        ]
        problems = [line for line in report if line != "ok" and not line.startswith("***")]
        if problems:
            more = f" and {len(problems) - 1} more problems" if len(problems) > 1 else ""
            return f"SQLite's quick_check: {problems[0]}{more}"
        counted = int(conn.execute("SELECT COUNT(*) FROM comparisons").fetchone()[0])
        scanned = sum(1 for _ in conn.execute(_SCAN))
    except sqlite3.OperationalError as error:  # locked, unreadable: not a verdict on the file
        raise OSError(f"cannot read comparison store {path}: {error}") from error
    except sqlite3.DatabaseError as error:
        return f"SQLite: {error}"
    if scanned != counted:
        return f"its index counts {counted} comparisons but {scanned} rows can be read"
    return None


def _expected(expected: int) -> str:
    return f"; {expected} comparisons were expected" if expected else ""


def _damaged(path: Path, problem: str, expected: int) -> StoreDamagedError:
    """The error for an unreadable store, with the comparisons that can still be read."""
    readable, recorded = _salvage_counts(path)
    if readable is None:
        rows = "SQLite cannot reach its comparisons table to count what is readable"
    elif readable == 0:
        rows = "no comparison can be read back"
    else:
        rows = f"the first {readable} comparisons can be read back"
    if recorded is not None:
        rows += f", of the {recorded} it recorded"
    return StoreDamagedError(
        f"comparison store {path} is damaged ({problem}); {rows}{_expected(expected)}. A store "
        f"is {path.name} plus, while open or after a crash, {path.name}-wal: restore both "
        "together from one backup (copied while nothing was writing), or pass a new path to "
        "start over",
        readable_rows=readable,
        recorded_rows=recorded,
    )


def _salvage_counts(path: Path) -> tuple[int | None, int | None]:
    """Comparisons readable in id order up to the damage, and the last id ever handed out.

    ``writable_schema`` makes SQLite read a file shorter than its header says instead of
    refusing it (the connection is read-only, so nothing is written). Either count is None
    when SQLite cannot reach the table that holds it.
    """
    try:
        conn = _connect_read_only(path)
    except sqlite3.Error:
        return None, None
    try:
        conn.execute("PRAGMA writable_schema = ON")
        recorded = _first_int(conn, "SELECT seq FROM sqlite_sequence WHERE name = 'comparisons'")
        if not _first_int(conn, "SELECT COUNT(*) FROM sqlite_master WHERE name = 'comparisons'"):
            return None, recorded
        rows = 0
        try:
            for _ in conn.execute(_SCAN):
                rows += 1
        except sqlite3.DatabaseError:
            pass  # the rows before the damage were counted
        return rows, recorded
    except sqlite3.Error:
        return None, None
    finally:
        conn.close()


def _first_int(conn: sqlite3.Connection, sql: str) -> int | None:
    """The query's first value as an int; None when there is no row or SQLite cannot answer."""
    try:
        row = conn.execute(sql).fetchone()
    except sqlite3.Error:
        return None
    return None if row is None else int(row[0])


def _open_schema(conn: sqlite3.Connection, path: Path) -> str:
    """Check (or, for an empty database, create) the schema and set the durability pragmas.

    Returns:
        The store's identity, added in its own transaction to a store that has none.
    """
    try:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.OperationalError as error:
        raise OSError(f"cannot read comparison store {path}: {error}") from error
    except sqlite3.DatabaseError as error:
        raise _damaged(path, f"SQLite: {error}", 0) from error
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if tables:
        _check_schema(conn, path, tables)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    if not tables:
        _create_schema(conn, path)
    elif "queries" not in tables:
        _upgrade_v1(conn)
    elif not conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'assignments_held'"
    ).fetchone():
        conn.execute(ASSIGNMENTS_HELD)  # a store written before the index existed
    return _identity(conn)


def _create_schema(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
            conn.execute("ROLLBACK")  # another process created it first: check theirs
            _check_schema(conn, path, {"meta", "comparisons"})
            return
        _execute_all(conn, _CREATE_TABLES + ";" + QUEUE_TABLES)
        conn.execute(_ADD_IDENTITY, (uuid.uuid4().hex,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _execute_all(conn: sqlite3.Connection, script: str) -> None:
    # One statement at a time: executescript() would commit on its own.
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _upgrade_v1(conn: sqlite3.Connection) -> None:
    """Add the query queue to a schema-1 store, in one transaction (its comparisons untouched)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if found is not None and found[0] == _SCHEMA_V1:  # another process may have upgraded it
            _execute_all(conn, QUEUE_TABLES)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (SCHEMA,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _identity(conn: sqlite3.Connection) -> str:
    """The store's ``store_id``; a store from an older prefenv gets one now."""
    select = "SELECT value FROM meta WHERE key = 'store_id'"
    row = conn.execute(select).fetchone()
    if row is None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_ADD_IDENTITY, (uuid.uuid4().hex,))  # ignored if another process won
            row = conn.execute(select).fetchone()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return str(row[0])


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
    if found in (SCHEMA, _SCHEMA_V1):
        if "comparisons" not in tables:
            raise StoreSchemaError(
                f"{path} says schema {found} but has no comparisons table: the file was damaged "
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
