"""The labelling app under load and under a crash: 8 labellers over HTTP against a real server.

Each labeller is one annotator with its own ``httpx.AsyncClient`` (its own cookie), looping
``GET /api/next`` -> ``POST /api/label`` until the queue is empty. The server is ``prefenv label``
in a subprocess (fixture ``label_server``), on loopback.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass

import httpx

from prefenv.queue import CHOICES, QueryQueue
from prefenv.store import ComparisonStore

LABELLERS = 8
OUTAGE_SECONDS = 60.0
"""How long a labeller keeps retrying while the server is down (restarts take a few seconds)."""


@dataclass(frozen=True)
class Ack:
    """A label the server acknowledged (200)."""

    annotator: str
    query: str
    choice: str
    label_id: int


async def _login(client: httpx.AsyncClient, token: str) -> None:
    response = await client.get(f"/a/{token}")
    assert response.status_code == 303, response.text
    assert response.headers["location"].endswith("/label")
    assert "prefenv_annotator" in client.cookies


async def _label_until_empty(
    url: str, name: str, token: str, acks: list[Ack], outages: list[str]
) -> None:
    """Label every query the server hands ``name``; ride out server outages (reconnecting).

    Appends ``name`` to ``outages`` each time a request finds the server gone.
    """
    rng = random.Random(name)
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
        down_since: float | None = None
        logged_in = False
        while True:
            try:
                if not logged_in:
                    await _login(client, token)
                    logged_in = True
                shown = await client.get("/api/next")
                if shown.status_code == 401:  # a restarted server may not know the old cookie
                    logged_in = False
                    continue
                assert shown.status_code == 200, shown.text
                body = shown.json()
                if body["query"] is None:
                    return
                assert "gold" not in body, "the page must not reveal gold questions"
                choice = rng.choice(CHOICES)
                answer = {"query": body["query"], "choice": choice,
                          "response_seconds": rng.uniform(0.5, 5.0)}  # fmt: skip
                done = await client.post("/api/label", json=answer,
                                         headers={"X-CSRF-Token": body["csrf"]})  # fmt: skip
            except httpx.TransportError:
                if down_since is None:
                    outages.append(name)
                down_since = down_since or time.monotonic()
                assert time.monotonic() - down_since < OUTAGE_SECONDS, "the server never came back"
                await asyncio.sleep(0.05)
                continue
            down_since = None
            assert done.status_code == 200, f"{name} labelling {body['query']}: {done.text}"
            acks.append(Ack(name, body["query"], choice, done.json()["label_id"]))


def _assert_acknowledged_labels_stored(acks: list[Ack], rows: list[dict]) -> None:
    """Every acknowledged label is in the store as acknowledged; no query labelled twice."""
    by_id = {row["id"]: row for row in rows}
    for ack in acks:
        row = by_id.get(ack.label_id)
        assert row is not None, f"acknowledged label {ack} is not in the store"
        assert (row["query"], row["annotator"], row["choice"]) == (ack.query, ack.annotator,
                                                                    ack.choice)  # fmt: skip
    assert len({ack.label_id for ack in acks}) == len(acks), "a label id acknowledged twice"
    twice = [query for query, n in Counter(row["query"] for row in rows).items() if n > 1]
    assert not twice, f"queries labelled more than once (overlap 1): {twice[:5]}"


def test_eight_labellers_label_1000_queries_none_lost_or_duplicated(
    make_label_run, label_server
) -> None:
    names = [f"labeller{i}" for i in range(LABELLERS)]
    run = make_label_run("text", annotators=names)
    media = [{"kind": "text", "prompt": f"prompt {i}", "left": f"a{i}", "right": f"b{i}"}
             for i in range(1000)]  # fmt: skip
    posted = run.post(media)
    server = label_server(run.path)
    acks: list[Ack] = []
    outages: list[str] = []

    async def everyone() -> None:
        await asyncio.gather(*(_label_until_empty(server.url, name, run.tokens[name], acks,
                                                  outages) for name in names))  # fmt: skip

    asyncio.run(everyone())
    assert outages == [], "the server refused connections under load"

    rows = run.label_rows()
    assert len(acks) == len(rows) == 1000
    assert sorted(ack.query for ack in acks) == sorted(posted)
    _assert_acknowledged_labels_stored(acks, rows)
    assert len({ack.annotator for ack in acks}) == LABELLERS, "every labeller got work"
    with QueryQueue(run.store) as queue:
        assert len(queue.harvest()) == 1000
    with ComparisonStore(run.store) as store:
        assert store.count() == 1000
        assert store.teachers() == {f"human:{name}": n
                                    for name, n in Counter(a.annotator for a in acks).items()}  # fmt: skip


def test_sigkill_mid_stream_loses_no_acknowledged_label_and_the_queue_goes_on(
    make_label_run, label_server
) -> None:
    names = [f"labeller{i}" for i in range(LABELLERS)]
    run = make_label_run("text", annotators=names)
    media = [{"kind": "text", "prompt": f"prompt {i}", "left": f"a{i}", "right": f"b{i}"}
             for i in range(400)]  # fmt: skip
    posted = run.post(media)
    server = label_server(run.path)
    acks: list[Ack] = []
    outages: list[str] = []
    acked_before_kill: list[int] = []

    async def crash_and_restart() -> None:
        while len(acks) < 150:
            await asyncio.sleep(0.005)
        server.kill()  # while the other labellers are posting
        acked_before_kill.append(len(acks))
        port = int(server.url.rsplit(":", 1)[1])
        await asyncio.to_thread(label_server, run.path, port)

    async def everyone() -> None:
        await asyncio.gather(crash_and_restart(), *(
            _label_until_empty(server.url, name, run.tokens[name], acks, outages)
            for name in names))  # fmt: skip

    asyncio.run(everyone())
    assert len(set(outages)) == LABELLERS, "every labeller met the dead server and went on"

    assert server.process.returncode == -9, "the first server was SIGKILLed"
    rows = run.label_rows()
    _assert_acknowledged_labels_stored(acks, rows)
    assert len(acks) > acked_before_kill[0], "labelling went on after the restart"
    assert sorted(row["query"] for row in rows) == sorted(posted), "the queue ran to its end"
    # Labels committed while their response was lost in the kill: at most one per labeller.
    assert 0 <= len(rows) - len(acks) <= LABELLERS
