"""Label-budget curve (issue 14): true return from N oracle labels, as a fraction of true-reward RL.

A cell is (env, labels, arm, seed): ``prefenv train`` (``prefenv.app.api.start``) with that many
labels and the arm's method switches, then ``prefenv.app.api.evaluate`` for ``--eval-episodes``
deterministic and sampled episodes on the hidden true reward. Its reference, the *twin*, is
(env, ``true-reward``, seed): the same agent, preset, steps and seed trained on the env's own
reward (``_true_reward_run`` of ``bench_preferences.py``), shared by every labels/arm of that env
and seed. The curve is a cell's return divided by its twin's.

Arms (every other ``TrainSpec`` field at ``prefenv train``'s default, the task's preset resolved):

- ``off``: every method off;
- ``on``: ``unsupervised`` + ``rune`` + ``query_window 10`` + ``robust_labels`` + ``surf``;
- ``NAME:field=value,...``: ``TrainSpec`` fields over ``off``, for the ablation, e.g.
  ``no-surf:unsupervised=true,rune=true,query_window=10,robust_labels=true``.

Each finished cell is written at once to ``--out-results/<env>/<arm>_L<labels>_s<seed>_steps<N>
.json`` (the twin: ``true-reward_s<seed>_steps<N>.json``; a teacher other than ``oracle`` joins
the arm: ``off_mistake_L1000_...``): deterministic and sampled returns and lengths,
the reward model's held-out accuracy in the last round, training wall/CPU seconds, the 1-minute
load before and after, the ``TrainSpec`` and the command. A rerun skips finished cells, so a grid
can be split over processes (one core each, ``--threads 1``) and resumed after a kill. Run folders
go to ``--out-runs`` (git-ignored). Order: for each env, the twins of every seed, then labels
ascending (seeds, then arms, inside), so a partial grid is already a curve.

``--report``: per env, the twins' returns, then labels x arm: the deterministic return over the
twin's deterministic one and the sampled over the sampled (mean ± std over seeds, per seed, the
worst seed), and the figure. A fraction means something only for a positive twin return
(HalfCheetah, Walker2d, Hopper; not Reacher, whose returns are negative). An arm's values cannot
hold commas, so no dict values (``hparams``, ``env_kwargs``).

Usage::

    python benchmarks/bench_label_budget.py --envs prefenv/HalfCheetah-v0 --labels 250 50 \\
        --arms off on --seeds 21 --no-start-after 04:25   # one process per core
    python benchmarks/bench_label_budget.py --labels 100 --seeds 21 --arms on \\
        no-surf:unsupervised=true,rune=true,query_window=10,robust_labels=true
    python benchmarks/bench_label_budget.py --cells    # the planned cells, in order, and exit
    python benchmarks/bench_label_budget.py --report   # tables + benchmarks/figures/label_budget.png
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import torch
from bench_preferences import _true_reward_run  # the twin, exactly as bench_preferences runs it

from prefenv.app.api import evaluate, start
from prefenv.app.spec import TrainSpec, write_json_atomic

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "label_budget"
RUNS = HERE / "out" / "label_budget"
FIGURE = HERE / "figures" / "label_budget.png"
TWIN = "true-reward"
DEFAULT_ENVS = ["prefenv/HalfCheetah-v0", "prefenv/Walker2d-v0"]
DEFAULT_LABELS = [50, 100, 250, 1000]  # issue 14's budgets (QPA: 100 walker, 250 cheetah)
GOALS = (0.9, 0.7)  # issue 14: >= 0.9 of the twin at 250 labels, >= 0.7 at 50 (REED: 0.66-0.83)
ARMS: dict[str, dict[str, Any]] = {
    "off": {},
    # query_window 10: QPA's window of the newest 10 episodes (Hu et al. 2024, QPA's default)
    "on": dict(unsupervised=True, rune=True, query_window=10, robust_labels=True, surf=True),
}
AXES = ("env", "queries", "seed", "steps", "rounds", "initial_steps", "teacher")
"""``TrainSpec`` fields the command line's axes set: an arm may not set them."""


@dataclasses.dataclass(frozen=True)
class Arm:
    """A named set of ``TrainSpec`` fields over the all-off defaults.

    Attributes:
        name: the label in tables and file names (``on``, ``no-surf``).
        fields: ``TrainSpec`` field -> value (``{"surf": True}``).
    """

    name: str
    fields: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Cell:
    """One unit of the grid; ``labels is None`` for the twin (its arm is ``true-reward``)."""

    env: str
    labels: int | None
    arm: Arm
    seed: int
    teacher: str = "oracle"

    def path(self, results: Path, steps: int) -> Path:
        """``results/<env>/<arm>_L<labels>_s<seed>_steps<N>.json`` (the twin has no ``_L``).

        A teacher other than the oracle joins the arm: ``off_mistake_L1000_s21_steps300000``.
        """
        budget = "" if self.labels is None else f"_L{self.labels}"
        tag = self.arm.name if self.teacher == "oracle" else f"{self.arm.name}_{self.teacher}"
        safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in tag)
        name = f"{safe}{budget}_s{self.seed}_steps{steps}"
        return results / self.env.replace("/", "_") / f"{name}.json"


