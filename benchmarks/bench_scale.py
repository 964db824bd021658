"""The plan for 100 machines, measured here and simulated beyond: store, learner, refits, labels.

Over 400 lines: the measurements and the model that reads them belong together (the model's
every parameter is a number one of the parts below wrote), and one file keeps them in step.

Parts (subcommands; each measurement is written to ``benchmarks/results/scale/<part>.json`` the
moment it finishes, and a rerun skips the finished ones unless ``--force``):

- ``store``: the SQLite comparison store (WAL, ``synchronous=FULL``). Comparisons/s appended by
  1, 2, 4, 8 concurrent writer *processes* (``ComparisonStore.append``, batches of 1 and 64);
  human labels/s through the query queue (``QueryQueue.next_for`` + ``QueryQueue.label``, the
  two transactions a label costs) from 1, 2, 4, 8 processes; and a refit's full read
  (``ComparisonStore.load``) at 10k and 100k comparisons. Rows are HalfCheetah-sized: two
  50-step segments of 17 observation and 6 action features, about 10 kB.
- ``learner``: one PPO-KL update (``agents.ppo_kl.ppo_update``, 10 epochs, the 17 -> 6 MLP of
  HalfCheetah) on 2k, 8k, 32k and 128k samples, minibatch 256 (the HalfCheetah preset) and
  batch/32, torch threads 1 and 2; and a Bradley-Terry refit (``train_reward_model``) of 64x64
  ensembles of 1, 3 and 5 members on 250, 1k, 4k and 16k comparisons, a fixed 3 epochs (the
  per-epoch cost; ``prefenv train`` refits until early stopping, at most 60 epochs).
- ``env``: ``prefenv/HalfCheetah-v0`` env steps/s with policy inference on one core (8 sub-envs,
  sync), with and without the learned-reward ensemble: a rollout worker's per-core rate.
- ``simulate``: a Monte-Carlo model of one run on 100 machines built from those numbers (see
  :func:`simulate_iteration`): M rollout workers, one learner, refits every K steps, labels from
  people or a simulated teacher. Writes ``simulation.json``, a table and
  ``benchmarks/figures/scale_simulation.png``.

Usage:
    python benchmarks/bench_scale.py all                 # everything (about 10 min on 2 cores)
    python benchmarks/bench_scale.py store --seconds 3   # one part
    python benchmarks/bench_scale.py simulate            # the model only (reads the JSON files)
    python benchmarks/bench_scale.py report              # Markdown tables of what is measured
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "scale"
FIGURE = HERE / "figures" / "scale_simulation.png"
OBS_DIM, ACT_DIM, SEGMENT_STEPS = 17, 6, 50
"""HalfCheetah's flat observation and action sizes, and B-Pref's segment length."""
WRITERS = (1, 2, 4, 8)
STORE_SIZES = (10_000, 100_000)
UPDATE_BATCHES = (2_048, 8_192, 32_768, 131_072)
REFIT_SIZES = (250, 1_000, 4_000, 16_000)
REFIT_MEMBERS = (1, 3, 5)
REFIT_EPOCHS = 3


# -- result files ---------------------------------------------------------------------------


class ResultFile:
    """One part's measurements, ``{"cells": {key: result}}``, rewritten after every cell.

    Args:
        name: the file's stem under :data:`RESULTS`.
        force: start empty (measure every cell again) instead of keeping the finished cells.
    """

    def __init__(self, name: str, force: bool = False) -> None:
        self.path = RESULTS / f"{name}.json"
        self.data: dict[str, Any] = {"cells": {}}
        if self.path.is_file() and not force:
            self.data = json.loads(self.path.read_text())

    def has(self, key: str) -> bool:
        return key in self.data["cells"]

    def cell(self, key: str) -> dict[str, Any]:
        if not self.has(key):
            raise KeyError(
                f"{self.path.name} has no measurement {key!r}: run "
                f"`python benchmarks/bench_scale.py {self.path.stem.split('_')[0]}` first"
            )
        return self.data["cells"][key]

    def put(self, key: str, result: dict[str, Any]) -> None:
        """Store one finished cell with the conditions it ran under, atomically."""
        self.data["cells"][key] = {
            **result,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_1min_after": os.getloadavg()[0],
        }
        self.data["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        os.replace(partial, self.path)


def _quantiles(seconds: Sequence[float]) -> dict[str, float]:
    ms = 1000 * np.asarray(seconds, dtype=float)
    if ms.size == 0:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max())}  # fmt: skip


# -- part 1: the comparison store -----------------------------------------------------------


def _pairs(n: int, seed: int) -> list[tuple[Any, Any]]:
    """``n`` HalfCheetah-sized segment pairs of random features."""
    from prefenv.records import Segment

    rng = np.random.default_rng(seed)

    def segment() -> Segment:
        return Segment(rng.normal(size=(SEGMENT_STEPS + 1, OBS_DIM)),
                       rng.uniform(-1, 1, (SEGMENT_STEPS, ACT_DIM)),
                       rng.normal(size=SEGMENT_STEPS))  # fmt: skip

    return [(segment(), segment()) for _ in range(n)]


def _comparisons(n: int, seed: int) -> list[Any]:
    """``n`` comparisons labelled by their true returns (1.0: the second segment's is higher)."""
    from prefenv.records import Comparison

    return [
        Comparison(a, b, float(b.true_rewards.sum() > a.true_rewards.sum()), teacher="oracle")
        for a, b in _pairs(n, seed)
    ]


def _append_worker(
    path: str, batch: int, seconds: float, seed: int, barrier: Any, out: Any
) -> None:
    """One writer process: append ``batch``-sized transactions for ``seconds``."""
    from prefenv.store import ComparisonStore

    pool = _comparisons(max(batch, 64), seed)
    latencies: list[float] = []
    with ComparisonStore(path) as store:
        barrier.wait()
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            offset = (len(latencies) * batch) % len(pool)
            chunk = (pool + pool)[offset : offset + batch]
            began = time.perf_counter()
            store.append(chunk)
            latencies.append(time.perf_counter() - began)
        elapsed = time.perf_counter() - start
    out.put({"rows": len(latencies) * batch, "seconds": elapsed, "latencies": latencies})


def _label_worker(path: str, annotator: str, seconds: float, barrier: Any, out: Any) -> None:
    """One label-server process: hand out and label queries as fast as it can for ``seconds``."""
    from prefenv.queue import QueryQueue

    cycles: list[float] = []
    labels: list[float] = []
    with QueryQueue(path) as queue:
        barrier.wait()
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            began = time.perf_counter()
            query = queue.next_for(annotator)
            if query is None:
                break
            middle = time.perf_counter()
            queue.label(annotator, query.public_id, "left")
            labels.append(time.perf_counter() - middle)
            cycles.append(time.perf_counter() - began)
        elapsed = time.perf_counter() - start
    out.put({"rows": len(labels), "seconds": elapsed, "latencies": labels, "cycles": cycles})


def _run_processes(target: Callable[..., None], args: list[tuple[Any, ...]]) -> list[dict]:
    """Start one spawned process per argument tuple (each gets a barrier and a result queue)."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(len(args)), ctx.Queue()
    processes = [ctx.Process(target=target, args=(*a, barrier, out)) for a in args]
    for process in processes:
        process.start()
    results = [out.get(timeout=600) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        if process.exitcode != 0:
            raise RuntimeError(f"a benchmark process exited with {process.exitcode}")
    return results


def _concurrent_summary(results: list[dict], processes: int, **extra: Any) -> dict[str, Any]:
    rows = sum(r["rows"] for r in results)
    window = max(r["seconds"] for r in results)
    summary = {"processes": processes, **extra, "rows": rows, "seconds": window,
               "rows_per_s": rows / window,
               "transactions_per_s": sum(len(r["latencies"]) for r in results) / window,
               "latency": _quantiles([t for r in results for t in r["latencies"]])}  # fmt: skip
    if "cycles" in results[0]:
        summary["cycle"] = _quantiles([t for r in results for t in r["cycles"]])
    return summary


def store_writes(results: ResultFile, seconds: float) -> None:
    """Comparisons/s appended by 1-8 writer processes, batches of 1 and 64."""
    from prefenv.store import ComparisonStore

    for batch in (1, 64):
        for writers in WRITERS:
            key = f"append_b{batch}_w{writers}"
            if results.has(key):
                continue
            with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
                path = str(Path(tmp) / "comparisons.sqlite")
                ComparisonStore(path).close()
                runs = _run_processes(
                    _append_worker, [(path, batch, seconds, i) for i in range(writers)]
                )
            results.put(key, _concurrent_summary(runs, writers, batch=batch))
            print(key, f"{results.cell(key)['rows_per_s']:.0f} comparisons/s", flush=True)


def queue_labels(results: ResultFile, seconds: float, queries: int = 6_000) -> None:
    """Human labels/s (next_for + label) from 1-8 label-server processes on one store."""
    from prefenv.queue import QueryQueue

    pairs = _pairs(256, seed=1)
    for processes in WRITERS:
        key = f"label_p{processes}"
        if results.has(key):
            continue
        with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
            path = str(Path(tmp) / "comparisons.sqlite")
            with QueryQueue(path, create=True) as queue:
                names = [f"annotator{i}" for i in range(processes)]
                for name in names:
                    queue.add_annotator(name)
                posted = [pairs[i % len(pairs)] for i in range(queries)]
                queue.post(posted, run="bench", round=0, media=[{"kind": "text"}] * queries)
            runs = _run_processes(_label_worker, [(path, name, seconds) for name in names])
        summary = _concurrent_summary(runs, processes, queries_posted=queries)
        results.put(key, {**summary, "ran_out": summary["rows"] >= queries})
        print(key, f"{results.cell(key)['rows_per_s']:.0f} labels/s", flush=True)


def store_reads(results: ResultFile) -> None:
    """A refit's full read at 10k and 100k comparisons, and a 1k-row incremental read."""
    from prefenv.store import ComparisonStore

    if all(results.has(f"read_n{size}") for size in STORE_SIZES):
        return
    pool = _comparisons(1_000, seed=2)
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        path = Path(tmp) / "comparisons.sqlite"
        with ComparisonStore(path) as store:
            written, write_seconds = 0, 0.0
            for size in STORE_SIZES:
                while written < size:
                    began = time.perf_counter()
                    store.append(pool)
                    write_seconds += time.perf_counter() - began
                    written += len(pool)
                began = time.perf_counter()
                loaded = len(store.load(labelled_only=True))
                full = time.perf_counter() - began
                began = time.perf_counter()
                recent = len(store.load(labelled_only=True, since_id=written - 1_000))
                incremental = time.perf_counter() - began
                files = [path, path.with_name(path.name + "-wal")]
                results.put(f"read_n{size}", {
                    "comparisons": loaded, "full_read_s": full, "incremental_rows": recent,
                    "incremental_read_s": incremental,
                    "bytes": sum(f.stat().st_size for f in files if f.exists()),
                    "bulk_append_b1000_rows_per_s": written / write_seconds})  # fmt: skip
                print(f"read_n{size}", f"{full:.2f} s", flush=True)


# -- part 2: the learner and the refits -----------------------------------------------------


def _update_seconds(samples: int, minibatch: int, device: str, epochs: int = 10) -> float:
    """Wall seconds of one PPO-KL update on ``samples`` random HalfCheetah-sized transitions."""
    import torch
    from gymnasium import spaces

    from agents.policies import MLPActorCritic
    from agents.ppo_kl import ClippedAdam, PPOKLConfig, RolloutBatch, ppo_update

    torch.manual_seed(0)
    box = spaces.Box(-1.0, 1.0, (OBS_DIM,), np.float32)
    policy = MLPActorCritic(box, spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)).to(device)
    obs = torch.randn(samples, OBS_DIM, device=device)
    actions = 0.5 * torch.randn(samples, ACT_DIM, device=device)
    with torch.no_grad():
        log_probs, _, values = policy.evaluate(obs, actions)
    noise = torch.randn(2, samples, device=device)
    batch = RolloutBatch(obs, actions, log_probs, values, noise[0], values + noise[1])
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = ClippedAdam(trainable, 3e-4, eps=1e-5, max_grad_norm=0.5)
    config = PPOKLConfig(batch_size=minibatch, n_epochs=epochs, device=device, torch_threads=None)
    rng = np.random.default_rng(0)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    began = time.perf_counter()
    ppo_update(policy, optimizer, batch, config, rng)
    sync()
    return time.perf_counter() - began


