"""Tests for how a comparison store file is trusted: identity, open_existing, damage, the -wal.

Stores here hold a few hundred comparisons of real arrays (about 1 MB, hundreds of SQLite pages),
so cutting a file short loses rows rather than only its header. A "crash image" is a copy of an
open store's files, as a killed process leaves them: the newest rows sit in ``<name>-wal``.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from prefenv.records import Comparison, Segment
from prefenv.store import (
    ComparisonStore,
    StoreDamagedError,
    StoreMismatchError,
    StoreMissingError,
    StoreSchemaError,
)

ROWS = 300


def make_rows(n: int, seed: int = 0) -> list[Comparison]:
    """Control-like comparisons: 25-step segments of 11-dim observations and 3-dim actions."""
    rng = np.random.default_rng(seed)

    def segment() -> Segment:
        return Segment(rng.normal(size=(26, 11)), rng.normal(size=(25, 3)), rng.normal(size=25))

    return [Comparison(segment(), segment(), float(i % 2), teacher="oracle") for i in range(n)]


def wal_of(path: Path) -> Path:
    return path.with_name(f"{path.name}-wal")


@pytest.fixture
def closed_store(tmp_path: Path) -> Path:
    """A closed store of ROWS comparisons, appended in several batches."""
    path = tmp_path / "run" / "comparisons.sqlite"
    with ComparisonStore(path) as store:
        for batch in range(6):
            store.append(make_rows(ROWS // 6, seed=batch))
    return path


def crash_image(store: ComparisonStore, folder: Path, with_wal: bool = True) -> Path:
    """Copy an open store's file (and its -wal) as a killed process would leave them."""
    wal = wal_of(store.path)
    assert wal.stat().st_size > 0, "the test needs rows that live only in the -wal file"
    folder.mkdir()
    copy = folder / store.path.name
    shutil.copyfile(store.path, copy)
    if with_wal:
        shutil.copyfile(wal, wal_of(copy))
    return copy


# -- identity --------------------------------------------------------------------------------


def test_identity_is_created_and_kept_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "comparisons.sqlite"
    with ComparisonStore(path) as store:
        identity = store.identity
    assert re.fullmatch(r"[0-9a-f]{32}", identity)
    with ComparisonStore(path) as store:
        assert store.identity == identity
    with ComparisonStore.open_existing(path, identity=identity) as store:
        assert store.identity == identity
    with sqlite3.connect(path) as conn:
        stored = conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
    assert stored == (identity,)
    with ComparisonStore(tmp_path / "other.sqlite") as other:
        assert other.identity != identity


def test_store_from_an_older_prefenv_gets_an_identity(tmp_path: Path) -> None:
    path = tmp_path / "comparisons.sqlite"
    with ComparisonStore(path) as store:
        store.append(make_rows(3))
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM meta WHERE key = 'store_id'")
    conn.close()
    with ComparisonStore(path) as store:
        identity = store.identity
        assert re.fullmatch(r"[0-9a-f]{32}", identity)
        assert len(store) == 3
    with ComparisonStore.open_existing(path, min_rows=3) as store:
        assert store.identity == identity


# -- open_existing on healthy and mismatched stores ------------------------------------------


def test_open_existing_opens_and_counts_a_healthy_store(closed_store: Path) -> None:
    with ComparisonStore(closed_store) as store:
        identity = store.identity
    with ComparisonStore.open_existing(closed_store, min_rows=ROWS, identity=identity) as store:
        assert store.count() == ROWS
        assert store.load(limit=1)[0].segment0.obs.shape == (26, 11)
        store.append(make_rows(2, seed=9))
        assert len(store) == ROWS + 2


