"""Tests for the SQLite comparison store and its JSONL interop."""

from __future__ import annotations

import io
import json
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from prefenv.records import Comparison, Segment
from prefenv.store import SCHEMA, ComparisonStore, StoreSchemaError, export_jsonl, import_jsonl


def make_segment(rng: np.random.Generator, steps: int, obs_dim: int, act_dim: int, **context):
    return Segment(
        obs=rng.normal(size=(steps + 1, obs_dim)),
        acts=rng.uniform(-1, 1, size=(steps, act_dim)),
        true_rewards=rng.normal(size=steps),
        context=context or None,
    )


def make_comparisons(n: int, seed: int = 0) -> list[Comparison]:
    """Mixed comparisons: all labels, two teachers, text and no context, varying lengths."""
    rng = np.random.default_rng(seed)
    labels = [0.0, 1.0, 0.5, None]
    comparisons = []
    for i in range(n):
        steps = 1 + i % 4
        context = {"prompt": f"p{i}", "completion": f"c{i}a", "meta": {"ids": [i, 2], "ok": True}}
        other = {"prompt": f"p{i}", "completion": f"c{i}b ünïcode"}
        comparisons.append(
            Comparison(
                make_segment(rng, steps, 3, 2, **(context if i % 2 else {})),
                make_segment(rng, steps + 1, 3, 2, **other),
                labels[i % 4],
                teacher="oracle" if i % 3 else "human:alice",
                created=1_700_000_000.123456 + i,
            )
        )
    return comparisons


def assert_same_segment(actual: Segment, expected: Segment) -> None:
    for name in ("obs", "acts", "true_rewards"):
        got, want = getattr(actual, name), getattr(expected, name)
        assert got.dtype == np.float32
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    assert actual.context == expected.context


def assert_same(actual: list[Comparison], expected: list[Comparison]) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert_same_segment(got.segment0, want.segment0)
        assert_same_segment(got.segment1, want.segment1)
        assert got.label == want.label
        assert got.teacher == want.teacher
        assert got.created == want.created


def test_round_trip_through_store_and_reopen(tmp_path: Path) -> None:
    comparisons = make_comparisons(12)
    path = tmp_path / "nested" / "dir" / "store.sqlite"
    with ComparisonStore(path) as store:
        ids = store.append(comparisons[:5])
        ids += store.append(comparisons[5:])
        assert ids == sorted(ids) and len(set(ids)) == 12
        assert len(store) == 12
        assert store.count(labelled_only=True) == 9
        assert_same(store.load(labelled_only=False), comparisons)
    with ComparisonStore(path) as store:
        assert_same(store.load(labelled_only=False), comparisons)
        more = make_comparisons(4, seed=1)
        new_ids = store.append(more)
        assert min(new_ids) > max(ids)
        assert_same(store.load(labelled_only=False), comparisons + more)
        assert store.append([]) == []
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == SCHEMA


def test_filters(tmp_path: Path) -> None:
    comparisons = make_comparisons(12)
    with ComparisonStore(tmp_path / "s.db") as store:
        ids = store.append(comparisons)
        labelled = [c for c in comparisons if c.label is not None]
        assert_same(store.load(), labelled)
        oracle = [c for c in comparisons if c.teacher == "oracle"]
        assert_same(store.load(labelled_only=False, teacher="oracle"), oracle)
        assert_same(store.load(teacher="nobody"), [])
        assert_same(store.load(labelled_only=False, since_id=ids[6]), comparisons[7:])
        assert_same(store.load(labelled_only=False, since_id=ids[2], limit=3), comparisons[3:6])
        assert_same(store.load(limit=0), [])
        with_ids = store.load_with_ids(labelled_only=False, since_id=ids[9])
        assert [row_id for row_id, _ in with_ids] == ids[10:]
        assert store.teachers() == {"human:alice": 4, "oracle": 8}
        with pytest.raises(ValueError, match="limit"):
            store.load(limit=-1)
    store.close()  # closing twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        len(store)