UPDATE_CELL_LIMIT_S = 30.0
"""A thread setting whose update took longer than this skips its larger batches (2 threads on a
loaded 2-core machine can run 50x slower than 1); they are measured on a later, quieter rerun."""


def learner_updates(results: ResultFile, device: str = "cpu") -> None:
    """PPO-KL update seconds vs batch size, minibatch 256 and batch/32, threads 1 and 2."""
    import torch

    _update_seconds(2_048, 256, device, epochs=1)  # warm-up: first-call allocations, kernels
    suffix = "" if device == "cpu" else f"_{device.replace(':', '')}"
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for rule in ("mb256", "mb_over32"):
            for samples in UPDATE_BATCHES:
                key = f"update_{rule}_n{samples}_t{threads}{suffix}"
                if results.has(key):
                    if results.cell(key)["seconds"] > UPDATE_CELL_LIMIT_S:
                        break
                    continue
                minibatch = 256 if rule == "mb256" else samples // 32
                seconds = _update_seconds(samples, minibatch, device)
                results.put(key, {"samples": samples, "minibatch": minibatch, "threads": threads,
                                  "device": device, "epochs": 10, "seconds": seconds,
                                  "sample_epochs_per_s": 10 * samples / seconds})  # fmt: skip
                print(key, f"{seconds:.2f} s", flush=True)
                if seconds > UPDATE_CELL_LIMIT_S:
                    print(f"  {threads} threads: larger batches skipped this time", flush=True)
                    break
    torch.set_num_threads(1)