def _literal(text: str) -> Any:
    """``true``/``false`` (any case), a Python literal (``10``, ``0.5``), else the string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_arm(text: str) -> Arm:
    """``off``, ``on`` or ``NAME:field=value,...`` -> an :class:`Arm` (fields checked now).

    Raises:
        ValueError: an unknown arm without fields, a malformed ``field=value``, a field that is
            not ``TrainSpec``'s or that an axis sets (``--labels`` sets ``queries``...), or values
            ``TrainSpec`` refuses (its message names the option).
    """
    name, _, extra = text.partition(":")
    if not extra:
        if name not in ARMS:
            raise ValueError(
                f"unknown arm {text!r}: use {sorted(ARMS)} or NAME:field=value,... "
                "(e.g. no-surf:unsupervised=true,rune=true,query_window=10,robust_labels=true)"
            )
        return Arm(name, ARMS[name])
    if name in ARMS or name == TWIN:
        raise ValueError(f"arm {text!r}: {name!r} is a built-in arm's name; choose another NAME")
    fields: dict[str, Any] = {}
    for item in filter(None, extra.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"arm {text!r}: {item!r} is not field=value (e.g. surf=false)")
        fields[key.strip()] = _literal(value.strip())
    names = {f.name for f in dataclasses.fields(TrainSpec)} - set(AXES)
    unknown = sorted(set(fields) - names)
    if unknown:
        raise ValueError(
            f"arm {text!r}: {unknown} are not TrainSpec fields an arm may set (--envs, --labels, "
            f"--seeds, --steps, --rounds, --initial-steps, --teacher set {list(AXES)}); "
            f"settable: {sorted(names)}"
        )
    TrainSpec(**fields)  # refuse bad values before anything trains
    return Arm(name, fields)


def plan(
    envs: list[str], labels: list[int], arms: list[Arm], seeds: list[int], teacher: str
) -> list[Cell]:
    """Every cell in run order: per env, the twins of every seed, then labels ascending."""
    twin = Arm(TWIN, {})
    cells: list[Cell] = []
    for env in envs:
        cells += [Cell(env, None, twin, seed) for seed in seeds]
        for budget in sorted(set(labels)):
            cells += [Cell(env, budget, arm, seed, teacher) for seed in seeds for arm in arms]
    return cells


def cell_spec(cell: Cell, args: argparse.Namespace) -> TrainSpec:
    """The cell's ``TrainSpec``, preset resolved (the twin: the all-off spec, labels unused)."""
    return TrainSpec(
        env=cell.env,
        teacher=args.teacher,
        queries=cell.labels or TrainSpec.queries,
        steps=args.steps,
        rounds=args.rounds,
        initial_steps=args.initial_steps,
        seed=cell.seed,
        eval_episodes=0,  # evaluated below with --eval-episodes: not twice
        **cell.arm.fields,
    ).with_preset()


def _train(cell: Cell, spec: TrainSpec, run_dir: Path, episodes: int) -> dict[str, Any]:
    """Train and evaluate one cell; its results (without the bookkeeping)."""
    if cell.labels is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        twin = _true_reward_run(spec, run_dir, episodes)
        return {
            mode: {key: twin[prefix + key] for key in ("true_return_mean", "length_mean")}
            for mode, prefix in (("deterministic", ""), ("sampled", "sampled_"))
        } | {
            "train_wall_s": twin["seconds"],
            "train_cpu_s": twin["cpu_seconds"],
        }
    wall0, cpu0 = time.perf_counter(), time.process_time()
    summary = start(spec, run_dir, overwrite=True).run(progress=False)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    result = evaluate(run_dir, episodes)
    return {
        "deterministic": result["deterministic"],
        "sampled": result["sampled"],
        "reward_model_val_accuracy": summary["reward_model_val_accuracy"],
        "labels_used": summary["labels_used"],
        "final_train_true_return": summary["final_true_return"],
        "train_wall_s": wall,
        "train_cpu_s": cpu,
    }


