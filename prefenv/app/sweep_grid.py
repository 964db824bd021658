"""Grid files of ``prefenv sweep``: the axes, their values, and the cells they make.

A grid file (TOML, or YAML with the same tables) names the settings every cell shares, the axes
whose product makes the cells, optional named arms (settings switched together), and how cells
run::

    [sweep]
    kind = "train"        # each cell a `prefenv train` run; "text": a text pipeline run
    twin = true           # also train each cell's agent on the true reward (train only)
    retries = 2           # a failed cell is run again this many times, then reported
    cpus = 1              # per cell (torch threads; Ray's num_cpus)
    gpus = 0              # per cell (Ray's num_gpus)
    metrics = ["eval_deterministic_return", "eval_sampled_return"]
    x = "queries"         # the figure's x axis (default: the first numeric axis)

    [base]                # TrainSpec fields (prefenv train's options) of every cell
    env = "prefenv/HalfCheetah-v0"
    steps = 20000

    [axes]                # every combination of these values is a cell
    queries = [50, 250]
    seed = [0, 1]

    [arms.off]            # optional: an `arm` axis, each arm a set of fields
    [arms.on]
    surf = true

A cell's name (its run folder under ``OUT/cells/``) joins its axis values: ``arm-on_queries-50_
seed-0``. A train cell's *twin* is the same agent on the env's own reward
(:mod:`prefenv.app.twin`): cells that differ only in feedback settings share one, named by the axes
that change the agent (``twin_seed-0``).
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from agents.ppo_kl.config import PPOKLConfig
from prefenv.app.spec import TrainSpec
from prefenv.app.text_config import PPO_OPTIONS, TEXT_PPO, TextPipelineConfig
from prefenv.app.twin import TWIN_SETTINGS, twin_spec

__all__ = ["Cell", "Grid", "GridError", "load_grid", "text_config"]

Kind = Literal["train", "twin", "text"]
SWEEP_KEYS = ("kind", "twin", "retries", "cpus", "gpus", "metrics", "x")
TABLES = ("sweep", "base", "axes", "arms")
DEFAULT_METRICS = {
    "train": ("eval_deterministic_return", "eval_sampled_return"),
    "text": ("eval.ppo.true_score", "eval.ppo.kl_to_ref"),
}
"""Summary keys reported per cell (a dotted key reads nested ``summary.json`` tables)."""


class GridError(ValueError):
    """A grid file the sweep cannot run: the message names the key and the fix."""


@dataclass(frozen=True)
class Cell:
    """One run of the grid.

    Attributes:
        name: the run folder's name under ``OUT/cells/`` (unique in the grid).
        kind: ``train`` (a preference run), ``twin`` (its true-reward twin) or ``text``.
        settings: the fields of the run's settings (``TrainSpec`` or ``TextPipelineConfig``).
        axes: the axis values that name it (``arm`` among them when the grid has arms).
        twin: the name of its twin cell, or None.
    """

    name: str
    kind: Kind
    settings: dict[str, Any]
    axes: dict[str, Any]
    twin: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cell:
        return cls(**data)


@dataclass(frozen=True)
class Grid:
    """A parsed grid file (see the module docstring for its tables)."""

    kind: Literal["train", "text"] = "train"
    base: dict[str, Any] = field(default_factory=dict)
    axes: dict[str, list[Any]] = field(default_factory=dict)
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    twin: bool = False
    retries: int = 2
    cpus: float = 1.0
    gpus: float = 0.0
    metrics: tuple[str, ...] = ()
    x: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("train", "text"):
            raise GridError(f"[sweep] kind must be 'train' or 'text', got {self.kind!r}")
        if self.twin and self.kind != "train":
            raise GridError("[sweep] twin = true needs kind = 'train' (a text run has no twin)")
        if self.retries < 0 or self.cpus <= 0 or self.gpus < 0:
            raise GridError("[sweep] needs retries >= 0, cpus > 0 and gpus >= 0")
        if not self.metrics:
            object.__setattr__(self, "metrics", DEFAULT_METRICS[self.kind])
        fields = _field_names(self.kind)
        for table, names in (("base", self.base), ("axes", self.axes)):
            for name in names:
                _check_field(name, fields, table)
        for name, values in self.axes.items():
            if not isinstance(values, list) or not values:
                raise GridError(f"[axes] {name} must be a non-empty list of values, got {values!r}")
            if name in self.base:
                raise GridError(f"{name!r} is set in both [base] and [axes]: keep one")
            if len({json.dumps(v, sort_keys=True) for v in values}) < len(values):
                raise GridError(f"[axes] {name} repeats a value: {values!r}")
        for arm, settings in self.arms.items():
            for name in settings:
                _check_field(name, fields, f"arms.{arm}")
                if name in self.axes:
                    raise GridError(f"[arms.{arm}] sets {name!r}, which is an axis: keep one")
        if self.x == "seed":
            raise GridError(
                '[sweep] x = "seed": the report averages over seeds, so they cannot be the '
                "figure's x axis; leave x out (one bar per arm) or name another numeric axis"
            )
        if self.x is not None and self.x not in self.axis_names:
            raise GridError(f"[sweep] x = {self.x!r} is not an axis (axes: {self.axis_names})")
        if self.x is not None and not all(
            isinstance(v, int | float) and not isinstance(v, bool)
            for v in self.axes.get(self.x, list(self.arms))
        ):
            raise GridError(f"[sweep] x = {self.x!r}: the figure's x axis needs numeric values")

    @property
    def axis_names(self) -> list[str]:
        """The axes in naming order: ``arm`` first (when there are arms), then the file's."""
        return (["arm"] if self.arms else []) + list(self.axes)

    def cells(self) -> list[Cell]:
        """The twins, then every cell in the product's order (the last axis varies fastest)."""
        values = ([list(self.arms)] if self.arms else []) + list(self.axes.values())
        cells: list[Cell] = []
        twins: dict[str, Cell] = {}
        for combo in itertools.product(*values):
            axes = dict(zip(self.axis_names, combo, strict=True))
            settings = {**self.base, **self.arms.get(axes.get("arm", ""), {})}
            settings |= {k: v for k, v in axes.items() if k != "arm"}
            twin = self._twin(axes, settings) if self.twin else None
            if twin is not None:
                twins.setdefault(twin.name, twin)
            kind: Kind = "text" if self.kind == "text" else "train"
            cells.append(Cell(_name(axes), kind, settings, axes, twin.name if twin else None))
        ordered = [*twins.values(), *cells]
        names = [c.name for c in ordered]
        if len(set(names)) < len(names):
            raise GridError(
                "two cells get the same folder name once their values are made file-safe: "
                "make the axis values differ in letters or digits"
            )
        return ordered

    def _twin(self, axes: dict[str, Any], settings: dict[str, Any]) -> Cell:
        arm = self.arms.get(axes.get("arm", ""), {})
        named = {k: v for k, v in axes.items()
                 if k in TWIN_SETTINGS or (k == "arm" and set(arm) & set(TWIN_SETTINGS))}  # fmt: skip
        spec = twin_spec(TrainSpec(**settings))
        kept = {name: getattr(spec, name) for name in TWIN_SETTINGS if name in settings}
        return Cell("twin" + ("_" + _name(named) if named else ""), "twin", kept, named)

    def check(self) -> list[Cell]:
        """Build every cell's settings once (an unusable value fails here, before any runs)."""
        cells = self.cells()
        for cell in cells:
            try:
                if cell.kind == "text":
                    text_config(cell.settings)
                elif cell.kind == "twin":
                    twin_spec(cell.settings)
                else:
                    TrainSpec(**cell.settings)
            except (ValueError, TypeError) as error:
                raise GridError(f"cell {cell.name}: {error}") from None
        return cells

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _field_names(kind: str) -> list[str]:
    if kind == "text":
        return [f.name for f in dataclasses.fields(TextPipelineConfig) if f.name != "ppo"] + list(
            PPO_OPTIONS
        )
    return [f.name for f in dataclasses.fields(TrainSpec)]


