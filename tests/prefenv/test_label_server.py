"""Tests for the labelling web app (prefenv/app/label_server.py) through Starlette's TestClient.

Each route's happy path, then every refused request of issue 13 item 4; a refused request must
leave the store exactly as it was (:func:`store_state` reads every queue table).
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from prefenv.app.cli import main
from prefenv.app.label_server import LabelSettings, make_app
from prefenv.queue import QueryQueue
from prefenv.records import Segment
from prefenv.store import ComparisonStore

LOOPBACK = "http://127.0.0.1:8765"
TEXT = {"kind": "text", "prompt": "Review the film.", "left": "A gem.", "right": "Dull <b>x</b>"}
CLIPS = {"kind": "clips", "left": "q1_left.mp4", "right": "q1_right.mp4", "fps": 30.0, "frames": 51}
SESSIONS = {
    "kind": "sessions",
    "columns": ["step", "slate", "click", "watched"],
    "left": {"rows": [[0, [1, 2, 3], 2, 0.5]], "left_early": False},
    "right": {"rows": [[0, [4, 5, 6], None, 0.0]], "left_early": True},
}
TABLE = {
    "kind": "table",
    "columns": ["step", "obs[0]", "act[0]"],
    "left": {"rows": [[0, 0.1, 0.2], [1, 0.3, ""]]},
    "right": {"rows": [[0, -0.1, 0.5], [1, 0.0, ""]]},
}
CLIP_BYTES = {"q1_left.mp4": b"left-clip-" * 50, "q1_right.mp4": b"right-clip" * 50}


def make_pairs(n: int, seed: int = 0) -> list[tuple[Segment, Segment]]:
    """``n`` pairs of 3-step segments (obs dim 2, act dim 1) with text contexts."""
    rng = np.random.default_rng(seed)

    def segment(i: int, side: str) -> Segment:
        return Segment(
            obs=rng.normal(size=(4, 2)),
            acts=rng.uniform(-1, 1, size=(3, 1)),
            true_rewards=rng.normal(size=3),
            context={"prompt": f"prompt {i}", "completion": f"{side} {i}"},
        )

    return [(segment(i, "a"), segment(i, "b")) for i in range(n)]


def post(
    run: Path, media: list[dict[str, Any]], overlap: int = 1, gold: list[float | None] | None = None
) -> list[str]:
    """Post one pair per media dict into the run's queue; their public ids in order."""
    with QueryQueue(run / "comparisons.sqlite", create=True) as queue:
        ids = queue.post(make_pairs(len(media)), run="x", round=0, overlap=overlap, gold=gold,
                         media=media)  # fmt: skip
        posted = [*queue.round_queries("x", 0), *queue.round_queries("x", 0, gold=True)]
    public = {query.id: query.public_id for query in posted}
    return [public[row_id] for row_id in ids]


