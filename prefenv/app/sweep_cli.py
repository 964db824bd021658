"""``prefenv sweep GRID``: every cell of a grid file, on Ray or in local worker processes.

    prefenv sweep examples/sweep_quick.toml                 # a local Ray instance, this machine's cores
    prefenv sweep grid.toml --address 10.0.0.1:6379        # join a Ray cluster
    prefenv sweep grid.toml --local --workers 2            # no Ray: two worker processes
    prefenv sweep grid.toml --cells                        # the cells and their state, then exit
    prefenv sweep grid.toml --report                       # the table and figure of what finished

The grid file's tables are described in :mod:`prefenv.app.sweep_grid`; the sweep folder and the
rules for reruns, retries and Ray in :mod:`prefenv.app.sweep`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_sweep_parser", "cmd_sweep"]


def add_sweep_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``prefenv sweep`` on the main parser's subcommands."""
    parser = sub.add_parser(
        "sweep", help="run a grid of training runs (a grid file) on Ray or in worker processes"
    )
    parser.add_argument("grid", type=Path, help="grid file (.toml or .yaml)")
    parser.add_argument(
        "--out", type=Path, default=None,
        help="sweep folder (default: runs/sweeps/<grid file name>); a rerun resumes it",
    )  # fmt: skip
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--local", action="store_true",
        help="run the cells in worker processes on this machine (no Ray needed)",
    )  # fmt: skip
    where.add_argument(
        "--address", default=None,
        help="Ray cluster to join (default: start a local Ray instance with this machine's cores)",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=None,
        help="with --local: cells at once (default: the machine's cores)",
    )  # fmt: skip
    parser.add_argument(
        "--cells", action="store_true", help="list the cells and their state, and exit"
    )
    parser.add_argument(
        "--report", action="store_true",
        help="write the table and figure of the finished cells, and exit (runs nothing)",
    )  # fmt: skip


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run (or list, or report) the grid; exit 1 when a cell failed every attempt."""
    from prefenv.app.sweep import Sweep, backend_for
    from prefenv.app.sweep_grid import load_grid
    from prefenv.app.sweep_report import write_report

    out = args.out or Path("runs") / "sweeps" / args.grid.stem
    sweep = Sweep(load_grid(args.grid), out)
    if args.cells:
        for cell, state in sweep.status():
            print(f"{state:>8}  {cell.name}")
        return 0
    if args.report:
        print(write_report(sweep))
        print(f"table: {sweep.out / 'results.md'} (and results.csv, figure.png)")
        return 0
    try:
        backend = backend_for(args.local, args.workers, args.address)
    except ImportError as error:
        print(f"prefenv sweep: {error}", file=sys.stderr)
        return 2
    where = f"{backend.capacity} local worker processes" if args.local else "Ray"
    pending = sum(state != "done" for _, state in sweep.status())
    print(f"prefenv sweep: {len(sweep.cells)} cells ({pending} to run) on {where}\n"
          f"  sweep folder  {sweep.out}\n  if killed     run the same command again", flush=True)  # fmt: skip
    try:
        outcome = sweep.run(backend)
    finally:
        backend.close()
    print(outcome.table)
    print(f"table: {sweep.out / 'results.md'} (and results.csv, figure.png)")
    if outcome.failed:
        print(f"prefenv sweep: {len(outcome.failed)} cells failed every attempt: "
              f"{', '.join(outcome.failed)} (see cells/NAME/cell.log; rerun to try again)",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0
