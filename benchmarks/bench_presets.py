"""Per-task PPO-KL presets: the generic settings against the tuned pair, on the TRUE reward.

Issue 14, item 1: "report each preset's effect on the true reward". Every cell (env, arm, seed)
trains PPO-KL for ``--steps`` env steps on ``gym.make_vec(env, 8, "sync")`` of a ``prefenv/*``
MuJoCo id, whose reward *is* the true reward (no preference model), then evaluates the final
policy on one fresh env for ``--eval-episodes`` episodes twice: deterministic (the mean action)
and sampled (``predict(obs, deterministic=False)``).

Arms (every arm: 8 envs x 256 steps, 10 epochs, norm_obs and norm_reward, as ``prefenv train``):

- ``generic``: the remaining ``PPOKLConfig`` defaults (minibatch 64, initial log-std 0), i.e.
  SB3's generic PPO settings;
- ``tuned``: + minibatch 256 and initial log-std -2 (``TUNED`` of ``bench_ppo_quality.py``);
- ``NAME:KEY=VAL,KEY=VAL``: more ``PPOKLConfig`` fields on top of arm NAME when NAME is
  ``generic`` or ``tuned`` (``tuned:log_std_init=-1``), else on top of ``generic``
  (``big:batch_size=512``). Values are Python literals (``-1``, ``3e-4``, ``True``).

Each cell is written to ``--out/<env>/<arm>_seed<S>_steps<N>.json`` as soon as it finishes and a
rerun skips cells already there, so a grid can be split over processes (one per core, each
``--threads 1``). At the end (or with ``--report`` alone) a Markdown table of every finished cell
under ``--out`` is printed: per cell, then per env/arm/steps mean +- std over seeds.

Recorded per cell: deterministic and sampled mean/std return and mean episode length, the
training curve's end (mean env return of the last 10 training episodes, each rollout's mean
counted once per episode it finished, as ``bench_ppo_quality.py`` does), training wall and CPU
seconds, the 1-minute load average before and after, the settings and the command.

Usage::

    python benchmarks/bench_presets.py --envs prefenv/Hopper-v0 --seeds 11 --steps 300000
    python benchmarks/bench_presets.py --envs prefenv/Walker2d-v0 --seeds 11 12 \\
        --arms generic tuned tuned:log_std_init=-1
    python benchmarks/bench_presets.py --report               # table of finished cells only
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
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import prefenv
from agents.ppo_kl import PPOKL, PPOKLConfig
from agents.ppo_kl.logger import IterationMetrics
from prefenv.app.spec import write_json_atomic

NUM_ENVS = 8
BASE: dict[str, Any] = {
    "n_steps": 256,
    "n_epochs": 10,
    "batch_size": 64,
    "log_std_init": 0.0,
    "norm_obs": True,
    "norm_reward": True,
}
"""Settings every arm shares (``generic`` is exactly these over the ``PPOKLConfig`` defaults)."""

# bench_ppo_quality.py's TUNED: minibatch 256 and initial log-std -2 (RL Zoo's tuned HalfCheetah).
ARMS: dict[str, dict[str, Any]] = {
    "generic": {},
    "tuned": {"batch_size": 256, "log_std_init": -2.0},
}
DEFAULT_ENVS = ["prefenv/Hopper-v0", "prefenv/Walker2d-v0", "prefenv/HalfCheetah-v0"]
OUT = Path(__file__).parent / "out" / "presets"
EVAL_SEED_OFFSET = 12345  # eval env seeds differ from every training env seed

Curve = list[tuple[int, float, float, float]]  # (timesteps, wall s, cpu s, last-10 mean return)


@dataclasses.dataclass(frozen=True)
class Arm:
    """A named set of ``PPOKLConfig`` settings over ``BASE``.

    Attributes:
        name: the label in tables and file names (``tuned+log_std_init=-1``).
        settings: ``PPOKLConfig`` fields over the dataclass defaults (``BASE`` included).
    """

    name: str
    settings: dict[str, Any]


def parse_arm(spec: str) -> Arm:
    """``generic``, ``tuned`` or ``NAME:KEY=VAL,KEY=VAL`` -> an ``Arm`` (fields checked).

    Raises:
        ValueError: unknown arm name without settings, a malformed ``KEY=VAL``, or a key that is
            not a settable ``PPOKLConfig`` field (``seed`` and ``torch_threads`` come from
            ``--seeds`` and ``--threads``).
    """
    name, _, extra = spec.partition(":")
    if not extra and name not in ARMS:
        raise ValueError(
            f"unknown arm {spec!r}: use one of {sorted(ARMS)} or NAME:KEY=VAL,... "
            "(e.g. tuned:log_std_init=-1)"
        )
    overrides: dict[str, Any] = {}
    for item in filter(None, extra.split(",")):
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"arm {spec!r}: {item!r} is not KEY=VAL (e.g. log_std_init=-1)")
        try:
            overrides[key.strip()] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            overrides[key.strip()] = text.strip()  # a plain string such as activation=relu
    fields = {f.name for f in dataclasses.fields(PPOKLConfig)} - {"seed", "torch_threads"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"arm {spec!r}: {unknown} are not settable PPOKLConfig fields (--seeds and --threads "
            f"set seed and torch_threads); settable: {sorted(fields)}"
        )
    settings = {**BASE, **ARMS.get(name, {}), **overrides}
    label = name + "".join(f"+{k}={v}" for k, v in overrides.items())
    PPOKLConfig(**settings)  # validate now, not after the first cell has trained
    return Arm(label, settings)


def cell_path(out: Path, env_id: str, arm: Arm, seed: int, steps: int) -> Path:
    """Where the cell's JSON lives: ``out/<env>/<arm>_seed<S>_steps<N>.json`` (safe names)."""
    safe = "".join(c if c.isalnum() or c in "+-=._" else "_" for c in arm.name)
    return out / env_id.replace("/", "_") / f"{safe}_seed{seed}_steps{steps}.json"


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def train(env_id: str, arm: Arm, seed: int, steps: int, threads: int) -> tuple[PPOKL, Curve]:
    """Train PPO-KL on the true reward of ``env_id`` (8 sync envs) for ``steps`` env steps.

    Returns:
        The trained agent and its curve: one row per rollout that had finished episodes.
    """
    venv = gym.make_vec(env_id, num_envs=NUM_ENVS, vectorization_mode="sync")
    agent = PPOKL(venv, PPOKLConfig(**arm.settings, seed=seed, torch_threads=threads))
    curve: Curve = []
    recent: deque[float] = deque(maxlen=10)
    wall0, cpu0 = _clock()

    def record(metrics: IterationMetrics) -> None:
        if metrics.episodes > 0:
            recent.extend([metrics.episode_reward] * min(metrics.episodes, 10))
            wall, cpu = _clock()
            curve.append((metrics.timesteps, wall - wall0, cpu - cpu0, float(np.mean(recent))))

    agent.learn(steps, callback=record)
    venv.close()
    return agent, curve


