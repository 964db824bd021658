"""What the labelling app reads out of a run: its labelling settings, statistics and exports.

:func:`read_run_labelling` merges the run's ``labelling.json`` (written by ``prefenv train
--teacher human``) with the server's overrides; :func:`label_stats` is the ``/api/stats``
document; :func:`export_preferences` and :func:`backup_store` are the two exports.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefenv.agreement import agreement_summary, annotator_summary
from prefenv.jsonl import export_jsonl
from prefenv.presenters import INSTRUCTIONS
from prefenv.queue import HUMAN_PREFIX, QueryQueue
from prefenv.store import ComparisonStore

__all__ = [
    "LABELLING_FILE",
    "RunLabelling",
    "backup_store",
    "export_preferences",
    "label_stats",
    "read_run_labelling",
]

LABELLING_FILE = "labelling.json"
GENERIC_INSTRUCTIONS = (
    "Compare the two options and pick the one that does the task better. Pick 'equally good' "
    "when you cannot tell them apart, and 'skip' when you cannot judge them."
)
"""Instructions when neither the server nor the run nor the task kind gives any."""


@dataclass(frozen=True)
class RunLabelling:
    """How a run's queries are labelled: ``labelling.json`` with the server's overrides.

    Attributes:
        run: the run's name.
        env: the task's env id ("" when unknown).
        kind: the media kind its presenter makes ("" when unknown).
        instructions: the text above every pair.
        gold_rate: share of an annotator's queries that are gold questions, in [0, 1).
        lease_seconds: how long a handed-out query stays reserved for its annotator.
        overlap: annotators asked per query (as posted; for the stats page).
        custom: the instructions came from the server or the run, not from the media kind.
    """

    run: str
    env: str
    kind: str
    instructions: str
    gold_rate: float
    lease_seconds: float
    overlap: int
    custom: bool = False

    def instructions_for(self, media: dict[str, Any] | None) -> str:
        """The text above a pair: the run's own, else the one for the pair's media kind (a
        training run learns its kind only when its first pair is presented)."""
        if self.custom or self.kind or media is None:
            return self.instructions
        return INSTRUCTIONS.get(str(media.get("kind")), self.instructions)


def read_run_labelling(
    run_dir: Path,
    *,
    instructions: str | None = None,
    gold_rate: float | None = None,
    lease_seconds: float | None = None,
) -> RunLabelling:
    """The run's labelling settings; an argument that is not None overrides the file's value.

    A missing ``labelling.json`` gives the defaults (gold rate 0, a 600 s lease, instructions
    for the media kind or generic ones); empty instructions count as none.

    Raises:
        ValueError: ``labelling.json`` is not a JSON object, or a value has the wrong type.
    """
    path = run_dir / LABELLING_FILE
    found: dict[str, Any] = {}
    if path.is_file():
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}): fix or delete it") from error
        if not isinstance(found, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(found).__name__}")
    try:
        kind = str(found.get("kind") or "")
        custom = instructions or found.get("instructions")
        text = custom or INSTRUCTIONS.get(kind)
        return RunLabelling(
            run=str(found.get("run") or run_dir.name),
            env=str(found.get("env") or ""),
            kind=kind,
            instructions=str(text or GENERIC_INSTRUCTIONS),
            gold_rate=float(found.get("gold_rate", 0.0) if gold_rate is None else gold_rate),
            lease_seconds=float(
                found.get("lease_seconds", 600.0) if lease_seconds is None else lease_seconds
            ),
            overlap=int(found.get("overlap", 1)),
            custom=bool(custom),
        )
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{path}: a value has the wrong type ({error}): fix or delete it"
        ) from error


def label_stats(queue: QueryQueue, store_path: Path, labelling: RunLabelling) -> dict[str, Any]:
    """The ``/api/stats`` document (plain JSON, no NaN).

    Returns:
        ``{"run": {...}, "annotators": annotator_summary of every label,
        "agreement": agreement_summary of the labels of ordinary (non-gold) queries,
        "sources": {"human": n, "simulated": n} comparisons in the store,
        "queries": {"open", "answered", "waiting", "labels", "skips", "gold_labels",
        "harvested"}}``. Gold questions are left out of agreement: each annotator gets them
        regardless of the overlap, so they would mix items of unequal rater counts.
    """
    rows = queue.label_rows()
    ordinary = [(row["query"], row["annotator"], row["choice"]) for row in rows
                if row["gold"] is None]  # fmt: skip
    with ComparisonStore(store_path) as store:
        teachers = store.teachers()
    human = sum(n for teacher, n in teachers.items() if teacher.startswith(HUMAN_PREFIX))
    counts = queue.progress("")  # open / answered / waiting do not depend on the annotator
    return {
        "run": {
            "run": labelling.run,
            "env": labelling.env,
            "kind": labelling.kind,
            "overlap": labelling.overlap,
            "gold_rate": labelling.gold_rate,
        },  # fmt: skip
        "annotators": annotator_summary(rows),
        "agreement": agreement_summary(ordinary),
        "sources": {"human": human, "simulated": sum(teachers.values()) - human},
        "queries": {
            "open": counts["open"],
            "answered": counts["answered"],
            "waiting": counts["waiting"],
            "labels": len(rows),
            "skips": sum(row["choice"] == "skip" for row in rows),
            "gold_labels": sum(row["gold"] is not None for row in rows),
            "harvested": sum(row["comparison_id"] is not None for row in rows),
        },
    }


def export_preferences(store_path: Path) -> str:
    """The harvested human comparisons as ``prompt``/``chosen``/``rejected`` JSONL text.

    Uses :func:`prefenv.jsonl.export_jsonl` (skipped comparisons are left out), in store order.
    """
    with ComparisonStore(store_path) as store:
        humans = [t for t in store.teachers() if t.startswith(HUMAN_PREFIX)]
        rows = sorted(
            (row for teacher in humans for row in store.load_with_ids(teacher=teacher)),
            key=lambda row: row[0],
        )
    with tempfile.TemporaryDirectory(prefix="prefenv-export-") as folder:
        path = Path(folder) / "preferences.jsonl"
        export_jsonl([comparison for _, comparison in rows], path)
        return path.read_text(encoding="utf-8")


def backup_store(store_path: Path, destination: Path) -> None:
    """A consistent copy of the store at ``destination`` (SQLite's online backup), one file.

    Other connections keep writing meanwhile; the copy is a snapshot of one moment, with
    rows still in the ``-wal`` file included, and it needs no ``-wal`` file of its own.
    """
    source = sqlite3.connect(f"{store_path.resolve().as_uri()}?mode=ro", uri=True)
    target = sqlite3.connect(destination)
    try:
        source.backup(target)
        target.execute("PRAGMA journal_mode = DELETE")
    finally:
        target.close()
        source.close()
