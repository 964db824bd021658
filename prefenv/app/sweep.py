"""``prefenv sweep``: run a grid of training runs on Ray, or in local worker processes.

    from prefenv.app.sweep import Sweep, LocalBackend, RayBackend
    from prefenv.app.sweep_grid import load_grid

    sweep = Sweep(load_grid("grid.toml"), "runs/grid")
    outcome = sweep.run(RayBackend())         # or LocalBackend(workers=2): no Ray needed
    print(outcome.table)                      # runs/grid/results.md, .csv and figure.png

A sweep folder holds::

    OUT/
      grid.json            the grid the sweep was started with (a rerun must keep its settings)
      cells/NAME/          each cell's run folder (prefenv train's, a twin's, or a text run's),
                           with cell.log (its output) and worker.pid (the process running it)
      results/NAME.json    a finished cell's figures, written when it finishes
      results.md, results.csv, figure.png

A rerun skips every cell with a result and resumes the others from their run folders, so a
killed sweep continues where it stopped. A cell that fails (an error, or its process killed) runs
again from its folder up to ``retries`` times; then it is reported as failed and the rest go on.
On Ray, each cell is a task asking for the grid's ``cpus`` and ``gpus``; the run folders must lie
on storage every node sees (the results come back to the driver either way).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from prefenv.app.spec import write_json_atomic
from prefenv.app.sweep_grid import Cell, Grid, GridError

__all__ = [
    "CellFailure",
    "LocalBackend",
    "RayBackend",
    "Sweep",
    "SweepOutcome",
    "backend_for",
    "run_cell",
]

CELLS_DIR, RESULTS_DIR, GRID_FILE, LOCK_FILE = "cells", "results", "grid.json", ".sweep.lock"
LOG_FILE, PID_FILE = "cell.log", "worker.pid"
FAILED = "failed"


class CellFailure(RuntimeError):
    """A cell's run raised, or the process running it died."""


def _flat(summary: Any, prefix: str = "") -> dict[str, Any]:
    """Scalars of a (nested) summary under dotted keys: ``eval.ppo.true_score``."""
    if isinstance(summary, dict):
        flat: dict[str, Any] = {}
        for key, value in summary.items():
            flat |= _flat(value, f"{prefix}{key}.")
        return flat
    if isinstance(summary, bool) or not isinstance(summary, int | float):
        return {}
    return {prefix[:-1]: summary}


def run_cell(cell: dict[str, Any], folder: str, cpus: float) -> dict[str, Any]:
    """Run (or resume) one cell in ``folder``; returns its summary's scalars.

    Runs in the worker (a Ray task or a local worker process): torch gets ``cpus`` threads,
    the output goes to ``folder/cell.log``, and ``folder/worker.pid`` names this process.
    """
    import torch

    from prefenv.app import api
    from prefenv.app.spec import TrainSpec
    from prefenv.app.sweep_grid import text_config
    from prefenv.app.text_runs import run_pipeline
    from prefenv.app.twin import train_true_reward, twin_spec

    spec = Cell.from_dict(cell)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / PID_FILE).write_text(str(os.getpid()))
    torch.set_num_threads(max(1, int(cpus)))
    with open(out / LOG_FILE, "a") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):  # fmt: skip
        print(
            f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: {spec.name}", flush=True
        )
        if spec.kind == "twin":
            summary = train_true_reward(twin_spec(spec.settings), out)
        elif spec.kind == "text":
            summary = run_pipeline(text_config(spec.settings), out)
        elif (out / "run.json").exists():
            summary = api.resume(out, progress=False)
        else:
            summary = api.train(TrainSpec(**spec.settings), out, progress=False)
    return _flat(summary)


class Backend(Protocol):
    """Where cells run: ``submit`` starts one, ``poll`` returns those that ended."""

    capacity: int
    """Cells running at once (Ray: every pending cell; its scheduler places them)."""

    def submit(self, cell: Cell, folder: Path, cpus: float, gpus: float) -> Any: ...

    def poll(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any] | CellFailure]]: ...

    def close(self) -> None: ...


@dataclass(eq=False)  # a handle: hashed by identity
class _Process:
    proc: subprocess.Popen[bytes]
    result: Path
    folder: Path


