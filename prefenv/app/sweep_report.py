"""A sweep's table and figure: mean ± std over seeds, and the fraction of the true-reward twin.

Rows group the cells that differ only in ``seed``. For each of the grid's metrics a row gives the
mean ± std over its seeds and the per-seed values; where the grid has twins, also each seed's
value divided by its own twin's (the fraction of the same agent trained on the true reward), as
mean ± std. A fraction is left out where the twin's value is not positive (a negative return, as
on Reacher, has no meaningful ratio). Failed or unfinished cells are counted, never averaged.

The figure has a panel per metric: its twin fraction (or, without twins, its value) against the
grid's ``x`` axis with a band of ± one std over seeds, one line per combination of the other axes;
a grid with no numeric axis gets a bar per row instead.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prefenv.atomic import atomic_write

if TYPE_CHECKING:
    from prefenv.app.sweep import Sweep

__all__ = ["Row", "rows", "write_report"]

TABLE_MD, TABLE_CSV, FIGURE = "results.md", "results.csv", "figure.png"


class Row:
    """One group of cells (every seed of the same other axis values)."""

    def __init__(self, axes: dict[str, Any]) -> None:
        self.axes = axes
        self.seeds: list[Any] = []
        self.values: dict[str, list[float]] = defaultdict(list)
        self.fractions: dict[str, list[float]] = defaultdict(list)
        self.missing: list[str] = []

    @staticmethod
    def stat(values: list[float]) -> tuple[float, float] | None:
        """(mean, std) of ``values`` (population std, as B-Pref reports), or None."""
        return (float(np.mean(values)), float(np.std(values))) if values else None


def _fmt(stat: tuple[float, float] | None, digits: int = 1) -> str:
    return "n/a" if stat is None else f"{stat[0]:.{digits}f} ± {stat[1]:.{digits}f}"


def rows(sweep: Sweep) -> tuple[list[Row], list[str]]:
    """The report's rows and the names of the axes that group them (all but ``seed``)."""
    grid = sweep.grid
    group_axes = [a for a in grid.axis_names if a != "seed"]
    by_name = {c.name: c for c in sweep.cells}
    table: dict[str, Row] = {}
    for cell in sweep.cells:
        if cell.kind == "twin":
            continue
        axes = {a: cell.axes[a] for a in group_axes}
        row = table.setdefault(json.dumps(axes, sort_keys=True, default=str), Row(axes))
        result = sweep.result(cell)
        if result is None or result["status"] != "done":
            row.missing.append(cell.name)
            continue
        row.seeds.append(cell.axes.get("seed", cell.settings.get("seed")))
        twin = sweep.result(by_name[cell.twin]) if cell.twin else None
        for metric in grid.metrics:
            value = result["summary"].get(metric)
            if value is None or not math.isfinite(value):
                continue
            row.values[metric].append(float(value))
            reference = (twin or {}).get("summary", {}).get(metric)
            if reference is not None and reference > 0:
                row.fractions[metric].append(float(value) / float(reference))
    return list(table.values()), group_axes


