"""Per-task tuned hyperparameters (``presets.toml``) and the ``--hparams`` that override them.

``prefenv train`` resolves a run's agent settings once, when the run starts
(:func:`resolve_hparams`): the table's entry for the task id and agent, then the user's
``--hparams`` / ``--hparams-file`` values on top. The result is written into ``run.json``
(``TrainSpec.hparams``, with ``TrainSpec.preset`` naming the entry used), so a resumed run keeps
the settings it started with even if the table changes.

The table (``prefenv/app/presets.toml``) is meant to be read: one section per ``"task".agent``
with the values and a ``source`` that names the measurement or publication behind them.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["PRESETS_FILE", "Preset", "parse_hparams", "preset_for", "presets", "read_hparams_file"]

PRESETS_FILE = Path(__file__).with_name("presets.toml")


class Preset(dict):  # type: ignore[type-arg]
    """One table entry: the agent's settings, plus where they come from (:attr:`source`)."""

    def __init__(self, name: str, values: dict[str, Any], source: str) -> None:
        super().__init__(values)
        self.name = name
        self.source = source


@cache
def presets() -> dict[str, dict[str, Preset]]:
    """``{task id: {agent: Preset}}`` from :data:`PRESETS_FILE`.

    Raises:
        ValueError: an entry without a ``source``.
    """
    table = tomllib.loads(PRESETS_FILE.read_text())
    result: dict[str, dict[str, Preset]] = {}
    for env_id, agents in table.items():
        for agent, entry in agents.items():
            values = dict(entry)
            source = values.pop("source", None)
            if not source:
                raise ValueError(f"{PRESETS_FILE}: [{env_id!r}.{agent}] has no source")
            result.setdefault(env_id, {})[agent] = Preset(f"{env_id}:{agent}", values, source)
    return result


def preset_for(env_id: str, agent: str) -> Preset | None:
    """The table's entry for ``env_id`` (``module:`` prefix ignored) and ``agent``, or None."""
    return presets().get(env_id.rpartition(":")[2], {}).get(agent)


def parse_hparams(pairs: list[str]) -> dict[str, Any]:
    """``["batch_size=256", "hidden_sizes=[128,128]"]`` -> values (JSON where it parses).

    Raises:
        ValueError: an item without ``=``, naming the expected form.
    """
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(
                f"--hparams takes KEY=VALUE items, got {pair!r}: e.g. --hparams batch_size=256 "
                "log_std_init=-2"
            )
        try:
            values[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            values[key.strip()] = text  # a bare string, e.g. activation=relu
    return values


def read_hparams_file(path: str | Path) -> dict[str, Any]:
    """A ``--hparams-file``: a TOML or JSON table of agent settings.

    Raises:
        ValueError: the file is missing or not a table, naming the position of a syntax error.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--hparams-file {path} not found")
    text = path.read_text()
    try:
        values = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"--hparams-file {path} does not parse: {exc}") from exc
    if not isinstance(values, dict):
        raise ValueError(f"--hparams-file {path} must hold a table of KEY = VALUE settings")
    return values