class LocalBackend:
    """Cells in worker processes on this machine (``prefenv sweep --local``): no Ray needed.

    Each cell is ``python -m prefenv.app.sweep_worker``; a killed or failing process fails the
    cell (and the sweep runs it again from its folder).

    Args:
        workers: cells at once (default: the machine's cores).
    """

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"--workers must be at least 1, got {workers}")
        self.capacity = workers if workers is not None else os.cpu_count() or 1

    def submit(self, cell: Cell, folder: Path, cpus: float, gpus: float) -> _Process:
        folder.mkdir(parents=True, exist_ok=True)
        result = folder / ".sweep_result.json"
        result.unlink(missing_ok=True)
        payload = json.dumps({"cell": cell.to_dict(), "folder": str(folder), "cpus": cpus})
        with open(folder / LOG_FILE, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "prefenv.app.sweep_worker", payload, str(result)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        return _Process(proc, result, folder)

    def poll(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any] | CellFailure]]:
        ended = []
        for handle in handles:
            code = handle.proc.poll()
            if code is None:
                continue
            if code == 0 and handle.result.is_file():
                ended.append((handle, json.loads(handle.result.read_text())))
            else:
                ended.append((handle, CellFailure(f"worker exited with {code}: "
                                                  f"{_tail(handle.folder / LOG_FILE)}")))  # fmt: skip
        if not ended:
            time.sleep(0.2)
        return ended

    def close(self) -> None:
        """Nothing is left running: the sweep waits for every process it started."""