def learner_refits(results: ResultFile) -> None:
    """Bradley-Terry refit seconds vs comparisons and ensemble size, a fixed number of epochs."""
    import torch
    from gymnasium import spaces

    from prefenv.reward_models import RewardEnsemble
    from prefenv.reward_training import RewardTrainConfig, train_reward_model

    torch.set_num_threads(1)
    obs_space = spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float64)
    act_space = spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)
    config = RewardTrainConfig(max_epochs=REFIT_EPOCHS, patience=REFIT_EPOCHS, seed=0)
    pool = _comparisons(max(REFIT_SIZES), seed=3)
    for members in REFIT_MEMBERS:
        for size in REFIT_SIZES:
            key = f"refit_k{members}_n{size}"
            if results.has(key):
                continue
            torch.manual_seed(0)
            model = RewardEnsemble.for_spaces(obs_space, act_space, n_members=members,
                                              hidden_sizes=(64, 64))  # fmt: skip
            metrics = train_reward_model(model, pool[:size], config)
            per_epoch = metrics.seconds / (REFIT_EPOCHS * members)
            results.put(key, {"comparisons": size, "members": members, "epochs": REFIT_EPOCHS,
                              "seconds": metrics.seconds, "seconds_per_member_epoch": per_epoch,
                              "val_accuracy": metrics.val_accuracy})  # fmt: skip
            print(key, f"{metrics.seconds:.2f} s", flush=True)


