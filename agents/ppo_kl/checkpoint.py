"""Atomic, versioned checkpoint files for the PPO-KL agent.

A checkpoint is one file ``<dir>/ppo_kl.pt`` holding a plain dict (tensors, numbers, strings,
lists, dicts; loaded with ``torch.load(weights_only=True)``, so no code runs on load). It is
written to a temporary file in the same directory and moved into place with ``os.replace``, so
a run killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from prefenv.atomic import atomic_write
from prefenv.errors import CheckpointError, CheckpointNotFoundError

__all__ = [
    "CHECKPOINT_FILE",
    "SCHEMA_VERSION",
    "CheckpointError",
    "checkpoint_path",
    "read_checkpoint",
    "write_checkpoint",
]

SCHEMA_VERSION = 1
CHECKPOINT_FILE = "ppo_kl.pt"
_REQUIRED = (
    "schema_version",
    "config",
    "policy",
    "optimizer",
    "kl_controller",
    "torch_rng",
    "numpy_rng",
    "num_timesteps",
    "iterations",
)


def checkpoint_path(directory: str | Path) -> Path:
    return Path(directory) / CHECKPOINT_FILE


def write_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` (plus the schema version) to ``directory/ppo_kl.pt``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = checkpoint_path(directory)
    payload = {"schema_version": SCHEMA_VERSION, **state}
    return atomic_write(target, lambda handle: torch.save(payload, handle), binary=True)


def read_checkpoint(directory: str | Path) -> dict[str, Any]:
    """Load and validate a checkpoint written by :func:`write_checkpoint`.

    Raises:
        CheckpointNotFoundError: no checkpoint file in ``directory``.
        CheckpointError: corrupt/truncated file, unknown schema version or missing entries, with
            the fix in the message.
    """
    path = checkpoint_path(directory)
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"no PPO-KL checkpoint at {path}; pass the directory given to PPOKL.save()"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged files
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); the file is corrupt or "
            "truncated: resume from an earlier checkpoint directory or start a new run"
        ) from exc
    if not isinstance(state, dict) or "schema_version" not in state:
        raise CheckpointError(
            f"{path} is not a PPO-KL checkpoint (no schema_version); was it written by "
            "PPOKL.save()?"
        )
    version = state["schema_version"]
    if version != SCHEMA_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has schema version {version!r}, this version of agents.ppo_kl reads "
            f"version {SCHEMA_VERSION}; load it with the prefenv release that wrote it, or retrain"
        )
    missing = [key for key in _REQUIRED if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks entries {missing}; the file is incomplete")
    return state