def test_open_existing_refuses_another_store_or_fewer_rows(closed_store: Path) -> None:
    with pytest.raises(StoreMismatchError, match=r"has identity [0-9a-f]{32}, not the expected "):
        ComparisonStore.open_existing(closed_store, identity="0" * 32)
    with pytest.raises(StoreMismatchError) as caught:
        ComparisonStore.open_existing(closed_store, min_rows=ROWS + 5)
    message = str(caught.value)
    assert f"holds {ROWS} comparisons, fewer than the {ROWS + 5} expected" in message
    assert "comparisons.sqlite-wal" in message
    assert caught.value.readable_rows == ROWS
    with pytest.raises(ValueError, match="min_rows must be >= 0"):
        ComparisonStore.open_existing(closed_store, min_rows=-1)


# -- open_existing on missing and damaged files ----------------------------------------------


@pytest.mark.parametrize(("make", "found"), [("missing", "is missing"), ("empty", "0 bytes")])
def test_open_existing_never_creates_a_store(tmp_path: Path, make: str, found: str) -> None:
    path = tmp_path / "comparisons.sqlite"
    if make == "empty":
        path.touch()
    with pytest.raises(StoreMissingError) as caught:
        ComparisonStore.open_existing(path, min_rows=235)
    message = str(caught.value)
    assert str(path) in message and found in message
    assert "; 235 comparisons were expected" in message
    assert "restore comparisons.sqlite" in message
    assert caught.value.readable_rows == 0
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, FileNotFoundError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if make == "missing" else [path.name])
    assert path.exists() == (make == "empty") and (make == "missing" or path.stat().st_size == 0)