class RayBackend:
    """Cells as Ray tasks: a local instance with this machine's cores, or a cluster.

    Args:
        address: a cluster to join (``ray start --head`` printed it); None starts a local
            instance (or uses the one this process already started).
    """

    capacity = 1 << 30

    def __init__(self, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ImportError(
                "prefenv sweep runs on Ray, which is not installed: pip install 'prefenv[ray]', "
                "or run the cells in local worker processes with prefenv sweep --local"
            ) from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:  # the workers inherit this environment (MUJOCO_GL, threads, paths)
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        self.task = ray.remote(max_retries=0)(run_cell)  # retries are the sweep's, not Ray's

    def submit(self, cell: Cell, folder: Path, cpus: float, gpus: float) -> Any:
        """Raises ValueError for a cell no node of the cluster can hold (Ray would wait forever)."""
        have = self.ray.cluster_resources()
        if cpus > have.get("CPU", 0) or gpus > have.get("GPU", 0):
            raise ValueError(
                f"each cell asks for cpus = {cpus:g} and gpus = {gpus:g} ([sweep] in the grid "
                f"file) but the Ray cluster has {have.get('CPU', 0):g} CPUs and "
                f"{have.get('GPU', 0):g} GPUs: lower them, or join a larger cluster (--address)"
            )
        options = {"num_cpus": cpus, "num_gpus": gpus}
        return self.task.options(**options).remote(cell.to_dict(), str(folder), cpus)

    def poll(self, handles: list[Any]) -> list[tuple[Any, dict[str, Any] | CellFailure]]:
        done, _ = self.ray.wait(handles, num_returns=1, timeout=1.0)
        ended: list[tuple[Any, dict[str, Any] | CellFailure]] = []
        for ref in done:
            try:
                ended.append((ref, self.ray.get(ref)))
            except Exception as error:  # a task's error, or its worker process died
                ended.append((ref, CellFailure(f"{type(error).__name__}: {_first_line(error)}")))
        return ended

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def backend_for(local: bool, workers: int | None, address: str | None) -> Backend:
    """Local worker processes (``local``), else Ray (``address``: a cluster to join).

    Raises:
        ValueError: ``workers`` without ``local``.
        ImportError: Ray is asked for and not installed (the message names both fixes).
    """
    if workers is not None and not local:
        raise ValueError("--workers sets the local worker processes: pass it with --local")
    return LocalBackend(workers) if local else RayBackend(address)


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else repr(error)


def _tail(path: Path, lines: int = 3) -> str:
    if not path.is_file():
        return "(no output)"
    text = path.read_text(errors="replace").strip().splitlines()
    return " | ".join(text[-lines:]) if text else "(no output)"


@dataclass(frozen=True)
class SweepOutcome:
    """What a sweep run ended with."""

    done: list[str]
    """Cells with a result (finished now or before)."""
    failed: dict[str, str]
    """Cells that failed every attempt: name -> last error."""
    skipped: list[str]
    """Cells finished by an earlier run (skipped this time)."""
    table: str
    """The Markdown table (also ``OUT/results.md``)."""


class Sweep:
    """A grid's cells, run in ``out`` (see the module docstring for the folder).

    Raises:
        GridError: ``out`` holds a sweep of another grid (other [base], [arms] or kind).
    """

    def __init__(self, grid: Grid, out: str | os.PathLike[str]) -> None:
        self.grid = grid
        self.out = Path(out).resolve()  # workers may start elsewhere: absolute folders
        self.cells = grid.check()
        saved = self.out / GRID_FILE
        if saved.is_file():
            old = json.loads(saved.read_text())
            for key in ("kind", "base", "arms", "twin"):
                if old.get(key) != json.loads(json.dumps(grid.to_dict()[key])):
                    raise GridError(
                        f"{self.out} holds a sweep whose [{'sweep' if key in ('kind', 'twin') else key}] "
                        f"{key} differs from this grid's ({old.get(key)!r}): its finished cells ran "
                        "with those; give this grid another --out (axes may gain values freely)"
                    )

    def folder(self, cell: Cell) -> Path:
        return self.out / CELLS_DIR / cell.name

    def result(self, cell: Cell) -> dict[str, Any] | None:
        """A cell's saved result, or None when it has not finished."""
        path = self.out / RESULTS_DIR / f"{cell.name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def status(self) -> list[tuple[Cell, str]]:
        """Every cell and ``done``, ``failed`` or ``pending``."""
        states = []
        for cell in self.cells:
            result = self.result(cell)
            states.append((cell, "pending" if result is None else result["status"]))
        return states

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / LOCK_FILE, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise GridError(
                    f"another prefenv sweep is running in {self.out}: wait for it, or stop it "
                    "(a stopped sweep resumes when run again)"
                ) from None
            yield

    def run(self, backend: Backend, progress: bool = True) -> SweepOutcome:
        """Run every cell without a result; returns what ended, and writes the report."""
        from tqdm import tqdm

        from prefenv.app.sweep_report import write_report

        with self._lock():
            write_json_atomic(self.out / GRID_FILE, self.grid.to_dict())
            todo = [c for c in self.cells if (self.result(c) or {}).get("status") != "done"]
            skipped = [c.name for c in self.cells if c not in todo]
            failed: dict[str, str] = {}
            with tqdm(total=len(self.cells), initial=len(skipped), unit="cell",
                      disable=not progress, dynamic_ncols=True) as bar:  # fmt: skip
                self._drive(backend, todo, failed, bar)
            table = write_report(self)
        done = [c.name for c, state in self.status() if state == "done"]
        return SweepOutcome(done=done, failed=failed, skipped=skipped, table=table)

    def _drive(self, backend: Backend, todo: list[Cell], failed: dict[str, str], bar: Any) -> None:
        """Keep ``backend`` full until every cell ended: finished, or out of retries."""
        waiting, running = list(todo), {}
        attempts = {c.name: 0 for c in todo}
        started: dict[str, float] = {}
        while waiting or running:
            while waiting and len(running) < backend.capacity:
                cell = waiting.pop(0)
                attempts[cell.name] += 1
                started.setdefault(cell.name, time.time())
                handle = backend.submit(cell, self.folder(cell), self.grid.cpus, self.grid.gpus)
                running[handle] = cell
            for handle, outcome in backend.poll(list(running)):
                cell = running.pop(handle)
                if isinstance(outcome, CellFailure) and attempts[cell.name] <= self.grid.retries:
                    bar.write(f"{cell.name}: attempt {attempts[cell.name]} failed ({outcome}); "
                              "running it again from its folder")  # fmt: skip
                    waiting.insert(0, cell)
                    continue
                self._record(cell, outcome, attempts[cell.name], time.time() - started[cell.name])
                if isinstance(outcome, CellFailure):
                    failed[cell.name] = str(outcome)
                    bar.write(
                        f"{cell.name}: failed {attempts[cell.name]} times, left out: {outcome}"
                    )
                bar.update(1)

    def _record(
        self, cell: Cell, outcome: dict[str, Any] | CellFailure, attempts: int, seconds: float
    ) -> None:
        status = FAILED if isinstance(outcome, CellFailure) else "done"
        write_json_atomic(self.out / RESULTS_DIR / f"{cell.name}.json", {
            **cell.to_dict(), "status": status, "attempts": attempts,
            "seconds": round(seconds, 1), "folder": str(self.folder(cell)),
            "summary": outcome if status == "done" else {},
            "error": str(outcome) if status == FAILED else None,
        })  # fmt: skip


def main(argv: list[str]) -> int:
    """``python -m prefenv.app.sweep_worker PAYLOAD RESULT``: one cell, its result to RESULT."""
    payload, result = json.loads(argv[0]), Path(argv[1])
    try:
        summary = run_cell(payload["cell"], payload["folder"], payload["cpus"])
    except Exception:
        traceback.print_exc()
        return 1
    write_json_atomic(result, summary)
    return 0
