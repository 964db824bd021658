"""Error types shared by every layer.

One checkpoint hierarchy serves reward-model checkpoints, agent checkpoints (PPO-KL, SB3) and the
run folders that resume them, so callers catch one type whatever was being resumed.
:class:`CheckpointError` is a ``ValueError`` (the saved state does not fit what was asked of it),
which the command line reports as a one-line error naming the fix.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "CheckpointNotFoundError"]


class CheckpointError(ValueError):
    """A checkpoint or run folder cannot be loaded or resumed.

    Missing, corrupt or truncated files, a schema from another version, a checkpoint that does not
    fit the env or model it is loaded into, or a run folder resumed with other settings.
    """


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint (or the finished stage or run folder it should be in) does not exist."""
