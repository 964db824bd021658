"""Labelling app latency: label round trips with 8 concurrent labellers on loopback.

One ``prefenv label`` server (uvicorn, in its own process, exactly as a user starts it) serves a
temporary run folder holding ``--labels`` text queries. ``--labellers`` annotators, each an
``httpx.AsyncClient`` in this process, loop ``GET /api/next`` -> think -> ``POST /api/label``
until the queue is empty, in two scenarios (a fresh server and run each):

- ``saturated``: no think time. Every labeller has a request in flight all the time, so each
  one waits behind the other seven: latency = queueing + service, the server's worst case.
- ``paced``: each labeller thinks ``--think-ms`` (uniform in [0.5, 1.5] x that) after a pair
  arrives, still far faster than a person (seconds per label); closer to real use.

Reported, in milliseconds over every request after each labeller's first two:

- ``label``: the ``POST /api/label`` round trip (the label is durable in SQLite when it returns);
- ``next``: the ``GET /api/next`` round trip (assigns the next query);
- ``cycle``: the two together, what a person waits between one click and the next pair.

Goal (issue 13): ``label`` p99 under 50 ms. The client and the server share the machine's
cores, so the load average is recorded with the result.

Usage:
    python benchmarks/bench_label_server.py [--labels 2000] [--labellers 8] [--think-ms 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from prefenv.queue import CHOICES, QueryQueue
from prefenv.records import Segment

WARMUP = 2
"""Round trips per labeller left out of the statistics (first connections, first queries)."""
GOAL_P99_MS = 50.0


def _make_run(folder: Path, labels: int, labellers: int) -> dict[str, str]:
    """A run folder with ``labels`` text queries; returns annotator -> token."""
    rng = np.random.default_rng(0)
    pairs = [
        tuple(
            Segment(rng.normal(size=(4, 2)), rng.uniform(-1, 1, (3, 1)), rng.normal(size=3))
            for _ in range(2)
        )
        for _ in range(labels)
    ]
    media = [
        {"kind": "text", "prompt": f"Review {i}:", "left": f"great film {i}", "right": f"dull {i}"}
        for i in range(labels)
    ]
    (folder / "clips").mkdir(parents=True)
    with QueryQueue(folder / "comparisons.sqlite", create=True) as queue:
        tokens = {f"labeller{i}": queue.add_annotator(f"labeller{i}") for i in range(labellers)}
        queue.post(pairs, run="bench", round=0, media=media)  # type: ignore[arg-type]
    settings = {"run": "bench", "env": "prefenv/bench-v0", "kind": "text",
                "instructions": "Pick the better review.", "gold_rate": 0.0, "overlap": 1,
                "lease_seconds": 600}  # fmt: skip
    (folder / "labelling.json").write_text(json.dumps(settings))
    return tokens


def _start_server(folder: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``prefenv label --run folder`` on a free loopback port, once it answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefenv.app.cli", "label", "--run", str(folder),
             "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            httpx.get(f"{url}/label", timeout=1.0)
            return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"`prefenv label` did not start:\n{log.read_text()[-3000:]}")


async def _labeller(url: str, name: str, token: str, think: float) -> dict[str, list[float]]:
    """Label until the queue is empty, thinking ~``think`` s per pair; round-trip seconds per
    kind of request (``cycle`` leaves the think time out)."""
    rng = random.Random(name)
    times: dict[str, list[float]] = {"next": [], "label": [], "cycle": []}
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
        login = await client.get(f"/a/{token}")
        if login.status_code != 303:
            raise RuntimeError(f"login of {name} failed: {login.status_code} {login.text}")
        while True:
            start = time.perf_counter()
            shown = (await client.get("/api/next")).json()
            middle = time.perf_counter()
            if shown["query"] is None:
                return times
            if think > 0:
                await asyncio.sleep(think * rng.uniform(0.5, 1.5))
            answer = {"query": shown["query"], "choice": rng.choice(CHOICES),
                      "response_seconds": 1.0}  # fmt: skip
            sent = time.perf_counter()
            done = await client.post(
                "/api/label", json=answer, headers={"X-CSRF-Token": shown["csrf"]}
            )
            end = time.perf_counter()
            if done.status_code != 200:
                raise RuntimeError(f"label refused: {done.status_code} {done.text}")
            times["next"].append(middle - start)
            times["label"].append(end - sent)
            times["cycle"].append(middle - start + end - sent)


async def _label_all(
    url: str, tokens: dict[str, str], think: float
) -> list[dict[str, list[float]]]:
    return await asyncio.gather(
        *(_labeller(url, name, token, think) for name, token in tokens.items())
    )


def _summary(per_labeller: list[dict[str, list[float]]], key: str) -> dict[str, float]:
    ms = 1000 * np.concatenate([np.asarray(t[key][WARMUP:]) for t in per_labeller])
    return {"n": int(ms.size), "p50_ms": float(np.percentile(ms, 50)),
            "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()), "mean_ms": float(ms.mean())}  # fmt: skip


def run(labels: int, labellers: int, think: float) -> dict[str, Any]:
    """Serve a fresh run, label it all (thinking ``think`` s per pair), return the result."""
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_label_") as tmp:
        folder = Path(tmp) / "run"
        tokens = _make_run(folder, labels, labellers)
        process, url = _start_server(folder, Path(tmp) / "server.log")
        try:
            start = time.perf_counter()
            per_labeller = asyncio.run(_label_all(url, tokens, think))
            wall = time.perf_counter() - start
        finally:
            process.terminate()
            process.wait(timeout=30)
        with QueryQueue(folder / "comparisons.sqlite") as queue:
            stored = len(queue.label_rows())
    acknowledged = sum(len(t["label"]) for t in per_labeller)
    if stored != acknowledged or stored != labels:
        raise RuntimeError(f"{labels} queries, {acknowledged} acknowledged, {stored} stored")
    stats = {key: _summary(per_labeller, key) for key in ("label", "next", "cycle")}
    return {
        "labels": labels, "labellers": labellers, "think_ms": 1000 * think, "wall_seconds": wall,
        "labels_per_second": labels / wall, "latency": stats,
        "goal_met": stats["label"]["p99_ms"] < GOAL_P99_MS,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
    }  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    """The scenarios as one Markdown table, with the conditions below it."""
    lines = [
        "| scenario | request | n | p50 ms | p90 ms | p99 ms | max ms | labels/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, scenario in result["scenarios"].items():
        for key, request in (("label", "POST /api/label"), ("next", "GET /api/next"),
                             ("cycle", "next + label")):  # fmt: skip
            s = scenario["latency"][key]
            lines.append(f"| {name} (think {scenario['think_ms']:.0f} ms) | {request} | {s['n']} "
                         f"| {s['p50_ms']:.1f} | {s['p90_ms']:.1f} | {s['p99_ms']:.1f} | "
                         f"{s['max_ms']:.1f} | {scenario['labels_per_second']:.0f} |")  # fmt: skip
    loads = "; ".join(
        f"{name} {', '.join(f'{x:.2f}' for x in scenario['load_average_before'])}"
        for name, scenario in result["scenarios"].items()
    )
    met = {name: scenario["goal_met"] for name, scenario in result["scenarios"].items()}
    lines.append(
        f"\n{result['labels']} labels per scenario by {result['labellers']} concurrent "
        f"labellers; {result['cpus']} CPUs (client and server share them); load average "
        f"(1, 5, 15 min) before: {loads}. Goal POST /api/label p99 < {GOAL_P99_MS:.0f} ms: "
        + ", ".join(f"{name} {'met' if ok else 'NOT met'}" for name, ok in met.items())
        + "."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=2000, help="queries labelled per scenario")
    parser.add_argument("--labellers", type=int, default=8, help="concurrent annotators")
    parser.add_argument("--think-ms", type=float, default=200.0,
                        help="mean think time per pair in the paced scenario")  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "label_server.json"
    )
    args = parser.parse_args()
    scenarios = {
        name: run(args.labels, args.labellers, think)
        for name, think in (("saturated", 0.0), ("paced", args.think_ms / 1000))
    }
    result = {"labels": args.labels, "labellers": args.labellers, "goal_p99_ms": GOAL_P99_MS,
              "cpus": os.cpu_count(), "python": platform.python_version(),
              "date": time.strftime("%Y-%m-%d"), "scenarios": scenarios}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