def store_state(run: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row a request could write: labels, assignments, comparisons, annotators, queries."""
    conn = sqlite3.connect(run / "comparisons.sqlite")
    try:
        return {
            table: conn.execute(f"SELECT {columns} FROM {table} ORDER BY 1, 2").fetchall()
            for table, columns in [
                ("labels", "id, query_id, annotator, choice, created, response_seconds"),
                ("assignments", "query_id, annotator, assigned"),
                ("comparisons", "id, label, teacher"),
                ("annotators", "name, token_sha256"),
                ("queries", "id, public_id, closed, media"),
            ]
        }
    finally:
        conn.close()


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run folder with an empty store, two clips and a labelling.json."""
    folder = tmp_path / "x"
    folder.mkdir()
    QueryQueue(folder / "comparisons.sqlite", create=True).close()
    (folder / "clips").mkdir()
    for name, data in CLIP_BYTES.items():
        (folder / "clips" / name).write_bytes(data)
    labelling = {"run": "x", "env": "prefenv/Test-v0", "kind": "text", "overlap": 1,
                 "instructions": "Pick the kinder review.", "gold_rate": 0.0,
                 "lease_seconds": 600}  # fmt: skip
    (folder / "labelling.json").write_text(json.dumps(labelling))
    return folder


@pytest.fixture
def tokens(run: Path) -> dict[str, str]:
    with QueryQueue(run / "comparisons.sqlite") as queue:
        return {name: queue.add_annotator(name) for name in ("alice", "bob")}


def client(run: Path, settings: LabelSettings | None = None, base: str = LOOPBACK) -> TestClient:
    return TestClient(make_app(run, settings), base_url=base)


@pytest.fixture
def alice(run: Path, tokens: dict[str, str]) -> Iterator[TestClient]:
    """A loopback client holding alice's annotator cookie."""
    with client(run) as c:
        assert c.get(f"/a/{tokens['alice']}").status_code == 200
        yield c


def next_query(c: TestClient) -> dict[str, Any]:
    response = c.get("/api/next")
    assert response.status_code == 200, response.text
    return response.json()


def send_label(c: TestClient, query: str, choice: str, csrf: str | None, **extra: Any) -> Any:
    headers = {} if csrf is None else {"X-CSRF-Token": csrf}
    body = {"query": query, "choice": choice, "response_seconds": 1.25, **extra}
    return c.post("/api/label", json=body, headers=headers)


# -- happy paths ------------------------------------------------------------------------------


def test_annotator_link_sets_a_strict_cookie_and_redirects(run: Path, tokens: dict[str, str]):
    with client(run) as c:
        response = c.get(f"/a/{tokens['alice']}", follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"] == "/label"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"prefenv_annotator={tokens['alice']};")
        for attribute in ("HttpOnly", "Path=/", "SameSite=strict"):
            assert attribute in cookie
        assert response.headers["referrer-policy"] == "no-referrer"
        bad = c.get("/a/not-a-token", follow_redirects=False)
        assert bad.status_code == 401 and "set-cookie" not in bad.headers


def test_label_page_needs_an_annotator_and_embeds_the_csrf_token(alice: TestClient, run: Path):
    page = alice.get("/label")
    assert page.status_code == 200
    csrf = next_query(alice)["csrf"]
    assert f'content="{csrf}"' in page.text
    shown = re.sub(r"<[^>]+>", "", page.text)  # the text a person reads
    for text in ("Left is better [1 or ←]", "Right is better [2 or →]", "Equally good [3 or =]",
                 "Skip [0 or S]", "Undo [U or Backspace]", "All caught up", "A (left)"):  # fmt: skip
        assert text in shown
    for asset in ("/static/label.js", "/static/label.css", "/static/stats.js", "/stats"):
        assert alice.get(asset).status_code == 200
    with client(run) as stranger:
        first = stranger.get("/label")
        assert first.status_code == 401 and "url=/label?retry=1" in first.text
        again = stranger.get("/label?retry=1")
        assert (
            again.status_code == 401 and "annotator" in again.text and "refresh" not in again.text
        )


@pytest.mark.parametrize("media", [TEXT, CLIPS, SESSIONS, TABLE], ids=lambda m: m["kind"])
def test_next_hands_out_each_media_kind(alice: TestClient, run: Path, media: dict[str, Any]):
    (query,) = post(run, [media])
    data = next_query(alice)
    assert data["query"] == query and data["media"] == media
    assert data["instructions"] == "Pick the kinder review."
    assert data["progress"] == {"labelled": 0, "open": 1, "answered": 0, "waiting": 1}
    assert next_query(alice)["query"] == query  # the same pair until it is answered


def test_next_says_when_nothing_is_waiting(alice: TestClient):
    data = next_query(alice)
    assert data["query"] is None and data["media"] is None and data["csrf"]


def test_label_undo_and_progress(alice: TestClient, run: Path):
    first, second = post(run, [TEXT, TABLE])
    data = next_query(alice)
    response = send_label(alice, first, "left", data["csrf"])
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True and isinstance(body["label_id"], int)
    assert body["progress"] == {"labelled": 1, "open": 2, "answered": 1, "waiting": 1}
    assert alice.get("/api/progress").json() == body["progress"]
    with QueryQueue(run / "comparisons.sqlite") as queue:
        (row,) = queue.label_rows()
    assert (row["query"], row["annotator"], row["choice"]) == (first, "alice", "left")
    assert row["response_seconds"] == 1.25
    assert next_query(alice)["query"] == second
    undone = alice.post("/api/undo", headers={"X-CSRF-Token": data["csrf"]})
    assert undone.status_code == 200
    assert undone.json()["query"] == first and undone.json()["media"] == TEXT
    assert undone.json()["progress"]["labelled"] == 0
    before = store_state(run)
    again = alice.post("/api/undo", headers={"X-CSRF-Token": data["csrf"]})
    assert again.status_code == 409 and "no label to undo" in again.json()["error"]
    assert store_state(run) == before


def test_clip_is_served_with_range_requests(alice: TestClient):
    whole = alice.get("/clips/q1_left.mp4")
    assert whole.status_code == 200 and whole.content == CLIP_BYTES["q1_left.mp4"]
    assert whole.headers["content-type"] == "video/mp4"
    part = alice.get("/clips/q1_right.mp4", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == CLIP_BYTES["q1_right.mp4"][10:20]


def test_stats_and_exports(run: Path, tokens: dict[str, str]):
    shared, gold = post(run, [TEXT, TEXT], overlap=2, gold=[None, 0.0])
    for name, choice in (("alice", "left"), ("bob", "left")):
        with client(run, LabelSettings(gold_rate=0.5)) as c:
            c.get(f"/a/{tokens[name]}")
            for _ in range(2):  # the gold question first (rate 0.5), then the shared query
                data = next_query(c)
                assert "gold" not in data  # never revealed
                answer = choice if data["query"] == shared else "right"
                assert send_label(c, data["query"], answer, data["csrf"]).status_code == 200
    with QueryQueue(run / "comparisons.sqlite") as queue:
        assert len(queue.harvest()) == 2  # gold answers are scored, never harvested
    with client(run) as c:
        stats = c.get("/api/stats").json()
        assert c.get("/stats").status_code == 200
        lines = c.get("/export/preferences.jsonl").text.splitlines()
        copy = c.get("/export/comparisons.sqlite")
    assert stats["annotators"]["alice"]["labels"] == 2
    assert stats["annotators"]["alice"]["gold_accuracy"] == 0.0  # "right" on a left-is-better gold
    assert stats["agreement"]["items_with_overlap"] == 1
    assert stats["agreement"]["pairwise_agreement"] == 1.0
    assert stats["sources"] == {"human": 2, "simulated": 0}
    assert stats["queries"]["labels"] == 4 and stats["queries"]["harvested"] == 2
    assert stats["run"]["env"] == "prefenv/Test-v0"
    records = [json.loads(line) for line in lines]
    assert sorted(r["teacher"] for r in records) == ["human:alice", "human:bob"]
    assert {(r["prompt"], r["chosen"], r["rejected"]) for r in records} == {
        ("prompt 0", "a 0", "b 0")
    }
    assert copy.status_code == 200 and copy.content.startswith(b"SQLite format 3\x00")
    (run / "copy.sqlite").write_bytes(copy.content)
    with ComparisonStore(run / "copy.sqlite") as store:
        assert store.teachers() == {"human:alice": 1, "human:bob": 1}


# -- refused requests: a clear 4xx, nothing written ---------------------------------------------


def test_forged_query_id_is_404(alice: TestClient, run: Path):
    post(run, [TEXT])
    csrf = next_query(alice)["csrf"]
    before = store_state(run)
    response = send_label(alice, "deadbeefdeadbeef", "left", csrf)
    assert response.status_code == 404 and "never posted" in response.json()["error"]
    assert store_state(run) == before


def test_another_annotators_query_is_403(alice: TestClient, run: Path, tokens: dict[str, str]):
    (query,) = post(run, [TEXT])
    assert next_query(alice)["query"] == query
    with client(run) as bob:
        bob.get(f"/a/{tokens['bob']}")
        csrf = next_query(bob)["csrf"]  # nothing for bob: the overlap-1 query is alice's
        before = store_state(run)
        response = send_label(bob, query, "right", csrf)
    assert response.status_code == 403 and "not assigned to bob" in response.json()["error"]
    assert store_state(run) == before


def test_double_label_is_409_and_the_first_stands(alice: TestClient, run: Path):
    (query,) = post(run, [TEXT])
    csrf = next_query(alice)["csrf"]
    assert send_label(alice, query, "left", csrf).status_code == 200
    before = store_state(run)
    response = send_label(alice, query, "right", csrf)
    assert response.status_code == 409 and "first label stands" in response.json()["error"]
    assert store_state(run) == before
    assert [row["choice"] for row in QueryQueue(run / "comparisons.sqlite").label_rows()] == [
        "left"
    ]


def test_closed_query_is_409(alice: TestClient, run: Path):
    (query,) = post(run, [TEXT])
    csrf = next_query(alice)["csrf"]
    with QueryQueue(run / "comparisons.sqlite") as queue:
        queue.close_queries([q.id for q in queue.round_queries("x", 0)])
    before = store_state(run)
    response = send_label(alice, query, "left", csrf)
    assert response.status_code == 409 and "closed" in response.json()["error"]
    assert store_state(run) == before


def test_oversized_body_is_413_declared_or_streamed(alice: TestClient, run: Path):
    (query,) = post(run, [TEXT])
    csrf = next_query(alice)["csrf"]
    before = store_state(run)
    padded = {"query": query, "choice": "left", "response_seconds": 1.0, "pad": "x" * 5000}
    declared = alice.post("/api/label", json=padded, headers={"X-CSRF-Token": csrf})
    assert declared.status_code == 413 and "4096-byte limit" in declared.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield json.dumps(padded)[:3000].encode()
        yield json.dumps(padded)[3000:].encode()

    streamed = alice.post("/api/label", content=chunks(), headers={"X-CSRF-Token": csrf})
    assert streamed.status_code == 413
    assert store_state(run) == before
    fits = send_label(alice, query, "left", csrf, pad="x" * 3900)  # under the limit: accepted
    assert fits.status_code == 200


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"query": 7, "choice": "left"}', "query must be"),
        (b'{"query": "Q", "choice": "best"}', "choice must be one of"),
        (b'{"query": "Q", "choice": "left", "response_seconds": -1}', "response_seconds"),
        (b'{"query": "Q", "choice": "left", "response_seconds": true}', "response_seconds"),
        (b'{"query": "Q", "choice": "left", "response_seconds": "1"}', "response_seconds"),
    ],
)
def test_malformed_label_is_400(alice: TestClient, run: Path, body: bytes, message: str):
    (query,) = post(run, [TEXT])
    csrf = next_query(alice)["csrf"]
    before = store_state(run)
    response = alice.post("/api/label", content=body.replace(b'"Q"', json.dumps(query).encode()),
                          headers={"X-CSRF-Token": csrf, "Content-Type": "application/json"})  # fmt: skip
    assert response.status_code == 400 and message in response.json()["error"]
    assert store_state(run) == before


