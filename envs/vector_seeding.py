"""Seeding a native vector env's rows on ``reset``, the way Gymnasium's ``SyncVectorEnv`` does.

``reset(seed=s)`` seeds row ``i`` with ``s + i`` (a list gives one seed per row, ``None`` keeps a
row's generator, creating it unseeded the first time), and ``options["reset_mask"]`` restricts the
reset to some rows. A native vector env that keeps one generator per row draws the same numbers
as a ``SyncVectorEnv`` of its single env, so the two are interchangeable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from gymnasium.utils import seeding

__all__ = ["seed_rows"]


def seed_rows(
    rngs: list[np.random.Generator | None],
    seed: int | list[int | None] | None,
    options: Mapping[str, Any] | None,
) -> np.ndarray:
    """Seed, in place, the generators ``rngs`` (one per row) of the rows a reset restarts.

    Returns:
        Those rows: all, or the ones ``options["reset_mask"]`` marks.

    Raises:
        ValueError: a list of seeds whose length is not the number of rows.
    """
    n = len(rngs)
    if seed is None:
        seeds: list[int | None] = [None] * n
    elif isinstance(seed, (int, np.integer)):
        seeds = [int(seed) + i for i in range(n)]  # SyncVectorEnv: sub-env i gets seed + i
    else:
        seeds = list(seed)
        if len(seeds) != n:
            raise ValueError(f"got {len(seeds)} seeds for {n} sub-envs")
    mask = None if options is None else options.get("reset_mask")
    rows = np.arange(n) if mask is None else np.flatnonzero(np.asarray(mask, dtype=bool))
    for i in rows:
        if seeds[i] is not None or rngs[i] is None:
            rngs[i] = seeding.np_random(seeds[i])[0]
    return rows
