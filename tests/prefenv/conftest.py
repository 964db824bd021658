"""Fixtures for the labelling app's tests: run folders with posted queries, and live servers.

``make_label_run`` builds what ``prefenv train --teacher human`` leaves for the app (the store
with its queue, ``clips/``, ``labelling.json``) and registers annotators, keeping their tokens.
``label_server`` runs ``prefenv label --run DIR`` in a subprocess on a free loopback port, as a
user does (uvicorn and all), so a test can SIGKILL it and start it again on the same folder.
The classes are handed out through fixtures (tests import nothing from conftest).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from prefenv.queue import QueryQueue
from prefenv.records import Segment

SERVER_START_SECONDS = 60.0
"""How long a server may take to answer its first request (imports on a loaded machine)."""


def random_pairs(n: int, seed: int = 0) -> list[tuple[Segment, Segment]]:
    """``n`` pairs of 3-step segments (obs dim 2, act dim 1), for queries whose media is made up."""
    rng = np.random.default_rng(seed)
    return [
        tuple(
            Segment(rng.normal(size=(4, 2)), rng.uniform(-1, 1, (3, 1)), rng.normal(size=3))
            for _ in range(2)
        )
        for _ in range(n)
    ]  # type: ignore[misc]


@dataclass
class LabelRun:
    """A run folder the labelling app serves.

    Attributes:
        path: the run folder.
        tokens: annotator name -> access token (the link is ``/a/<token>``).
    """

    path: Path
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def store(self) -> Path:
        return self.path / "comparisons.sqlite"

    @property
    def clips(self) -> Path:
        return self.path / "clips"

    def post(
        self,
        media: Sequence[Mapping[str, Any]],
        *,
        pairs: Sequence[tuple[Segment, Segment]] | None = None,
        overlap: int = 1,
        gold: Sequence[float | None] | None = None,
        round: int = 0,
    ) -> list[str]:
        """Post one query per media dict (random segments unless ``pairs``); their public ids."""
        pairs = random_pairs(len(media), seed=round) if pairs is None else pairs
        with QueryQueue(self.store) as queue:
            ids = queue.post(pairs, run=self.path.name, round=round, overlap=overlap, gold=gold,
                             media=media)  # fmt: skip
            posted = queue.round_queries(self.path.name, round)
            posted += queue.round_queries(self.path.name, round, gold=True)
        public = {query.id: query.public_id for query in posted}
        return [public[row_id] for row_id in ids]

    def label_rows(self) -> list[dict[str, Any]]:
        """Every label in the store, read through a fresh connection."""
        with QueryQueue(self.store) as queue:
            return queue.label_rows()


@pytest.fixture
def make_label_run(tmp_path: Path) -> Callable[..., LabelRun]:
    """Factory: ``make_label_run(kind, env=..., annotators=..., gold_rate=..., ...)``.

    ``labelling.json`` gives no instructions, so the page shows the kind's default ones.
    """

    def make(
        kind: str = "text",
        *,
        env: str = "prefenv/TextSentiment-v0",
        annotators: Sequence[str] = ("alice",),
        gold_rate: float = 0.0,
        overlap: int = 1,
        lease_seconds: float = 600.0,
        name: str = "run",
    ) -> LabelRun:
        run = LabelRun(tmp_path / name)
        run.clips.mkdir(parents=True)
        with QueryQueue(run.store, create=True) as queue:
            run.tokens = {annotator: queue.add_annotator(annotator) for annotator in annotators}
        settings = {"run": name, "env": env, "kind": kind, "gold_rate": gold_rate,
                    "overlap": overlap, "lease_seconds": lease_seconds}  # fmt: skip
        (run.path / "labelling.json").write_text(json.dumps(settings))
        return run

    return make


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LabelServer:
    """``prefenv label --run DIR`` in a subprocess on 127.0.0.1; answering once constructed.

    Args:
        run_dir: the run folder it serves.
        port: the port (the same one again after a restart, so clients carry on).
        log: where its stdout and stderr go (read back when it fails to start).
        args: further ``prefenv label`` options.
    """

    def __init__(self, run_dir: Path, port: int, log: Path, args: Sequence[str] = ()) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        command = [sys.executable, "-m", "prefenv.app.cli", "label", "--run", str(run_dir),
                   "--port", str(port), *args]  # fmt: skip
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self._wait_until_answering()

    def link(self, token: str) -> str:
        return f"{self.url}/a/{token}"

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"`prefenv label` exited with {self.process.returncode} before answering:\n"
                    + self.log.read_text(errors="replace")[-4000:]
                )
            try:
                httpx.get(f"{self.url}/label", timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"`prefenv label` did not answer on {self.url} within {SERVER_START_SECONDS:.0f} s:\n"
            + self.log.read_text(errors="replace")[-4000:]
        )

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no shutdown code runs."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """Ctrl-C (SIGINT), then SIGKILL if it has not exited within 10 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def label_server(tmp_path: Path) -> Iterator[Callable[..., LabelServer]]:
    """Factory: ``label_server(run_dir, port=None, args=())`` -> a started :class:`LabelServer`.

    Every server started is stopped after the test.
    """
    started: list[LabelServer] = []

    def start(run_dir: Path, port: int | None = None, args: Sequence[str] = ()) -> LabelServer:
        log = tmp_path / f"label_server_{len(started)}.log"
        server = LabelServer(run_dir, free_port() if port is None else port, log, args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