def test_missing_or_wrong_csrf_is_403(alice: TestClient, run: Path, tokens: dict[str, str]):
    (query,) = post(run, [TEXT])
    next_query(alice)
    with client(run) as bob:
        bob.get(f"/a/{tokens['bob']}")
        bobs_csrf = next_query(bob)["csrf"]
    before = store_state(run)
    for csrf in (None, "", bobs_csrf, "0" * 64):
        response = send_label(alice, query, "left", csrf)
        assert response.status_code == 403 and "X-CSRF-Token" in response.json()["error"]
        undo = alice.post("/api/undo", headers={} if csrf is None else {"X-CSRF-Token": csrf})
        assert undo.status_code == 403
    assert store_state(run) == before


def test_requests_without_an_annotator_are_401(run: Path, tokens: dict[str, str]):
    (query,) = post(run, [TEXT])
    before = store_state(run)
    with client(run) as c:
        assert c.get("/api/next").status_code == 401
        assert c.get("/api/progress").status_code == 401
        c.cookies.set("prefenv_annotator", "forged")
        response = send_label(c, query, "left", "0" * 64)
        assert response.status_code == 401 and "open your own link" in response.json()["error"]
    assert store_state(run) == before


def asgi_get(app: Starlette, raw_path: str) -> tuple[int, bytes]:
    """GET ``raw_path`` as a raw client would send it: no dot-segment clean-up on the way."""
    sent: list[dict[str, Any]] = []
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": unquote(raw_path), "raw_path": raw_path.encode(),
             "root_path": "", "query_string": b"", "headers": [(b"host", b"127.0.0.1:8765")],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8765)}  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body