def _markdown(sweep: Sweep, table: list[Row], group_axes: list[str]) -> str:
    metrics = sweep.grid.metrics
    twins = sweep.grid.twin
    header = [*group_axes, "seeds"]
    for metric in metrics:
        header += [metric, "per seed"] + ([f"{metric} / twin"] if twins else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        cells = [str(row.axes[a]) for a in group_axes]
        cells.append(
            f"{len(row.seeds)}" + (f" ({len(row.missing)} missing)" if row.missing else "")
        )
        for metric in metrics:
            per_seed = ", ".join(f"{v:.1f}" for v in row.values[metric]) or "n/a"
            cells += [_fmt(Row.stat(row.values[metric])), per_seed]
            if twins:
                cells.append(_fmt(Row.stat(row.fractions[metric]), digits=2))
        lines.append("| " + " | ".join(cells) + " |")
    parts = [f"# Sweep {sweep.out.name}", "", "\n".join(lines)]
    twin_cells = [c for c in sweep.cells if c.kind == "twin"]
    if twin_cells:
        parts += ["", "True-reward twins:", ""]
        for cell in twin_cells:
            result = sweep.result(cell)
            figures = (
                "not finished"
                if result is None or result["status"] != "done"
                else ", ".join(f"{m} {result['summary'].get(m, float('nan')):.1f}" for m in metrics)
            )
            parts.append(f"- {cell.name}: {figures}")
    failed = [c.name for c, state in sweep.status() if state == "failed"]
    if failed:
        parts += ["", f"Failed (rerun the sweep to try again): {', '.join(failed)}"]
    return "\n".join(parts) + "\n"


def _csv(sweep: Sweep, table: list[Row], group_axes: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    header = [*group_axes, "seeds", "missing"]
    for metric in sweep.grid.metrics:
        header += [f"{metric}_mean", f"{metric}_std", f"{metric}_per_seed",
                   f"{metric}_twin_fraction_mean", f"{metric}_twin_fraction_std"]  # fmt: skip
    writer.writerow(header)
    for row in table:
        line: list[Any] = [row.axes[a] for a in group_axes]
        line += [json.dumps(row.seeds), len(row.missing)]
        for metric in sweep.grid.metrics:
            value, fraction = Row.stat(row.values[metric]), Row.stat(row.fractions[metric])
            line += [*(value or ("", "")), json.dumps(row.values[metric]), *(fraction or ("", ""))]
        writer.writerow(line)
    return buffer.getvalue()


def _x_axis(sweep: Sweep, group_axes: list[str]) -> str | None:
    if sweep.grid.x is not None:
        return sweep.grid.x
    for name in group_axes:
        values = sweep.grid.axes.get(name, [])
        if len(values) > 1 and all(isinstance(v, int | float) for v in values):
            return name
    return None


def _panel(sweep: Sweep, table: list[Row], group_axes: list[str], metric: str, ax: Any) -> None:
    """One metric: its twin fraction (or value) against the x axis, or a bar per row."""
    use_twin = sweep.grid.twin and any(row.fractions[metric] for row in table)
    source = "fractions" if use_twin else "values"
    label = f"{metric} / true-reward twin" if use_twin else metric
    x = _x_axis(sweep, group_axes)
    if x is None:
        names = [", ".join(f"{a}={row.axes[a]}" for a in group_axes) or "all" for row in table]
        stats = [Row.stat(getattr(row, source)[metric]) or (np.nan, 0.0) for row in table]
        ax.barh(names, [s[0] for s in stats], xerr=[s[1] for s in stats], color="#4c72b0")
        ax.set_xlabel(label)
        return
    lines: dict[str, list[tuple[float, tuple[float, float]]]] = defaultdict(list)
    for row in table:
        stat = Row.stat(getattr(row, source)[metric])
        if stat is not None:
            key = ", ".join(f"{a}={row.axes[a]}" for a in group_axes if a != x) or "all"
            lines[key].append((float(row.axes[x]), stat))
    for key, points in lines.items():
        points.sort()
        xs = np.array([p[0] for p in points])
        mean, std = np.array([p[1][0] for p in points]), np.array([p[1][1] for p in points])
        ax.plot(xs, mean, marker="o", label=key)
        ax.fill_between(xs, mean - std, mean + std, alpha=0.2)
    values = sweep.grid.axes[x]
    if min(values) > 0 and max(values) >= 10 * min(values):
        ax.set_xscale("log")
    if use_twin:
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel(x)
    ax.set_ylabel(label)
    ax.legend(fontsize=8)


def _figure(sweep: Sweep, table: list[Row], group_axes: list[str], path: Path) -> None:
    """A panel per metric (deterministic and sampled returns side by side, by default)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = sweep.grid.metrics
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.2), squeeze=False)
    for metric, ax in zip(metrics, axes[0], strict=True):
        _panel(sweep, table, group_axes, metric, ax)
    fig.suptitle(f"{sweep.out.name}: mean ± std over seeds")
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=110), binary=True)
    plt.close(fig)


def write_report(sweep: Sweep) -> str:
    """Write ``results.md``, ``results.csv`` and ``figure.png`` into the sweep folder; the table."""
    table, group_axes = rows(sweep)
    markdown = _markdown(sweep, table, group_axes)
    atomic_write(sweep.out / TABLE_MD, lambda handle: handle.write(markdown))
    text = _csv(sweep, table, group_axes)
    atomic_write(sweep.out / TABLE_CSV, lambda handle: handle.write(text))
    if any(row.values for row in table):
        _figure(sweep, table, group_axes, sweep.out / FIGURE)
    return markdown