def _check_field(name: str, fields: Sequence[str], table: str) -> None:
    if name not in fields:
        close = difflib.get_close_matches(name, fields, n=1)
        hint = f": did you mean {close[0]!r}?" if close else ""
        raise GridError(
            f"[{table}] {name!r} is not a setting{hint} (settings: {', '.join(fields)})"
        )


def _safe(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


def _name(axes: Mapping[str, Any]) -> str:
    return "_".join(f"{k}-{_safe(v)}" for k, v in axes.items()) or "cell"


def text_config(settings: Mapping[str, Any]) -> TextPipelineConfig:
    """A text cell's settings: ``TextPipelineConfig`` fields, PPO-KL's exposed ones into ``ppo``."""
    ppo_fields = {k: v for k, v in settings.items() if k in PPO_OPTIONS}
    ppo: PPOKLConfig = dataclasses.replace(TEXT_PPO, **ppo_fields)
    rest = {k: v for k, v in settings.items() if k not in PPO_OPTIONS}
    return TextPipelineConfig(**rest, ppo=ppo)


def load_grid(path: str | Path) -> Grid:
    """Read a grid file (``.toml``, or ``.yaml``/``.yml``).

    Raises:
        GridError: a missing or unreadable file, an unknown table or key (the closest named),
            or settings no run can use.
    """
    path = Path(path)
    if not path.is_file():
        raise GridError(f"no grid file {path}: give the path of a .toml or .yaml grid file")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(path.read_text()) or {}
        else:
            data = tomllib.loads(path.read_text())
    except Exception as error:  # the parsers' own messages name the line
        raise GridError(f"cannot read grid file {path}: {error}") from None
    for table in data:
        if table not in TABLES:
            close = difflib.get_close_matches(table, TABLES, n=1)
            hint = f": did you mean [{close[0]}]?" if close else ""
            raise GridError(f"{path}: unknown table [{table}]{hint} (tables: {', '.join(TABLES)})")
    sweep = dict(data.get("sweep", {}))
    for key in sweep:
        _check_field(key, SWEEP_KEYS, "sweep")
    if "metrics" in sweep:
        sweep["metrics"] = tuple(sweep["metrics"])
    arms = {name: dict(fields or {}) for name, fields in (data.get("arms") or {}).items()}
    return Grid(base=dict(data.get("base") or {}), axes=dict(data.get("axes") or {}), arms=arms,
                **sweep)  # fmt: skip