def run_cell(cell: Cell, args: argparse.Namespace) -> dict[str, Any]:
    """Train and evaluate ``cell``; the JSON-ready record."""
    spec = cell_spec(cell, args)
    run_dir = Path(cell.path(args.out_runs, args.steps).with_suffix(""))
    load_before = os.getloadavg()[0]
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = _train(cell, spec, run_dir, args.eval_episodes)
    return {
        "env": cell.env,
        "labels": cell.labels,
        "arm": cell.arm.name,
        "seed": cell.seed,
        "steps": args.steps,
        "teacher": args.teacher,
        "eval_episodes": args.eval_episodes,
        **result,
        "wall_s": time.perf_counter() - wall0,
        "cpu_s": time.process_time() - cpu0,
        "started": started,
        "load_1min_before": load_before,
        "load_1min_after": os.getloadavg()[0],
        "torch_threads": args.threads,
        "spec": dataclasses.asdict(spec),
        "run_dir": str(run_dir),
        "command": " ".join([sys.executable, *sys.argv]),
    }


def run_grid(cells: list[Cell], args: argparse.Namespace) -> None:
    """Run every unfinished cell in order, writing each one's JSON as soon as it finishes."""
    torch.set_num_threads(args.threads)
    for cell in cells:
        path = cell.path(args.out_results, args.steps)
        if path.exists():
            print(f"skip {path} (finished)", flush=True)
            continue
        now = datetime.datetime.now(datetime.UTC)
        if args.no_start_after and now.strftime("%H:%M") >= args.no_start_after:
            print(f"stop: {now:%H:%M} UTC is past --no-start-after {args.no_start_after}")
            return
        print(f"start {path.stem} ({cell.env}) at {time.strftime('%H:%M:%S')}", flush=True)
        record = run_cell(cell, args)
        write_json_atomic(path, record)
        det, smp = record["deterministic"], record["sampled"]
        print(
            f"done {path.stem}: det {det['true_return_mean']:,.0f} ({det['length_mean']:.0f}), "
            f"sampled {smp['true_return_mean']:,.0f} ({smp['length_mean']:.0f}), "
            f"{record['wall_s']:.0f} s wall, {record['cpu_s']:.0f} CPU-s",
            flush=True,
        )


def load_cells(results: Path) -> list[dict[str, Any]]:
    """Every finished cell's record under ``results`` (any env, steps, seed)."""
    return [json.loads(p.read_text()) for p in sorted(results.glob("*/*.json"))]


def fractions(records: list[dict[str, Any]]) -> dict[tuple[str, int, str, int], dict[str, Any]]:
    """``(env, steps, arm, labels) -> {seed: (det fraction, sampled fraction, record)}``.

    A cell counts only when its twin (same env, steps, seed) has finished; a teacher other than
    the oracle joins the arm's name (``off (mistake)``).
    """
    twins = {(r["env"], r["steps"], r["seed"]): r for r in records if r["arm"] == TWIN}
    table: dict[tuple[str, int, str, int], dict[str, Any]] = defaultdict(dict)
    for r in records:
        twin = twins.get((r["env"], r["steps"], r["seed"]))
        if r["arm"] == TWIN or twin is None:
            continue
        det, smp = (
            r[mode]["true_return_mean"] / twin[mode]["true_return_mean"]
            for mode in ("deterministic", "sampled")
        )
        arm = r["arm"] if r["teacher"] == "oracle" else f"{r['arm']} ({r['teacher']})"
        table[(r["env"], r["steps"], arm, r["labels"])][r["seed"]] = (det, smp, r)
    return dict(sorted(table.items()))


def _spread(values: dict[int, float]) -> str:
    """``0.93 ± 0.04 | s21 0.97, s22 0.89 | s22`` (mean ± std, per seed, the worst seed)."""
    arr = np.array(list(values.values()))
    worst = min(values, key=values.__getitem__)
    per_seed = ", ".join(f"s{s} {v:.2f}" for s, v in sorted(values.items()))
    return f"{arr.mean():.2f} ± {arr.std():.2f} | {per_seed} | s{worst}"