def test_append_is_all_or_nothing(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "s.db"
    with ComparisonStore(path) as store:
        store.append(make_comparisons(3))
        good = make_comparisons(2, seed=5)
        bad = Comparison(
            make_segment(rng, 2, 3, 2, prompt="x", handle=object()),
            make_segment(rng, 2, 3, 2),
            1.0,
        )
        with pytest.raises(ValueError, match=r"comparison 2 segment0 context is not JSON"):
            store.append([*good, bad])
        nan_context = Comparison(
            make_segment(rng, 1, 3, 2, score=float("nan")), good[0].segment1, 0
        )
        with pytest.raises(ValueError, match="not JSON-serialisable"):
            store.append([good[0], nan_context])
        with pytest.raises(TypeError, match="not a Comparison"):
            store.append([good[0], "not a comparison"])  # type: ignore[list-item]
        assert len(store) == 3
    with ComparisonStore(path) as store:
        assert len(store) == 3


CHILD = """
import sys
import numpy as np
from prefenv.records import Comparison, Segment
from prefenv.store import ComparisonStore

rng = np.random.default_rng(0)
store = ComparisonStore(sys.argv[1])
total = 0
while True:
    batch = []
    for _ in range(5):
        seg = [Segment(rng.normal(size=(9, 4)), rng.normal(size=(8, 2)), rng.normal(size=8),
                       {"i": total}) for _ in range(2)]
        batch.append(Comparison(seg[0], seg[1], float(rng.integers(2)), teacher="child"))
    store.append(batch)
    total += len(batch)
    print(total, flush=True)
"""


def test_committed_appends_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "killed.sqlite"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(60.0, child.kill)
    watchdog.start()
    try:
        reported = []
        while len(reported) < 20:
            line = child.stdout.readline()
            if not line:
                pytest.fail(f"child exited early: {child.stderr.read()}")
            reported.append(int(line))
        # Read while the child is still writing (WAL: readers do not block the writer).
        with ComparisonStore(path) as reader:
            assert reader.count() >= reported[-1]
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL
        # Commits printed after we stopped reading are durable too.
        reported += [int(line) for line in child.stdout.read().split()]
    finally:
        watchdog.cancel()
        child.kill()
        child.stdout.close()
        child.stderr.close()
    with ComparisonStore(path) as store:
        count = len(store)
        assert count >= reported[-1]
        assert count % 5 == 0  # whole batches only
        rows = store.load_with_ids(labelled_only=False)
        assert len(rows) == count
        assert all(c.segment0.obs.shape == (9, 4) and c.teacher == "child" for _, c in rows)
        new_ids = store.append(make_comparisons(3))
        assert min(new_ids) > rows[-1][0]
        assert len(store) == count + 3


def _set_schema(path: Path, value: str) -> None:
    with ComparisonStore(path):
        pass
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (value,))
    conn.close()


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ("prefenv.comparisons/999", r"newer than this prefenv \(prefenv.comparisons/2\): upgrade"),
        ("prefenv.comparisons/0", "unknown schema 'prefenv.comparisons/0'"),
        ("something-else", "unknown schema 'something-else'"),
    ],
)
def test_other_schema_is_refused_untouched(tmp_path: Path, schema: str, message: str) -> None:
    path = tmp_path / "store.sqlite"
    _set_schema(path, schema)
    before = path.read_bytes()
    with pytest.raises(StoreSchemaError, match=message) as caught:
        ComparisonStore(path)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == before