def evaluate(
    env_id: str, agent: PPOKL, episodes: int, deterministic: bool, seed: int
) -> dict[str, Any]:
    """Return and length of ``episodes`` full episodes of ``agent`` on one fresh env.

    Returns:
        ``{"mean", "std", "length", "returns", "lengths"}``: mean/std of the true returns, mean
        episode length, and the per-episode lists ``[episodes]``.
    """
    env = gym.make(env_id)
    obs, _ = env.reset(seed=seed + EVAL_SEED_OFFSET)
    returns: list[float] = []
    lengths: list[int] = []
    total, length = 0.0, 0
    while len(returns) < episodes:
        action = agent.predict(obs[None], deterministic=deterministic)[0]
        obs, reward, terminated, truncated, _ = env.step(action)
        total, length = total + float(reward), length + 1
        if terminated or truncated:
            returns.append(total)
            lengths.append(length)
            total, length = 0.0, 0
            obs, _ = env.reset()
    env.close()
    return {
        "mean": float(np.mean(returns)),
        "std": float(np.std(returns)),
        "length": float(np.mean(lengths)),
        "returns": returns,
        "lengths": lengths,
    }


def run_cell(
    env_id: str, arm: Arm, seed: int, steps: int, episodes: int, threads: int
) -> dict[str, Any]:
    """Train one cell, evaluate it deterministic and sampled; the JSON-ready record."""
    load_before = os.getloadavg()[0]
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    wall0, cpu0 = _clock()
    agent, curve = train(env_id, arm, seed, steps, threads)
    wall, cpu = _clock()
    return {
        "env": env_id,
        "arm": arm.name,
        "seed": seed,
        "steps": steps,
        "settings": arm.settings,
        "deterministic": evaluate(env_id, agent, episodes, True, seed),
        "sampled": evaluate(env_id, agent, episodes, False, seed),
        "curve_end": curve[-1][3] if curve else float("nan"),
        "curve": curve,
        "train_wall_s": wall - wall0,
        "train_cpu_s": cpu - cpu0,
        "started": started,
        "load_1min_before": load_before,
        "load_1min_after": os.getloadavg()[0],
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
    }