@pytest.mark.parametrize(
    "path",
    ["/clips/../comparisons.sqlite", "/clips/..", "/clips/../labelling.json", "/clips//etc/passwd",
     "/clips/%2e%2e%2fcomparisons.sqlite", "/clips/..%2Fcomparisons.sqlite",
     "/clips/%2Fetc%2Fpasswd", "/clips/q1_left.mp4%00.txt", "/clips/escape.mp4",
     "/clips/missing.mp4"],
)  # fmt: skip
def test_clip_names_cannot_leave_the_clip_folder(run: Path, path: str):
    (run / "clips" / "escape.mp4").symlink_to(run / "comparisons.sqlite")
    before = store_state(run)
    app = make_app(run)
    status, body = asgi_get(app, path)  # as sent: dot segments and escapes reach the app
    assert status == 404 and b"no clip" in body
    with TestClient(app, base_url=LOOPBACK) as c:  # through an HTTP client, which may clean up
        response = c.get(path, follow_redirects=False)
    assert response.status_code in (303, 404) and b"SQLite" not in response.content
    assert store_state(run) == before


def test_loopback_bind_refuses_a_foreign_host_header(run: Path, tokens: dict[str, str]):
    post(run, [TEXT])
    before = store_state(run)
    with client(run, base="http://rebound.example:8765") as c:
        for path in ("/api/stats", f"/a/{tokens['alice']}", "/export/comparisons.sqlite"):
            response = c.get(path)
            assert response.status_code == 400 and "not a loopback name" in response.json()["error"]
    assert store_state(run) == before
    for host in ("http://localhost:8765", "http://[::1]:8765"):
        with client(run, base=host) as c:
            assert c.get("/api/stats").status_code == 200