def test_foreign_sqlite_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.execute("INSERT INTO users VALUES ('ada')")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreSchemaError, match=r"not a prefenv comparison store.*users.*new path"):
        ComparisonStore(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\x01garbage" * 100, "is not a prefenv comparison store"),
        (b"SQLite format 3\x00" + bytes(50), r"is damaged \(SQLite: file is not a database\)"),
    ],
)
def test_non_sqlite_file_is_refused_untouched(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(content)
    with pytest.raises(StoreSchemaError, match=message) as caught:
        ComparisonStore(path)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == content


def test_empty_file_becomes_a_store(tmp_path: Path) -> None:
    path = tmp_path / "touched.db"
    path.touch()
    with ComparisonStore(path) as store:
        store.append(make_comparisons(2))
    with ComparisonStore(path) as store:
        assert len(store) == 2


def test_jsonl_round_trip(tmp_path: Path) -> None:
    comparisons = make_comparisons(12)
    with ComparisonStore(tmp_path / "s.db") as store:
        store.append(comparisons)
        path = tmp_path / "out" / "prefs.jsonl"
        written = export_jsonl(store.load(labelled_only=False), path)
    labelled = [c for c in comparisons if c.label is not None]
    assert written == len(labelled) == 9
    assert [p.name for p in path.parent.iterdir()] == ["prefs.jsonl"]  # no temp file left
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for line, comparison in zip(lines, labelled, strict=True):
        assert line["tie"] == (comparison.label == 0.5)
        preferred = comparison.segment1 if comparison.label == 1.0 else comparison.segment0
        other = comparison.segment0 if preferred is comparison.segment1 else comparison.segment1
        assert line["chosen"] == (preferred.context or {}).get("completion", "")
        assert line["rejected"] == (other.context or {}).get("completion", "")
        assert line["prompt"] == (comparison.segment0.context or {}).get("prompt", "")
    assert_same(import_jsonl(path), labelled)


def test_export_failure_leaves_old_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "prefs.jsonl"
    export_jsonl(make_comparisons(4), path)
    before = path.read_bytes()
    bad = Comparison(make_segment(rng, 1, 3, 2, x={1, 2}), make_segment(rng, 1, 3, 2), 0.0)
    with pytest.raises(ValueError, match="comparison 4 cannot be written"):
        export_jsonl([*make_comparisons(4), bad], path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["prefs.jsonl"]


def test_import_plain_preference_dataset(tmp_path: Path) -> None:
    path = tmp_path / "hf.jsonl"
    rows = [
        {"prompt": "Say hi", "chosen": " Hello!", "rejected": " Go away."},
        {"prompt": "2+2?", "chosen": " 4", "rejected": " 5", "tie": True},
        {"chosen": "Q: hi A: hello", "rejected": "Q: hi A: no"},  # implicit prompt
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    imported = import_jsonl(path, default_teacher="hf")
    assert [c.label for c in imported] == [0.0, 0.5, 0.0]
    assert imported[0].segment0.context == {"prompt": "Say hi", "completion": " Hello!"}
    assert imported[0].segment1.context == {"prompt": "Say hi", "completion": " Go away."}
    assert imported[2].segment1.context == {"prompt": "", "completion": "Q: hi A: no"}
    for comparison in imported:
        assert comparison.teacher == "hf"
        for segment in (comparison.segment0, comparison.segment1):
            assert segment.obs.shape == (2, 0) and segment.acts.shape == (1, 0)
            np.testing.assert_array_equal(segment.true_rewards, [0.0])
    with ComparisonStore(tmp_path / "s.db") as store:  # zero-feature arrays store fine
        store.append(imported)
        assert_same(store.load(), imported)
    again = tmp_path / "again.jsonl"
    export_jsonl(imported, again)
    assert_same(import_jsonl(again), imported)


@pytest.mark.parametrize(
    ("bad_line", "field"),
    [
        ('{"prompt": "p", "rejected": "r"}', "missing field 'chosen'"),
        ('{"prompt": "p", "chosen": 3, "rejected": "r"}', "invalid field 'chosen'"),
        ('{"chosen": "c", "rejected": "r", "tie": "yes"}', "invalid field 'tie'"),
        (
            '{"chosen": "c", "rejected": "r", "chosen_position": 2}',
            "invalid field 'chosen_position'",
        ),
        ('{"chosen": "c", "rejected": "r", "chosen_segment": {"obs": [[1.0]]}}', "chosen_segment"),
        ('{"chosen": "c", "rejected": "r"', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_import_malformed_line_names_file_line_and_field(
    tmp_path: Path, bad_line: str, field: str
) -> None:
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"})
    path.write_text(f"{good}\n{good}\n{bad_line}\n{good}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 3") as caught:
        import_jsonl(path)
    assert str(path) in str(caught.value)
    assert field in str(caught.value)


def test_a_second_store_connection_keeps_the_first_ones_locks(tmp_path: Path) -> None:
    """Opening a store twice in one process (the trainer's store and its query queue) and
    letting another process write must lose nothing: opening once read the file with a plain
    open()/close(), which drops every POSIX lock the process holds on it, so the other process
    took itself for the last user, deleted the -wal, and this process's next commits vanished."""
    import subprocess
    import sys

    from prefenv.queue import QueryQueue

    path = tmp_path / "store.sqlite"
    store = ComparisonStore(path)
    queue = QueryQueue(path)  # a second connection in this process
    other = "from prefenv.queue import QueryQueue\nq = QueryQueue({!r}); q.add_annotator('pat'); q.close()"
    subprocess.run([sys.executable, "-c", other.format(str(path))], check=True, timeout=120)
    store.append(make_comparisons(1))
    queue.add_annotator("sam")
    count = "import sqlite3; c = sqlite3.connect({!r}); print(c.execute('SELECT COUNT(*) FROM comparisons').fetchone()[0], c.execute('SELECT COUNT(*) FROM annotators').fetchone()[0])"
    seen = subprocess.run([sys.executable, "-c", count.format(str(path))], check=True,
                          capture_output=True, text=True, timeout=120).stdout.split()  # fmt: skip
    assert seen == ["1", "2"]
    store.close()
    queue.close()


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
        np.array(3.5),
        np.zeros((0, 5), dtype=np.int64),
        np.array([True, False]),
        np.arange(6, dtype=">f4").reshape(2, 3),
    ],
    ids=["float32", "fortran", "scalar", "empty", "bool", "big-endian"],
)
def test_stored_arrays_decode_as_numpy_loads_them(array):
    from prefenv.npy_codec import array_from_bytes, array_to_bytes

    data = array_to_bytes(array)
    decoded, reference = array_from_bytes(data), np.load(io.BytesIO(data), allow_pickle=False)
    assert decoded.dtype == reference.dtype and decoded.shape == reference.shape
    assert decoded.flags.writeable and decoded.flags.f_contiguous == reference.flags.f_contiguous
    np.testing.assert_array_equal(decoded, reference)
    for broken in (data[:-1], data + b"\x00", b"not an array at all", data[:8]):
        with pytest.raises(ValueError):
            array_from_bytes(broken)