@pytest.mark.parametrize("cut", ["half", "one page"])
def test_store_cut_short_is_refused_with_the_rows_left(closed_store: Path, cut: str) -> None:
    size = closed_store.stat().st_size
    assert size > 200 * 4096  # many pages, so the cut loses rows
    with closed_store.open("r+b") as file:
        file.truncate(size // 2 if cut == "half" else size - 4096)
    before = closed_store.read_bytes()
    with pytest.raises(StoreDamagedError) as caught:
        ComparisonStore.open_existing(closed_store, min_rows=ROWS)
    error = caught.value
    message = str(error)
    assert f"comparison store {closed_store} is damaged" in message
    assert f"comparisons can be read back, of the {ROWS} it recorded" in message
    assert f"; {ROWS} comparisons were expected" in message
    assert "comparisons.sqlite-wal" in message and "from one backup" in message
    assert error.recorded_rows == ROWS
    assert error.readable_rows is not None and 0 < error.readable_rows < ROWS
    assert f"the first {error.readable_rows} comparisons" in message
    with pytest.raises(StoreDamagedError, match="is damaged"):  # the plain constructor too
        ComparisonStore(closed_store)
    assert closed_store.read_bytes() == before


def test_page_zeroed_mid_file_is_found_by_reading_every_row(closed_store: Path) -> None:
    page = closed_store.stat().st_size // 2 // 4096
    with closed_store.open("r+b") as file:
        file.seek(page * 4096)
        file.write(bytes(4096))
    with ComparisonStore(closed_store) as store:  # the plain constructor reads no rows
        assert store.identity
    with pytest.raises(StoreDamagedError, match="is damaged") as caught:
        ComparisonStore.open_existing(closed_store)
    assert caught.value.readable_rows is not None and caught.value.readable_rows < ROWS
    assert caught.value.recorded_rows == ROWS


def test_open_existing_refuses_a_file_that_is_not_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "comparisons.sqlite"
    path.write_bytes(b"not a database\n" * 100)
    with pytest.raises(StoreDamagedError, match=r"is damaged \(found a non-SQLite file") as caught:
        ComparisonStore.open_existing(path)
    assert caught.value.readable_rows is None
    assert "cannot reach its comparisons table" in str(caught.value)


def test_open_existing_refuses_a_foreign_database_by_its_schema(tmp_path: Path) -> None:
    path = tmp_path / "comparisons.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    conn.close()
    with pytest.raises(StoreSchemaError, match="tables users and no prefenv schema"):
        ComparisonStore.open_existing(path)


# -- the -wal file ---------------------------------------------------------------------------


def test_close_checkpoints_the_wal_into_one_file(closed_store: Path, tmp_path: Path) -> None:
    alone = tmp_path / "alone" / "comparisons.sqlite"
    alone.parent.mkdir()
    # Another idle connection keeps the file open, so SQLite's own last-close checkpoint does
    # not run: only close()'s explicit one moves the rows out of the -wal.
    with ComparisonStore(closed_store):
        with ComparisonStore(closed_store) as store:
            store.append(make_rows(20, seed=7))
            assert wal_of(closed_store).stat().st_size > 0  # the new rows sit in the -wal
        assert wal_of(closed_store).stat().st_size == 0
        shutil.copyfile(closed_store, alone)  # the main file only
    with ComparisonStore.open_existing(alone, min_rows=ROWS + 20) as store:
        assert len(store) == ROWS + 20


def test_crash_image_with_its_wal_opens_whole(closed_store: Path, tmp_path: Path) -> None:
    with ComparisonStore(closed_store) as store:
        store.append(make_rows(20, seed=7))
        copy = crash_image(store, tmp_path / "crash")
    with ComparisonStore.open_existing(copy, min_rows=ROWS + 20) as restored:
        assert len(restored) == ROWS + 20


def test_deleted_wal_leaves_the_store_behind(closed_store: Path, tmp_path: Path) -> None:
    with ComparisonStore(closed_store) as store:
        store.append(make_rows(20, seed=7))
        copy = crash_image(store, tmp_path / "crash", with_wal=False)
    with pytest.raises(StoreMismatchError) as caught:
        ComparisonStore.open_existing(copy, min_rows=ROWS + 20)
    assert caught.value.readable_rows == ROWS
    message = str(caught.value)
    assert f"holds {ROWS} comparisons, fewer than the {ROWS + 20} expected" in message
    assert "a deleted comparisons.sqlite-wal" in message


def test_deleted_wal_of_a_new_store_leaves_an_empty_database(tmp_path: Path) -> None:
    with ComparisonStore(tmp_path / "comparisons.sqlite") as store:
        store.append(make_rows(30))  # a new store: its tables and rows are all in the -wal
        copy = crash_image(store, tmp_path / "crash", with_wal=False)
    with pytest.raises(StoreMissingError, match="is an empty SQLite database") as caught:
        ComparisonStore.open_existing(copy, min_rows=30)
    assert "deleted or not copied along" in str(caught.value)
    assert "comparisons.sqlite-wal" in str(caught.value)


@pytest.mark.parametrize("main", ["missing", "0 bytes"])
def test_wal_without_its_main_file_is_never_discarded(tmp_path: Path, main: str) -> None:
    with ComparisonStore(tmp_path / "comparisons.sqlite") as store:
        store.append(make_rows(30))
        copy = crash_image(store, tmp_path / "crash")
    if main == "missing":
        copy.unlink()
    else:
        copy.write_bytes(b"")
    wal_bytes = wal_of(copy).read_bytes()
    for opener in (ComparisonStore.open_existing, ComparisonStore):
        with pytest.raises(StoreDamagedError) as caught:
            opener(copy)
        message = str(caught.value)
        assert "comparisons.sqlite-wal" in message and "would delete on open" in message
        assert "is missing" in message if main == "missing" else "is empty (0 bytes)" in message
    assert wal_of(copy).read_bytes() == wal_bytes  # SQLite never saw it
    assert copy.exists() == (main == "0 bytes")


def test_main_file_cut_short_beside_its_wal(closed_store: Path, tmp_path: Path) -> None:
    with ComparisonStore(closed_store) as store:
        store.append(make_rows(20, seed=7))
        copy = crash_image(store, tmp_path / "crash")
    with copy.open("r+b") as file:
        file.truncate(copy.stat().st_size // 2)
    wal_bytes = wal_of(copy).read_bytes()
    with pytest.raises(StoreDamagedError) as caught:
        ComparisonStore.open_existing(copy, min_rows=ROWS + 20)
    message = str(caught.value)
    assert "is damaged" in message and "comparisons.sqlite-wal" in message
    assert caught.value.recorded_rows == ROWS + 20
    assert wal_of(copy).read_bytes() == wal_bytes  # the check reads, it does not checkpoint
