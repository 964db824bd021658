"""A failed start leaves an output folder as it found it; ``--overwrite`` loses nothing on failure.

``prefenv train`` and ``prefenv text`` write their settings (``run.json``, ``text_config.json``)
before they build the run, and a later attempt is refused when those settings are there. If the
start then fails (a misspelled env id, a budget the loop rejects, a base model path that is not
a model), the folder would hold a run that never ran and every retry would be refused.
:func:`undo_failed_start` removes what the failed attempt created, and only that: files that were
there before it stay, and so does anything the attempt finished (a completed text stage).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["set_aside", "undo_failed_start"]


@contextmanager
def undo_failed_start(out: Path, keep: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """On an exception inside the block, delete the entries of ``out`` the block created.

    Args:
        out: the run folder (it may not exist yet).
        keep: called after a failure; True means the attempt produced work worth resuming
            (e.g. a finished text stage), so nothing is deleted.
    """
    existed = out.exists()
    before = {entry.name for entry in out.iterdir()} if existed else set()
    try:
        yield
    except BaseException:
        if out.exists() and not keep():
            if not existed:
                shutil.rmtree(out, ignore_errors=True)
            else:
                for entry in out.iterdir():
                    if entry.name not in before:
                        if entry.is_dir():
                            shutil.rmtree(entry, ignore_errors=True)
                        else:
                            entry.unlink(missing_ok=True)
        raise


@contextmanager
def set_aside(out: Path, names: Iterable[str]) -> Iterator[None]:
    """Move the entries ``names`` of ``out`` out of the way for the block; delete them after it.

    What ``--overwrite`` needs: the old run's files are gone from ``out`` while the new run is
    built, and deleted once it is; if the block raises (the new settings are rejected), they are
    moved back, so a failed overwrite leaves the old run whole. Only the named entries move:
    the user's own files in ``out`` are never touched.
    """
    present = [name for name in names if (out / name).exists() or (out / name).is_symlink()]
    if not present:
        yield
        return
    holding = Path(tempfile.mkdtemp(prefix=".overwritten-", dir=out))
    for name in present:
        os.replace(out / name, holding / name)
    try:
        yield
    except BaseException:
        for name in present:
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(holding / name, target)
        holding.rmdir()
        raise
    shutil.rmtree(holding, ignore_errors=True)
