"""The Python API of ``prefenv train / resume / eval``: the command line is a thin layer over it.

    from prefenv.app import train, resume, evaluate

    summary = train(env="my_pkg:my/Env-v0", out="runs/mine", teacher="noisy", queries=250)
    summary = resume("runs/mine")              # a killed run continues from its last round
    print(evaluate("runs/mine", episodes=10))  # deterministic episodes of the latest agent
    outcome = run_sweep("examples/sweep_quick.toml")  # a grid on Ray (local=True: no Ray)

``train`` takes the fields of :class:`~prefenv.app.spec.TrainSpec` as keywords, with the same
defaults as ``prefenv train`` (the command line reads them from the same dataclass), and returns
the run's summary (what ``summary.json`` holds). Every setting is checked, the env id resolved
and its module imported before anything is written to ``out``; a start that fails after that
removes what it wrote, and an ``overwrite=True`` start that fails puts the old run back.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefenv.app.budget import warn_budget
from prefenv.app.folders import set_aside, undo_failed_start
from prefenv.app.runs import FINAL_EVAL_FILE, LOG_DIR, QUERY_POOL_FILE, TrainingRun, evaluate_run
from prefenv.app.spec import TrainSpec, load_spec, save_spec
from prefenv.errors import CheckpointError

if TYPE_CHECKING:
    from prefenv.app.sweep import SweepOutcome

__all__ = [
    "RUN_ENTRIES",
    "RunExistsError",
    "evaluate",
    "reopen",
    "resume",
    "settings",
    "start",
    "run_sweep",
    "train",
]

STORE_FILES = ("comparisons.sqlite", "comparisons.sqlite-wal", "comparisons.sqlite-shm")
RUN_ENTRIES = (
    "run.json", *STORE_FILES, "loop_state.json", QUERY_POOL_FILE, "rounds.csv",
    "learning_curve.png", "summary.json", "summary.md", "agent", "reward_model", LOG_DIR,
    FINAL_EVAL_FILE,
)  # fmt: skip
"""What a run folder holds: ``overwrite`` replaces these and leaves anything else alone."""
_ROUND_OUTPUTS = tuple(e for e in RUN_ENTRIES if e != "run.json" and e not in STORE_FILES)


class RunExistsError(ValueError):
    """``out`` already holds a run and ``overwrite`` was not asked for."""


def settings(spec: TrainSpec | None = None, **fields: Any) -> TrainSpec:
    """``spec`` (default: the command line's defaults) with ``fields`` replaced, checked.

    Raises:
        ValueError: an unknown field (the message suggests the closest), or a value the run
            cannot use (the message names the option).
    """
    names = [f.name for f in dataclasses.fields(TrainSpec)]
    for name in fields:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f": did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown train setting {name!r}{hint} (settings: {', '.join(names)})")
    return dataclasses.replace(spec or TrainSpec(), **fields) if fields else spec or TrainSpec()


def start(spec: TrainSpec, out: str | os.PathLike[str], overwrite: bool = False) -> TrainingRun:
    """Create run folder ``out`` for ``spec`` and build its live objects (nothing trained yet).

    ``spec.preset == "auto"`` is resolved first (:meth:`TrainSpec.with_preset`): the run folder
    records the agent settings used.

    Issues a :class:`~prefenv.app.budget.BudgetWarning` for each budget problem.

    Raises:
        RunExistsError: ``out`` holds a run and ``overwrite`` is False.
        ValueError: the env, agent or reward model cannot be built from ``spec``; ``out`` is
            then left as it was.
    """
    out = Path(out)
    spec = spec.with_preset()  # the task's tuned settings, recorded in run.json
    if (out / "run.json").exists() and not overwrite:
        raise RunExistsError(
            f"{out} already holds a run: continue it with `prefenv resume --out {out}`, or pass "
            "--overwrite (Python: overwrite=True) to delete it and start again, or choose another "
            "--out"
        )
    spec.check_budget()
    warn_budget(spec)
    with set_aside(out, RUN_ENTRIES if overwrite and out.is_dir() else ()):
        with undo_failed_start(out):
            out.mkdir(parents=True, exist_ok=True)
            save_spec(spec, out)
            return TrainingRun(spec, out)


def reopen(out: str | os.PathLike[str]) -> TrainingRun:
    """The run in ``out``, ready to continue: from its last finished round, or from the start.

    A run killed before its first round finished has no checkpoint: it starts again from
    ``run.json``, keeping the comparisons it had stored (its first round reuses them).

    Raises:
        CheckpointNotFoundError: ``out`` is not a run folder.
        CheckpointError: the comparison store is missing, damaged, foreign or behind the run.
    """
    out = Path(out)
    spec = load_spec(out)
    if (out / "loop_state.json").exists():
        return TrainingRun(spec, out, resume=True)
    for name in _ROUND_OUTPUTS:  # a first round that never finished left only partial outputs
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return TrainingRun(spec, out)


def train(
    spec: TrainSpec | None = None,
    out: str | os.PathLike[str] = "runs/quickstart",
    *,
    overwrite: bool = False,
    progress: bool = True,
    **fields: Any,
) -> dict[str, Any]:
    """Train an agent from preference feedback into run folder ``out``; returns the summary.

    Args:
        spec: the settings (default: ``prefenv train``'s); ``fields`` replace single ones.
        out: the run folder (created).
        overwrite: replace a run already in ``out`` (only the run's own files).
        progress: show a progress bar of env steps.
        **fields: :class:`TrainSpec` fields, e.g. ``env="prefenv/Hopper-v0", queries=500``.

    Raises:
        RunExistsError: ``out`` holds a run (resume it, or pass ``overwrite=True``).
        ValueError: a setting the run cannot use; nothing is left in ``out``.
    """
    return start(settings(spec, **fields), out, overwrite).run(progress=progress)


def resume(out: str | os.PathLike[str], *, progress: bool = True) -> dict[str, Any]:
    """Continue the run in ``out`` to its end (see :func:`reopen`); returns the summary."""
    run = reopen(out)
    if run.loop.done:
        summary = run.write_summary()
        run.store.close()
        return summary
    return run.run(progress=progress)


def evaluate(out: str | os.PathLike[str], episodes: int = 10, seed: int = 12345) -> dict[str, Any]:
    """Deterministic episodes of ``out``'s latest agent: true and learned return.

    Reads ``run.json``, the agent and the reward model; never opens the comparison store.
    """
    if episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {episodes}")
    if not (Path(out) / "loop_state.json").exists() and (Path(out) / "run.json").exists():
        raise CheckpointError(
            f"{out} has no finished round, so no agent to evaluate yet: continue it with "
            f"`prefenv resume --out {out}`"
        )
    return evaluate_run(out, episodes=episodes, seed=seed)


def run_sweep(
    grid: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    local: bool = False,
    workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
) -> SweepOutcome:
    """Run every cell of grid file ``grid`` (``prefenv sweep``); finished cells are skipped.

    Args:
        grid: a grid file (:mod:`prefenv.app.sweep_grid`).
        out: the sweep folder (default ``runs/sweeps/<grid file name>``).
        local: run the cells in local worker processes instead of on Ray.
        workers: with ``local``: cells at once (default: the machine's cores).
        address: a Ray cluster to join (default: a local Ray instance, or the one this process
            started).
        progress: show a bar of cells.

    Returns:
        The cells done and failed, and the Markdown table (also ``OUT/results.md``).
    """
    from prefenv.app.sweep import Sweep, backend_for
    from prefenv.app.sweep_grid import load_grid

    folder = Path(out) if out is not None else Path("runs") / "sweeps" / Path(grid).stem
    runner = Sweep(load_grid(grid), folder)
    backend = backend_for(local, workers, address)
    try:
        return runner.run(backend, progress=progress)
    finally:
        backend.close()