def report(results: Path) -> str:
    """Markdown: per env and steps, the twins, then labels x arm as fractions of the twin."""
    records = load_cells(results)
    if not records:
        return f"no finished cells under {results}"
    lines: list[str] = []
    twins = sorted((r for r in records if r["arm"] == TWIN), key=lambda r: (r["env"], r["seed"]))
    for env, steps in sorted({(r["env"], r["steps"]) for r in records}):
        lines += [f"### {env}, {steps:,} steps", "", "| twin seed | det. return (length) "
                  "| sampled return (length) | wall s |", "|---|---|---|---|"]  # fmt: skip
        for t in (t for t in twins if (t["env"], t["steps"]) == (env, steps)):
            det, smp = t["deterministic"], t["sampled"]
            lines.append(
                f"| {t['seed']} | {det['true_return_mean']:,.0f} ({det['length_mean']:.0f}) "
                f"| {smp['true_return_mean']:,.0f} ({smp['length_mean']:.0f}) "
                f"| {t['wall_s']:,.0f} |"
            )
        lines += [
            "",
            "| labels | arm | det. fraction (mean ± std) | per seed | worst | sampled fraction "
            "| per seed | worst | RM val acc | det. return | wall s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        rows = sorted(fractions(records).items(), key=lambda kv: (kv[0][3], kv[0][2]))
        for (e, s, arm, labels), by_seed in rows:  # labels ascending, arms side by side
            if (e, s) != (env, steps):
                continue
            cells = [c for _, _, c in by_seed.values()]
            accuracy = [c["reward_model_val_accuracy"] for c in cells]
            returns = [c["deterministic"]["true_return_mean"] for c in cells]
            lines.append(
                f"| {labels} | {arm} | {_spread({k: v[0] for k, v in by_seed.items()})} "
                f"| {_spread({k: v[1] for k, v in by_seed.items()})} "
                f"| {', '.join('n/a' if a is None else f'{a:.2f}' for a in accuracy)} "
                f"| {', '.join(f'{r:,.0f}' for r in returns)} "
                f"| {np.mean([c['wall_s'] for c in cells]):,.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(results: Path, figure: Path) -> Path | None:
    """Fraction of the twin vs labels (log x), deterministic and sampled; band = min-max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[tuple[str, int, str], list[tuple[int, list[float], list[float]]]] = defaultdict(
        list
    )
    for (env, steps, arm, labels), by_seed in fractions(load_cells(results)).items():
        values = list(by_seed.values())
        curves[(env, steps, arm)].append((labels, [v[0] for v in values], [v[1] for v in values]))
    if not curves:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for mode, ax in enumerate(axes):
        for (env, steps, arm), points in sorted(curves.items()):
            points.sort()
            x = [p[0] for p in points]
            ys = [np.array(p[1 + mode]) for p in points]
            name = env.split("/")[-1].removesuffix("-v0")
            seeds = max(len(y) for y in ys)
            line = ax.plot(x, [y.mean() for y in ys], marker="o",
                           label=f"{name} {arm} ({seeds} seeds, {steps // 1000}k steps)")  # fmt: skip
            ax.fill_between(x, [y.min() for y in ys], [y.max() for y in ys],
                            color=line[0].get_color(), alpha=0.2)  # fmt: skip
        for goal in GOALS:
            ax.axhline(goal, color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ticks = sorted({p[0] for points in curves.values() for p in points})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("oracle labels")
        ax.set_title(("deterministic", "sampled")[mode] + " policy")
    axes[0].set_ylabel("true return / true-reward twin's")
    axes[0].legend(fontsize=7)
    fig.suptitle("Label-budget curve (band: min-max over seeds; dashed: goals 0.9 and 0.7)")
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=110)
    plt.close(fig)
    return figure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--envs", nargs="+", default=DEFAULT_ENVS)
    parser.add_argument("--labels", type=int, nargs="+", default=DEFAULT_LABELS)
    parser.add_argument("--arms", nargs="+", default=["off", "on"], help="off, on, NAME:f=v,...")
    parser.add_argument("--seeds", type=int, nargs="+", default=[21, 22, 23])
    parser.add_argument("--steps", type=int, default=300_000, help="env steps, run and twin")
    parser.add_argument("--rounds", type=int, default=11, help="feedback rounds, initial included")
    parser.add_argument("--initial-steps", type=int, default=16_384)
    parser.add_argument("--teacher", default="oracle")
    parser.add_argument("--eval-episodes", type=int, default=10, help="per mode (det., sampled)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one core a run)")
    parser.add_argument("--out-results", type=Path, default=RESULTS, help="one JSON per cell")
    parser.add_argument("--out-runs", type=Path, default=RUNS, help="run folders (git-ignored)")
    parser.add_argument("--figure", type=Path, default=FIGURE, help="--report's figure")
    parser.add_argument(
        "--no-start-after", default="", help="HH:MM (UTC, same day): start no cell after it"
    )
    parser.add_argument("--cells", action="store_true", help="list the planned cells and exit")
    parser.add_argument("--report", action="store_true", help="tables and figure only")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.out_results))
        print(f"figure: {plot(args.out_results, args.figure) or 'none (no cell has a twin)'}")
        return 0
    arms = [parse_arm(a) for a in args.arms]
    cells = plan(args.envs, args.labels, arms, args.seeds, args.teacher)
    if args.cells:
        for cell in cells:
            path = cell.path(args.out_results, args.steps)
            print(f"{'finished' if path.exists() else 'to run  '} {path}")
        return 0
    run_grid(cells, args)
    print(report(args.out_results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