def env_rates(results: ResultFile, seconds: float) -> None:
    """HalfCheetah env steps/s with policy inference on one core, with and without the
    learned reward; chunk times of 256 vector steps (2,048 env steps) for the model's spread."""
    import torch

    import prefenv
    from agents.policies import MLPActorCritic
    from prefenv.reward_models import RewardEnsemble

    torch.set_num_threads(1)
    for learned in (False, True):
        key = f"env_halfcheetah_{'learned' if learned else 'plain'}"
        if results.has(key):
            continue
        probe = prefenv.make_vec("prefenv/HalfCheetah-v0", 1)
        spaces_ = (probe.single_observation_space, probe.single_action_space)
        probe.close()
        model = RewardEnsemble.for_spaces(*spaces_, n_members=3, hidden_sizes=(64, 64))
        env = prefenv.make_vec("prefenv/HalfCheetah-v0", 8, reward_model=model if learned else None,
                               vectorization_mode="sync")  # fmt: skip
        policy = MLPActorCritic(*spaces_)
        low, high = spaces_[1].low, spaces_[1].high
        obs, _ = env.reset(seed=0)
        chunks: list[float] = []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            began = time.perf_counter()
            for _ in range(256):
                with torch.inference_mode():
                    actions, _, _ = policy.act(torch.as_tensor(obs, dtype=torch.float32))
                obs, *_ = env.step(np.clip(actions.numpy(), low, high))
            chunks.append(time.perf_counter() - began)
        env.close()
        params = {"policy_params": sum(p.numel() for p in policy.parameters()),
                  "reward_params": sum(p.numel() for p in model.parameters())}  # fmt: skip
        results.put(key, {"env_steps_per_s": 2048 * len(chunks) / sum(chunks),
                          "chunk_seconds": chunks, "chunk_steps": 2048, "num_envs": 8,
                          "learned_reward": learned, **params})  # fmt: skip
        print(key, f"{results.cell(key)['env_steps_per_s']:.0f} steps/s", flush=True)


ACT_ROWS = (8, 64, 512, 4_096, 16_384)


def policy_forward(results: ResultFile, calls: int = 50) -> None:
    """Seconds of one ``policy.act`` (sampling, one core) on 8 to 16k observation rows: what a
    rollout worker pays per vector step when it runs the policy on every sub-env's row, as the
    built Ray workers do to draw the local run's action noise."""
    import torch
    from gymnasium import spaces

    from agents.policies import MLPActorCritic

    torch.set_num_threads(1)
    box = spaces.Box(-1.0, 1.0, (OBS_DIM,), np.float32)
    policy = MLPActorCritic(box, spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32))
    for rows in ACT_ROWS:
        key = f"act_rows{rows}"
        if results.has(key):
            continue
        obs = torch.randn(rows, OBS_DIM)
        best = float("inf")
        for _ in range(3):  # the least disturbed of three runs of ``calls`` calls
            began = time.perf_counter()
            with torch.inference_mode():
                for _ in range(calls):
                    policy.act(obs)
            best = min(best, (time.perf_counter() - began) / calls)
        results.put(key, {"rows": rows, "seconds": best})
        print(key, f"{1000 * best:.2f} ms", flush=True)


# -- part 3: the simulation -----------------------------------------------------------------

REFIT_EPOCHS_SEEN = (29, 48, 11, 60, 60, 60, 16, 26, 36, 11, 32, 41, 18, 11, 11, 30, 13, 16, 19,
                     20, 12, 14, 39, 11, 11, 11, 12, 17, 11, 16, 11, 15, 12)  # fmt: skip
"""Epochs each ensemble member trained in each refit of a real ``prefenv train`` run (early
stopping, cap 60): HalfCheetah, oracle, 1,000 labels, 11 refits, ensemble 3
(``bench_label_budget.py`` cell ``off_L1000_s21``, its ``loop_state.json``); mean 23.0. Its 11
refits took 66.3 s in all."""
WORKER_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 1584)
"""Rollout workers (one per core) simulated; 1,584 = 99 machines x 16 cores, the 100th machine
being the learner's."""


def _scaled(size: int, sizes: Sequence[int], seconds: Sequence[float]) -> float:
    """Interpolated between measured sizes; beyond them, in proportion to the size (the
    per-item cost of the nearest measured size)."""
    if size <= sizes[0]:
        return float(seconds[0] * size / sizes[0])
    if size >= sizes[-1]:
        return float(seconds[-1] * size / sizes[-1])
    return float(np.interp(size, sizes, seconds))


