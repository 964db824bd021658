"""Crash-safe file writes: a temp file in the same folder, fsync, then one atomic rename.

A process killed mid-write leaves the previous file intact (or no file), never half of one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write"]


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[IO[Any]], None], binary: bool = False
) -> Path:
    """Call ``write(handle)`` on a temp file beside ``path``, fsync it, and rename it over ``path``.

    Args:
        path: destination; its folder is created if missing.
        write: fills the open handle (text mode, UTF-8, unless ``binary``).
        binary: open the temp file in binary mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(
            fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})
        ) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
