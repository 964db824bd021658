"""Reward-model checkpoints in the Hugging Face layout: ``config.json`` + ``model.safetensors``.

Saving is atomic (a temp directory renamed into place; when overwriting, the weights move first
and the config records their sha256, so a torn pair is caught on load). Loading checks the schema,
the weights' hash, and, when given, that the env's spaces are the ones the model was trained for.

Both directions live here and import no model class: the models call :func:`save_checkpoint`
from their ``save_pretrained``, and :func:`prefenv.reward_models.load_reward_model` passes
:func:`load_checkpoint` the table of classes it may build, so there is no import cycle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gymnasium import spaces as gym_spaces
from safetensors.torch import load_file, save_file
from torch import nn

from prefenv.errors import CheckpointError, CheckpointNotFoundError
from prefenv.spaces import describe_space, flat_dim

__all__ = ["SCHEMA", "CheckpointError", "load_checkpoint", "save_checkpoint"]

SCHEMA = "prefenv.reward_model/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(module: nn.Module, config: dict[str, Any], directory: Path) -> Path:
    """Write weights + config in a temp dir, then move them in (a killed save leaves no half)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp", dir=directory.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        config = {"schema": SCHEMA, **config, "weights_sha256": _sha256(tmp / WEIGHTS_FILE)}
        with open(tmp / CONFIG_FILE, "w") as f:
            json.dump(config, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        if not directory.exists():
            os.replace(tmp, directory)  # one atomic rename
        else:  # weights first; the config's hash tells a torn pair apart on load
            os.replace(tmp / WEIGHTS_FILE, directory / WEIGHTS_FILE)
            os.replace(tmp / CONFIG_FILE, directory / CONFIG_FILE)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _read_config(path: Path) -> dict[str, Any]:
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointNotFoundError(
            f"no reward model checkpoint at {path}: expected {CONFIG_FILE} and {WEIGHTS_FILE} "
            "as written by save_pretrained"
        )
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"{config_path} is not valid JSON ({error}): restore it or re-save the model"
        ) from error
    schema = config.get("schema") if isinstance(config, dict) else None
    if schema != SCHEMA:
        raise CheckpointError(
            f"{config_path} has schema {schema!r}, expected {SCHEMA!r}: it was not written by "
            "prefenv's save_pretrained (or by an incompatible version); re-save the model with "
            "MLPRewardModel/RewardEnsemble.save_pretrained"
        )
    return config


def _check_spaces(
    config: dict[str, Any],
    path: Path,
    observation_space: gym_spaces.Space | None,
    action_space: gym_spaces.Space | None,
) -> None:
    saved = config.get("spaces") or {}
    for key, space, dim in (
        ("observation_space", observation_space, config["obs_dim"]),
        ("action_space", action_space, config["act_dim"]),
    ):
        if space is None:
            continue
        given = json.loads(json.dumps(describe_space(space)))
        if key in saved:
            matches, trained_for = saved[key] == given, saved[key]
        else:  # saved without a space description: compare flat sizes only
            matches, trained_for = flat_dim(space) == dim, f"a flat size of {dim}"
        if not matches:  # a CheckpointError is a ValueError: callers catching either still work
            raise CheckpointError(
                f"reward model at {path} was trained for {key} {trained_for}, but the env has "
                f"{given}: was it trained on this environment? Load the checkpoint made for this "
                "env or train a new reward model"
            )


def _build(
    config: dict[str, Any],
    path: Path,
    builders: Mapping[str, Callable[[dict[str, Any]], nn.Module]],
) -> nn.Module:
    name = config.get("class")
    build = builders.get(name) if isinstance(name, str) else None
    if build is None:
        raise CheckpointError(
            f"{path / CONFIG_FILE} names class {config.get('class')!r}; this loader builds "
            f"{', '.join(sorted(builders))}"
        )
    try:
        return build(config)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"{path / CONFIG_FILE} has invalid model hyperparameters ({error}): re-save the model"
        ) from error


def load_checkpoint(
    directory: str | os.PathLike[str],
    builders: Mapping[str, Callable[[dict[str, Any]], nn.Module]],
    observation_space: gym_spaces.Space | None = None,
    action_space: gym_spaces.Space | None = None,
) -> nn.Module:
    """Load a checkpoint written by ``save_pretrained``, optionally checking it fits an env.

    Args:
        directory: the checkpoint folder.
        builders: config ``"class"`` name -> a function building that model (fresh weights) from
            the config.
        observation_space: the env's single observation space to check against, or None.
        action_space: the env's single action space to check against, or None.

    Raises:
        CheckpointNotFoundError: no checkpoint in ``directory``.
        CheckpointError: a foreign config, an unknown class, missing or corrupt weights, or spaces
            other than the ones the model was trained for.
    """
    path = Path(directory)
    config = _read_config(path)
    _check_spaces(config, path, observation_space, action_space)
    model = _build(config, path, builders)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing: the checkpoint is incomplete; re-save it")
    expected_hash = config.get("weights_sha256")
    if expected_hash is not None and _sha256(weights) != expected_hash:
        raise CheckpointError(
            f"{weights} does not match the hash in {CONFIG_FILE} (an interrupted save or a mixed "
            "copy?): re-save the model or restore the checkpoint from a backup"
        )
    try:
        state = load_file(str(weights))
        model.load_state_dict(state, strict=True)
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(
            f"could not load weights from {weights} ({type(error).__name__}: {error}): the file is "
            "corrupt or belongs to another config; restore the checkpoint or re-save the model"
        ) from error
    return model
