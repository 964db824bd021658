"""Grid throughput (issue 16): cells per hour, local worker processes vs a local Ray instance.

The same grid runs twice in one process, into fresh folders: once on
:class:`prefenv.app.sweep.LocalBackend` (``--workers`` processes, one per cell) and once on
:class:`prefenv.app.sweep.RayBackend` (a local Ray instance of ``--workers`` CPUs, started and
stopped here; its start-up is timed apart). A cell is a short ``prefenv train`` run, so the numbers
show each backend's per-cell overhead (process start and imports, or Ray task dispatch) against
the training itself. Results go to ``benchmarks/results/sweep_throughput.json``.

Usage::

    python benchmarks/bench_sweep_throughput.py              # 8 cells of 4,800 Reacher steps
    python benchmarks/bench_sweep_throughput.py --steps 20480 --env prefenv/HalfCheetah-v0
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

from prefenv.app.spec import write_json_atomic
from prefenv.app.sweep import LocalBackend, RayBackend, Sweep
from prefenv.app.sweep_grid import Grid

RESULT = Path(__file__).parent / "results" / "sweep_throughput.json"


def grid(env: str, steps: int, cells: int) -> Grid:
    base = {"env": env, "steps": steps, "initial_steps": 400, "rounds": 3, "n_envs": 2,
            "n_steps": 100, "eval_episodes": 1, "queries": 24}  # fmt: skip
    return Grid(base=base, axes={"seed": list(range(cells))}, retries=0)


def timed(backend_name: str, the_grid: Grid, workers: int, root: Path) -> dict:
    out = root / backend_name
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    if backend_name == "local":
        backend = LocalBackend(workers)
        startup = 0.0
    else:
        import ray

        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        backend = RayBackend()
        startup = time.perf_counter() - started
    run_started = time.perf_counter()
    outcome = Sweep(the_grid, out).run(backend, progress=False)
    seconds = time.perf_counter() - run_started
    if backend_name == "ray":
        import ray

        ray.shutdown()
    cells = len(outcome.done)
    assert not outcome.failed, outcome.failed
    cell_seconds = [json.loads(p.read_text())["seconds"] for p in (out / "results").iterdir()]
    return {
        "backend": backend_name, "cells": cells, "seconds": round(seconds, 1),
        "startup_seconds": round(startup, 1), "cells_per_hour": round(cells / seconds * 3600, 1),
        "mean_cell_seconds": round(sum(cell_seconds) / len(cell_seconds), 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="prefenv/Reacher-v0")
    parser.add_argument("--steps", type=int, default=4800)
    parser.add_argument("--cells", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="processes / Ray CPUs")
    args = parser.parse_args()
    the_grid = grid(args.env, args.steps, args.cells)
    root = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    rows = [timed(name, the_grid, args.workers, root) for name in ("local", "ray")]
    shutil.rmtree(root, ignore_errors=True)
    write_json_atomic(RESULT, {"args": vars(args), "load_after": os.getloadavg()[0], "rows": rows})
    print("| backend | cells | wall s | Ray start s | cells/hour | mean s per cell |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['cells']} | {r['seconds']} | {r['startup_seconds']} | "
              f"{r['cells_per_hour']} | {r['mean_cell_seconds']} |")  # fmt: skip


if __name__ == "__main__":
    main()