@dataclass(frozen=True)
class ScaleModel:
    """One PPO-KL preference run on a cluster; :func:`measured_model` fills the measured fields.

    Measured here: ``env_steps_per_s`` (one core: env, policy, learned reward), ``chunk_log_sd``
    (the spread of log chunk seconds: stragglers), ``update_seconds`` at ``update_samples`` (a
    10-epoch update, 1 thread, minibatch max(256, batch / 32)), ``refit_fixed_s`` +
    ``refit_s_per_comparison`` x n (one member-epoch), ``label_capacity_per_s`` (human labels/s
    one store takes), ``read_s_per_comparison`` (a refit's full store read, per row at 100k
    rows), ``weight_bytes`` (policy + reward ensemble, float32), ``act_seconds`` at ``act_rows``
    (one policy forward). Everything else is an assumption.
    """

    env_steps_per_s: float
    chunk_log_sd: float
    update_samples: tuple[int, ...]
    update_seconds: tuple[float, ...]
    refit_fixed_s: float
    refit_s_per_comparison: float
    label_capacity_per_s: float
    read_s_per_comparison: float
    weight_bytes: int
    act_rows: tuple[int, ...]
    act_seconds: tuple[float, ...]
    chunk_steps: int = 2_048
    """Env steps per worker per iteration (8 sub-envs x 256 steps, the measured chunk)."""
    num_envs: int = 8
    """Sub-envs per worker (the measured chunk's)."""
    refit_epochs: float = float(np.mean(REFIT_EPOCHS_SEEN))
    """Epochs per member per refit: the mean a real run took (:data:`REFIT_EPOCHS_SEEN`)."""
    members: int = 3
    """Reward-ensemble members (``prefenv train``'s default)."""
    labels: int = 1_000
    """Labels the refit trains on (the whole budget: the last, costliest refit)."""
    refit_every: int = 100_000
    """Env steps between refits (a 1M-step run with 11 rounds refits about every 90k)."""
    bytes_per_step: int = 4 * (2 * OBS_DIM + ACT_DIM + 5)
    """What a worker sends back per step: obs and next obs (for the recorder), action, log-prob,
    value, learned and true reward, done; float32."""
    link_bytes_per_s: float = 1.25e9
    """Assumed: the learner's 10 Gbit/s network link."""
    call_latency_s: float = 1e-3
    """Assumed: one Ray actor round trip per iteration (rollout-workers.md measures it)."""
    cores_per_machine: int = 16
    """Assumed cores per machine."""
    seconds_per_label: float = 5.0
    """Assumed: a person's time per pair of clips."""

    def update_time(self, batch: int) -> float:
        """Seconds of one update on ``batch`` samples (see :func:`_scaled`)."""
        return _scaled(batch, self.update_samples, self.update_seconds)

    def act_time(self, rows: int) -> float:
        """Seconds of one policy forward on ``rows`` observations (see :func:`_scaled`)."""
        return _scaled(rows, self.act_rows, self.act_seconds)

    def refit_seconds(self) -> float:
        """One refit on ``labels`` comparisons: the store read, then epochs x members x the
        member-epoch cost."""
        member_epoch = self.refit_fixed_s + self.refit_s_per_comparison * self.labels
        read = self.read_s_per_comparison * self.labels
        return read + self.refit_epochs * self.members * member_epoch


MODES = ("built", "sync", "overlapped")
"""``built``: the Ray workers as built (synchronous; each worker runs the policy on every
sub-env's row to draw the local run's noise); ``sync``: the same with each worker running only
its own rows (its own noise stream; not built); ``overlapped``: ``sync`` plus collecting the next
batch during the update, one iteration of policy lag, and refits on another machine (not built:
off-policy data needs V-trace-like corrections)."""


def simulate_iteration(
    model: ScaleModel, workers: int, mode: str, iterations: int = 200, seed: int = 0
) -> dict[str, Any]:
    """Mean timing of ``iterations`` PPO iterations with ``workers`` rollout workers.

    Each worker runs ``chunk_steps`` env steps in a lognormal time (mean from the measured rate,
    plus in ``built`` mode the policy forward over all ``workers * num_envs`` rows instead of
    its own ``num_envs``; log-sd measured). A synchronous iteration waits for the slowest worker,
    gathers the batch and broadcasts the weights over the learner's link, updates, and a refit of
    :meth:`ScaleModel.refit_seconds` every ``refit_every`` steps (at most one per iteration: the
    loop refits between learn calls) blocks the learner. See :data:`MODES`.

    Returns:
        ``steps_per_s``, the mean seconds per part, ``learner_busy`` (share of the iteration the
        learner computes), ``worker_busy``, the ``bottleneck`` part and
        ``learner_speedup_needed`` (update / (collect + transfer): how much faster the learner
        must be for the workers never to wait).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    rng = np.random.default_rng(seed)
    batch = workers * model.chunk_steps
    mean_chunk = model.chunk_steps / model.env_steps_per_s
    if mode == "built":
        all_rows = model.act_time(workers * model.num_envs) - model.act_time(model.num_envs)
        mean_chunk += model.chunk_steps // model.num_envs * all_rows
    sigma = model.chunk_log_sd
    chunks = rng.lognormal(np.log(mean_chunk) - sigma**2 / 2, sigma, (iterations, workers))
    collect = float(chunks.max(axis=1).mean()) + model.call_latency_s
    machines = -(-workers // model.cores_per_machine)
    transfer = (batch * model.bytes_per_step + machines * model.weight_bytes) / (
        model.link_bytes_per_s
    )
    update = model.update_time(batch)
    overlapped = mode == "overlapped"
    refit = 0.0 if overlapped else model.refit_seconds() * min(1.0, batch / model.refit_every)
    iteration = (
        max(collect + transfer, update) if overlapped else collect + transfer + update + refit
    )
    parts = {"collect": collect, "transfer": transfer, "update": update, "refit": refit}
    return {
        "workers": workers, "batch": batch, "mode": mode,
        "steps_per_s": batch / iteration, "iteration_s": iteration,
        **{f"{name}_s": value for name, value in parts.items()},
        "learner_busy": (update + refit) / iteration, "worker_busy": mean_chunk / iteration,
        "bottleneck": max(parts, key=parts.__getitem__),
        "learner_speedup_needed": update / (collect + transfer),
    }  # fmt: skip


def _fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares ``(intercept, slope)``, the intercept kept >= 0."""
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return max(float(intercept), 0.0), float(slope)