PUBLIC = LabelSettings(host="0.0.0.0", port=8765, access_token="s3cret-token")


def test_non_loopback_bind_needs_an_access_token():
    with pytest.raises(ValueError, match="access token"):
        LabelSettings(host="0.0.0.0")
    with pytest.raises(ValueError, match="8-256 characters"):
        LabelSettings(host="10.0.0.5", access_token="short")
    with pytest.raises(ValueError, match="gold_rate"):
        LabelSettings(gold_rate=1.0)


def test_missing_or_wrong_access_token_is_401(run: Path, tokens: dict[str, str]):
    (query,) = post(run, [TEXT])
    before = store_state(run)
    wrong = [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "s3cret-token"}]
    with client(run, PUBLIC, base="http://labeller.example:8765") as c:
        for headers in wrong:
            for path in ("/api/next", "/label", "/api/stats", "/clips/q1_left.mp4",
                         f"/a/{tokens['alice']}", "/export/comparisons.sqlite", "/static/label.js"):  # fmt: skip
                response = c.get(path, headers=headers)
                assert response.status_code == 401 and "access token" in response.json()["error"]
            response = send_label(c, query, "left", "0" * 64)
            assert response.status_code == 401
        c.cookies.set("prefenv_access", "wrong-token")
        assert c.get("/api/stats").status_code == 401
        assert c.get(f"/a/{tokens['alice']}?access=wrong-token").status_code == 401
    assert store_state(run) == before