def _mean_std(values: list[float]) -> str:
    return (
        f"{np.mean(values):,.0f} ± {np.std(values):,.0f}"
        if len(values) > 1
        else f"{values[0]:,.0f}"
    )


def report(out: Path) -> str:
    """Markdown tables of every finished cell under ``out``: per cell, then per env/arm/steps."""
    cells = [json.loads(p.read_text()) for p in sorted(out.glob("*/*.json"))]
    if not cells:
        return f"no finished cells under {out}"
    cells.sort(key=lambda c: (c["env"], c["steps"], c["arm"], c["seed"]))
    lines = [
        "| env | arm | seed | steps | det. return (length) | sampled return (length) "
        "| train-curve end | CPU s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for c in cells:
        det, smp = c["deterministic"], c["sampled"]
        lines.append(
            f"| {c['env']} | {c['arm']} | {c['seed']} | {c['steps']:,} "
            f"| {det['mean']:,.0f} ({det['length']:.0f}) | {smp['mean']:,.0f} ({smp['length']:.0f}) "
            f"| {c['curve_end']:,.0f} | {c['train_cpu_s']:,.0f} |"
        )
        groups[(c["env"], c["arm"], c["steps"])].append(c)
    lines += [
        "",
        "| env | arm | steps | seeds | det. return | sampled return | train-curve end |",
        "|---|---|---|---|---|---|---|",
    ]
    for (env_id, arm, steps), group in groups.items():
        seeds = ", ".join(str(c["seed"]) for c in group)
        lines.append(
            f"| {env_id} | {arm} | {steps:,} | {seeds} "
            f"| {_mean_std([c['deterministic']['mean'] for c in group])} "
            f"| {_mean_std([c['sampled']['mean'] for c in group])} "
            f"| {_mean_std([c['curve_end'] for c in group])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--envs", nargs="+", default=DEFAULT_ENVS, help="prefenv/* MuJoCo ids")
    parser.add_argument(
        "--arms", nargs="+", default=["generic", "tuned"], help="generic, tuned, NAME:KEY=VAL,..."
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[11])
    parser.add_argument("--steps", type=int, default=300_000, help="env steps per cell")
    parser.add_argument("--eval-episodes", type=int, default=10, help="per mode (det., sampled)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one core per run)")
    parser.add_argument("--out", type=Path, default=OUT, help="one JSON per finished cell")
    parser.add_argument("--report", action="store_true", help="only print the table of --out")
    args = parser.parse_args(argv)
    if not args.report:
        prefenv.register_task_envs()
        arms = [parse_arm(spec) for spec in args.arms]  # all checked before anything trains
        torch.set_num_threads(args.threads)
        for env_id in args.envs:
            for seed in args.seeds:
                for arm in arms:
                    path = cell_path(args.out, env_id, arm, seed, args.steps)
                    if path.exists():
                        print(f"skip {path} (finished)", flush=True)
                        continue
                    record = run_cell(
                        env_id, arm, seed, args.steps, args.eval_episodes, args.threads
                    )
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_json_atomic(path, record)  # fsync + rename: a kill leaves no half file
                    det, smp = record["deterministic"], record["sampled"]
                    print(
                        f"{env_id} {arm.name} seed {seed}: det {det['mean']:.0f} "
                        f"({det['length']:.0f}), sampled {smp['mean']:.0f} ({smp['length']:.0f}), "
                        f"curve {record['curve_end']:.0f}, {record['train_cpu_s']:.0f} CPU-s",
                        flush=True,
                    )
    print(report(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