def measured_model(**assumptions: Any) -> ScaleModel:
    """A :class:`ScaleModel` from the result files (1 thread), with ``assumptions`` replaced."""
    store, learner, env = ResultFile("store"), ResultFile("learner"), ResultFile("env")
    rate = env.cell("env_halfcheetah_learned")
    chunks = np.asarray(rate["chunk_seconds"])
    updates = [learner.cell(f"update_{'mb256' if n < 8192 else 'mb_over32'}_n{n}_t1")
               for n in UPDATE_BATCHES]  # fmt: skip
    refits = [learner.cell(f"refit_k3_n{n}") for n in REFIT_SIZES]
    refit_fixed, refit_slope = _fit_line(
        [r["comparisons"] for r in refits], [r["seconds_per_member_epoch"] for r in refits]
    )
    labels = max(store.cell(f"label_p{p}")["rows_per_s"] for p in WRITERS)
    read = store.cell(f"read_n{STORE_SIZES[-1]}")
    model = ScaleModel(
        env_steps_per_s=rate["env_steps_per_s"], chunk_log_sd=float(np.log(chunks).std()),
        update_samples=tuple(UPDATE_BATCHES),
        update_seconds=tuple(u["seconds"] for u in updates),
        refit_fixed_s=refit_fixed, refit_s_per_comparison=refit_slope,
        label_capacity_per_s=labels,
        read_s_per_comparison=read["full_read_s"] / read["comparisons"],
        weight_bytes=4 * (rate["policy_params"] + rate["reward_params"]),
        act_rows=ACT_ROWS, act_seconds=tuple(env.cell(f"act_rows{n}")["seconds"] for n in ACT_ROWS),
    )  # fmt: skip
    return replace(model, **assumptions)


def run_hours(
    model: ScaleModel, workers: int, annotators: int | None, steps: int = 1_000_000
) -> float:
    """Hours of a ``steps``-step, ``model.labels``-label run: env and learner (synchronous), or
    the people's labelling time when that is longer (training is paced by the answers);
    ``annotators`` None: a simulated teacher (its labels take no time here)."""
    compute = steps / simulate_iteration(model, workers, "built")["steps_per_s"]
    people = 0.0 if annotators is None else model.labels * model.seconds_per_label / annotators
    return max(compute, people) / 3600


VALIDATION_RUN = {"cell": "off_L1000_s21", "steps": 299_008, "refits": 11, "mean_labels": 721,
                  "measured_s": 214.96, "measured_refit_s": 66.3}  # fmt: skip
"""A real local run to check the model against: ``bench_label_budget.py``'s HalfCheetah cell
``off_L1000_s21`` (8 sub-envs x 256 steps, minibatch 256, ensemble 3, labels 100 to 1,000 over 11
refits), its ``train_wall_s`` (results/label_budget) and its mean labels per refit."""