def test_access_token_in_header_or_link_cookie(run: Path, tokens: dict[str, str]):
    (query,) = post(run, [TEXT])
    with client(run, PUBLIC, base="http://labeller.example:8765") as c:
        bearer = {"Authorization": "Bearer s3cret-token"}
        assert c.get("/api/stats", headers=bearer).status_code == 200
        link = c.get(f"/a/{tokens['alice']}?access=s3cret-token", follow_redirects=False)
        assert link.status_code == 303
        assert "prefenv_access=s3cret-token" in link.headers.get_list("set-cookie")[-1]
        data = next_query(c)  # both cookies now carry it
        assert data["query"] == query
        assert send_label(c, query, "right", data["csrf"]).status_code == 200


# -- prefenv label ------------------------------------------------------------------------------


@pytest.fixture
def no_serving(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, LabelSettings]]:
    served: list[tuple[Path, LabelSettings]] = []
    monkeypatch.setattr("prefenv.app.label_server.serve", lambda r, s: served.append((r, s)))
    return served


def test_cli_registers_annotators_prints_links_and_serves(
    run: Path, no_serving: list[tuple[Path, LabelSettings]], capsys: pytest.CaptureFixture[str]
):
    (run / "note.txt").write_text("Judge kindness.\n")
    argv = ["label", "--run", str(run), "--annotator", "carol", "--gold-rate", "0.2",
            "--instructions", str(run / "note.txt")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    token = out.split("http://127.0.0.1:8765/a/")[1].split()[0]
    assert QueryQueue(run / "comparisons.sqlite").annotator_for_token(token) == "carol"
    assert "http://127.0.0.1:8765/stats" in out
    ((served_run, settings),) = no_serving
    assert served_run == run and settings.gold_rate == 0.2
    assert settings.instructions == "Judge kindness."
    assert main(argv) == 0  # again: no new link, advice instead
    assert "--reset-token carol" in capsys.readouterr().out
    assert main(["label", "--run", str(run), "--reset-token", "carol"]) == 0
    new = capsys.readouterr().out.split("/a/")[1].split()[0]
    with QueryQueue(run / "comparisons.sqlite") as queue:
        assert queue.annotator_for_token(new) == "carol"
        assert queue.annotator_for_token(token) is None


def test_cli_refuses_bad_setups(
    run: Path, tmp_path: Path, no_serving: list[Any], capsys: pytest.CaptureFixture[str]
):
    cases = [
        (["--run", str(run), "--annotator", "a", "--host", "0.0.0.0"], "access token"),
        (["--run", str(run)], "no annotators yet"),
        (["--run", str(run), "--reset-token", "zed"], "no annotator 'zed'"),
        (["--run", str(tmp_path / "none"), "--annotator", "a"], "no comparison store"),
    ]
    for args, message in cases:
        assert main(["label", *args]) == 2
        assert message in capsys.readouterr().err
    assert no_serving == []
    public = ["label", "--run", str(run), "--annotator", "a", "--host", "0.0.0.0",
              "--access-token", "s3cret-token"]  # fmt: skip
    assert main(public) == 0
    out = capsys.readouterr().out
    assert "/a/" in out and "?access=s3cret-token" in out and "listens on every address" in out
