"""benchmarks/report_label_budget_curves.py: a curve joined from several sweeps with ``+``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _cells(folder: Path, cells: dict[tuple[int, int], float], twin: float = 100.0) -> None:
    """A sweep's results: one train cell per (labels, seed) returning ``share * twin``."""
    folder.mkdir(parents=True)
    for seed in {seed for _, seed in cells}:
        summary = {"eval_deterministic_return": twin, "eval_sampled_return": twin}
        (folder / f"twin_seed-{seed}.json").write_text(json.dumps(
            {"name": f"twin_seed-{seed}", "kind": "twin", "summary": summary}))  # fmt: skip
    for (queries, seed), share in cells.items():
        ret = share * twin
        (folder / f"queries-{queries}_seed-{seed}.json").write_text(json.dumps({
            "name": f"queries-{queries}_seed-{seed}", "kind": "train", "status": "done",
            "axes": {"queries": queries, "seed": seed}, "twin": f"twin_seed-{seed}",
            "summary": {"eval_deterministic_return": ret, "eval_sampled_return": ret / 2},
        }))  # fmt: skip


def test_a_curve_joins_sweeps_keeps_the_seeds_asked_and_refuses_a_seed_twice(
    tmp_path, benchmark_script
):
    report = benchmark_script("report_label_budget_curves")
    _cells(tmp_path / "a", {(50, 23): 0.6, (50, 22): 0.8, (250, 22): 0.9, (50, 30): 0.1})
    _cells(tmp_path / "b", {(50, 24): 0.7, (1000, 24): 1.1})
    where = f"{tmp_path / 'a'}+{tmp_path / 'b'}"

    data = report.curve_fractions(where, {22, 23, 24})
    det, sampled = data["eval_deterministic_return"], data["eval_sampled_return"]
    assert det == {50: pytest.approx([0.8, 0.6, 0.7]), 250: [0.9], 1000: [1.1]}  # by seed
    assert sampled[50] == pytest.approx([0.4, 0.3, 0.35])
    assert report.curve_fractions(where, None)[
        "eval_deterministic_return"][50] == pytest.approx([0.8, 0.6, 0.7, 0.1])  # fmt: skip

    _cells(tmp_path / "c", {(50, 22): 0.5})
    with pytest.raises(ValueError, match="50 labels has a seed twice"):
        report.curve_fractions(f"{where}+{tmp_path / 'c'}", None)