def validation(model: ScaleModel) -> dict[str, Any]:
    """The model's wall time for :data:`VALIDATION_RUN` (one worker: the local run)."""
    run = VALIDATION_RUN
    local = replace(model, labels=run["mean_labels"], refit_every=run["steps"] // run["refits"])
    timing = simulate_iteration(local, 1, "built")
    iterations = run["steps"] / timing["batch"]
    return {**run, "predicted_s": iterations * timing["iteration_s"],
            "predicted_refit_s": iterations * timing["refit_s"]}  # fmt: skip


def simulation(model: ScaleModel) -> dict[str, Any]:
    """The worker sweep in every mode, the store's label saturation and run times."""
    rows = [simulate_iteration(model, m, mode) for mode in MODES for m in WORKER_COUNTS]
    saturation = model.label_capacity_per_s * model.seconds_per_label
    hours = {f"workers{m}_{'teacher' if t is None else f'people{t}'}": run_hours(model, m, t)
             for m in (1, 4, 1584) for t in (None, 10, 100)}  # fmt: skip
    return {"model": asdict(model), "refit_seconds": model.refit_seconds(), "rows": rows,
            "annotators_saturating_store": saturation, "run_hours_1M_steps": hours,
            "validation": validation(model),
            "learner_bound_steps_per_s": model.update_samples[-1] / model.update_seconds[-1],
            }  # fmt: skip


def plot(result: dict[str, Any], path: Path | None = None) -> None:
    """Three panels: system steps/s, busy shares, the store against annotators (to ``path``,
    default :data:`FIGURE`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = ScaleModel(**result["model"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for mode, marker, color in zip(MODES, "o^s", ("C0", "C1", "C2"), strict=True):
        rows = [r for r in result["rows"] if r["mode"] == mode]
        workers = [r["workers"] for r in rows]
        axes[0].loglog(workers, [r["steps_per_s"] for r in rows], marker + "-", color=color,
                       label=mode)  # fmt: skip
        axes[1].semilogx(workers, [r["learner_busy"] for r in rows], marker + "-", color=color,
                         label=f"learner, {mode}")  # fmt: skip
        axes[1].semilogx(workers, [r["worker_busy"] for r in rows], marker + ":", color=color,
                         alpha=0.6, label=f"workers, {mode}")  # fmt: skip
    workers = np.asarray(WORKER_COUNTS, float)
    axes[0].loglog(workers, workers * model.env_steps_per_s, ":", color="gray",
                   label="workers alone (M x measured rate)")  # fmt: skip
    axes[0].axhline(result["learner_bound_steps_per_s"], color="red", lw=0.8,
                    label="one CPU-core learner's ceiling")  # fmt: skip
    axes[0].set(xlabel="rollout workers M (one core each)", ylabel="env steps/s of the run",
                title="One run: throughput vs workers")  # fmt: skip
    axes[1].set(xlabel="rollout workers M", ylabel="share of wall time busy",
                title="Who waits (simulated)", ylim=(0, 1.05))  # fmt: skip
    people = np.logspace(0, 4, 50)
    axes[2].loglog(people, people / model.seconds_per_label, label="labels/s people give")
    axes[2].axhline(model.label_capacity_per_s, color="red", lw=0.8,
                    label="labels/s one SQLite store took here")  # fmt: skip
    axes[2].axvline(result["annotators_saturating_store"], color="gray", ls=":")
    axes[2].set(xlabel=f"annotators ({model.seconds_per_label:.0f} s per label, assumed)",
                ylabel="labels/s", title="Human labels vs the store")  # fmt: skip
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle("PPO-KL on HalfCheetah with learned reward: measured rates, simulated cluster")
    fig.tight_layout()
    path = FIGURE if path is None else path
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- report and command line ----------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _show(results: ResultFile, key: str, show: Callable[[dict], str]) -> str:
    """``show(cell)``, or "-" for a cell not measured (yet)."""
    return show(results.cell(key)) if results.has(key) else "-"


def _rate(c: dict) -> str:
    return f"{c['rows_per_s']:.0f} ({c['latency']['p50_ms']:.1f} / {c['latency']['p99_ms']:.0f})"


def _cycle(c: dict) -> str:
    return f"{c['cycle']['p50_ms']:.1f} / {c['cycle']['p99_ms']:.0f}"


def _update(c: dict) -> str:
    return f"{c['seconds']:.2f} ({c['sample_epochs_per_s'] / 1e3:.0f}k)"


def _refit(c: dict) -> str:
    return f"{c['seconds']:.1f} ({1000 * c['seconds_per_member_epoch']:.0f} ms)"


def report_store() -> str:
    store = ResultFile("store")
    writes = [[w, *(_show(store, f"append_b{b}_w{w}", _rate) for b in (1, 64))] for w in WRITERS]
    labels = [[p, _show(store, f"label_p{p}", _rate), _show(store, f"label_p{p}", _cycle)]
              for p in WRITERS]  # fmt: skip
    reads = [[f"{n:,}", *(_show(store, f"read_n{n}", show) for show in (
                 lambda c: f"{c['bytes'] / 1e6:.0f}", lambda c: f"{c['full_read_s']:.1f}",
                 lambda c: f"{c['incremental_read_s']:.2f}"))] for n in STORE_SIZES]  # fmt: skip
    return "\n\n".join([
        _table(["writer processes", "batch 1: comparisons/s (append p50 / p99 ms)",
                "batch 64: comparisons/s (p50 / p99 ms)"], writes),
        _table(["label-server processes", "labels/s (label p50 / p99 ms)",
                "next_for + label p50 / p99 ms"], labels),
        _table(["comparisons", "store MB", "full read s (a refit's load)",
                "last 1,000 rows s (load since_id)"], reads),
    ])  # fmt: skip


def report_learner() -> str:
    learner = ResultFile("learner")
    rules = [(rule, t) for t in (1, 2) for rule in ("mb256", "mb_over32")]
    updates = [[f"{n:,}", *(_show(learner, f"update_{rule}_n{n}_t{t}", _update)
                            for rule, t in rules)] for n in UPDATE_BATCHES]  # fmt: skip
    refits = [[f"{n:,}", *(_show(learner, f"refit_k{k}_n{n}", _refit) for k in REFIT_MEMBERS)]
              for n in REFIT_SIZES]  # fmt: skip
    return "\n\n".join([
        _table(["samples", "mb 256, 1 thread: s (sample-epochs/s)", "mb batch/32, 1 thread",
                "mb 256, 2 threads", "mb batch/32, 2 threads"], updates),
        _table(["comparisons", *(f"ensemble {k}: s for {REFIT_EPOCHS} epochs (per member-epoch)"
                                 for k in REFIT_MEMBERS)], refits),
    ])  # fmt: skip


def report_env() -> str:
    env = ResultFile("env")
    rows = []
    for kind in ("plain", "learned"):
        key = f"env_halfcheetah_{kind}"
        if env.has(key):
            chunks = env.cell(key)["chunk_seconds"]
            rate = env.cell(key)["env_steps_per_s"]
            rows.append(
                [kind, f"{rate:.0f}", len(chunks), f"{np.std(chunks) / np.mean(chunks):.2f}"]
            )
    act = [[f"{n:,}", _show(env, f"act_rows{n}", lambda c: f"{1000 * c['seconds']:.2f}")]
           for n in ACT_ROWS]  # fmt: skip
    return "\n\n".join(
        [
            _table(
                ["reward", "env steps/s (1 core)", "chunks of 2,048 steps", "chunk time CV"], rows
            ),
            _table(["policy rows", "policy.act ms (1 core)"], act),
        ]
    )


def report_simulation() -> str:
    path = RESULTS / "simulation.json"
    if not path.is_file():
        return "(no simulation yet: `python benchmarks/bench_scale.py simulate`)"
    result = json.loads(path.read_text())
    by_mode = {(r["mode"], r["workers"]): r for r in result["rows"]}
    rows = []
    for m in WORKER_COUNTS:
        b, s, o = (by_mode[(mode, m)] for mode in MODES)
        rows.append([m, f"{b['steps_per_s']:,.0f}", f"{b['learner_busy']:.0%}",
                     f"{b['worker_busy']:.0%}", b["bottleneck"], f"{s['steps_per_s']:,.0f}",
                     s["bottleneck"], f"{o['steps_per_s']:,.0f}",
                     f"{s['learner_speedup_needed']:.1f}x"])  # fmt: skip
    hours = result["run_hours_1M_steps"]
    who = ("teacher", "people10", "people100")
    runs = [[m, *(f"{hours[f'workers{m}_{w}']:.2f}" for w in who)] for m in (1, 4, 1584)]
    check = result["validation"]
    model = result["model"]
    return "\n\n".join([
        _table(["workers M", "built: steps/s", "learner busy", "workers busy", "bottleneck",
                "sync, own rows: steps/s", "bottleneck", "overlapped: steps/s",
                "learner speed-up for no wait (sync)"], rows),
        _table(["workers M", "1M-step run, simulated teacher: h", "10 people: h", "100 people: h"],
               runs),
        f"Refit (ensemble 3, {model['labels']} labels, {model['refit_epochs']:.1f} epochs, store "
        f"read included): {result['refit_seconds']:.1f} s. One store took "
        f"{model['label_capacity_per_s']:.0f} labels/s here: "
        f"{result['annotators_saturating_store']:.0f} people at {model['seconds_per_label']:.0f} s "
        f"per label. Check against a real run ({check['cell']}, {check['steps']:,} steps on one "
        f"core): the model says {check['predicted_s']:.0f} s ({check['predicted_refit_s']:.0f} s "
        f"of it refits), the run took {check['measured_s']:.0f} s ({check['measured_refit_s']:.0f} "
        "s of it refits).",
    ])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=("store", "learner", "env", "simulate", "all", "report"))
    parser.add_argument(
        "--seconds",
        type=float,
        default=3.0,
        help="measuring window of each store cell (the env cell runs 3x this)",
    )
    parser.add_argument("--force", action="store_true", help="measure finished cells again")
    parser.add_argument("--device", default="cpu", help="torch device of the learner part")
    parser.add_argument("--cores-per-machine", type=int, default=16, help="simulation assumption")
    parser.add_argument("--seconds-per-label", type=float, default=5.0,
                        help="simulation assumption: a person's time per pair")  # fmt: skip
    args = parser.parse_args(argv)
    if args.part in ("store", "all"):
        store = ResultFile("store", args.force)
        store_writes(store, args.seconds)
        queue_labels(store, args.seconds)
        store_reads(store)
    if args.part in ("learner", "all"):
        learner = ResultFile("learner", args.force)
        learner_updates(learner, args.device)
        learner_refits(learner)
    if args.part in ("env", "all"):
        env = ResultFile("env", args.force)
        env_rates(env, 3 * args.seconds)
        policy_forward(env)
    if args.part in ("simulate", "all"):
        model = measured_model(cores_per_machine=args.cores_per_machine,
                               seconds_per_label=args.seconds_per_label)  # fmt: skip
        result = simulation(model)
        (RESULTS / "simulation.json").write_text(json.dumps(result, indent=1))
        plot(result)
    if args.part in ("simulate", "report", "all"):
        sections = [report_store(), report_learner(), report_env(), report_simulation()]
        print("\n\n".join(sections))


if __name__ == "__main__":
    sys.exit(main())
