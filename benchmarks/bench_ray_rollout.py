"""Speed: PPO-KL's env-steps/s with the local vector env vs 1 and 2 Ray rollout workers.

The stack is a ``prefenv train`` run's: prefenv/HalfCheetah-v0 -> learned reward (3-member
ensemble) -> recorder, PPO-KL with the task's preset, observation and return normalisation. All
three modes use the same ``n_envs`` and ``n_steps``; each runs ``--warmup`` iterations (which
start the actors and fill caches) and then ``--iterations`` timed ones. Reported per mode:
env-steps/s of whole iterations (rollout + update), of the rollout alone, and the median
seconds of each part. The local run steps its sub-envs in the learner's process; the Ray runs
step them in the actors (each actor also runs the policy over all ``n_envs`` rows, see
agents/ppo_kl/rollout_workers.py) and the learner waits, then updates.

Usage::

    python benchmarks/bench_ray_rollout.py                 # 8 envs x 256 steps, 3 iterations
    python benchmarks/bench_ray_rollout.py --iterations 5 --cpus 4

Writes benchmarks/results/ray_rollout.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import ray
import torch

from agents.ppo_kl import PPOKL, RayRollouts
from prefenv.app.agents import ppo_kl_config
from prefenv.app.runs import learned_reward_stack, new_reward_model, remote_envs, worker_env_stack
from prefenv.app.spec import TrainSpec

OUT = Path(__file__).parent / "results" / "ray_rollout.json"


def build(spec: TrainSpec, workers: int) -> tuple[PPOKL, RayRollouts | None]:
    """A PPO-KL learner on ``spec``'s stack, stepping it itself or through ``workers`` actors."""
    seeds = spec.seeds()
    config = ppo_kl_config(spec, seeds.agent, seeds.env)
    if not workers:
        stack = worker_env_stack(spec, spec.n_envs)  # the same stack, stepped here
        return PPOKL(stack.env, config), None
    venv = remote_envs(spec)
    reward_env, recorder = learned_reward_stack(spec, venv, new_reward_model(spec, venv))
    rollouts = RayRollouts(functools.partial(worker_env_stack, spec), workers, spec.n_envs,
                           reward_env=reward_env, recorder=recorder)  # fmt: skip
    return PPOKL(recorder, config, rollouts=rollouts), rollouts


def measure(spec: TrainSpec, workers: int, warmup: int, iterations: int) -> dict[str, Any]:
    """Seconds per iteration and per rollout (medians) and env-steps/s of ``iterations``."""
    agent, rollouts = build(spec, workers)
    rollout_seconds: list[float] = []
    collect = agent._collect_rollout  # instrumented here only: the rollout's share of a step

    def timed(use_ref: bool) -> Any:
        start = time.perf_counter()
        result = collect(use_ref)
        rollout_seconds.append(time.perf_counter() - start)
        return result

    agent._collect_rollout = timed  # type: ignore[method-assign]
    batch = spec.n_envs * spec.n_steps
    agent.learn(warmup * batch)
    rollout_seconds.clear()
    start = time.perf_counter()
    history = agent.learn(iterations * batch)
    elapsed = time.perf_counter() - start
    if rollouts is not None:
        rollouts.close()
    iteration_seconds = [batch / m.fps for m in history]
    return {
        "workers": workers,
        "steps_per_s": iterations * batch / elapsed,
        "rollout_steps_per_s": iterations * batch / sum(rollout_seconds),
        "iteration_s_median": statistics.median(iteration_seconds),
        "rollout_s_median": statistics.median(rollout_seconds),
        "update_s_median": statistics.median(
            i - r for i, r in zip(iteration_seconds, rollout_seconds, strict=True)
        ),
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| rollouts | env-steps/s (iteration) | env-steps/s (rollout only) | rollout s | update s |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        name = "local vector env" if not row["workers"] else f"{row['workers']} Ray worker(s)"
        lines.append(
            f"| {name} | {row['steps_per_s']:,.0f} | {row['rollout_steps_per_s']:,.0f} | "
            f"{row['rollout_s_median']:.2f} | {row['update_s_median']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="prefenv/HalfCheetah-v0")
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--n-steps", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="Ray's num_cpus")
    args = parser.parse_args()
    spec = TrainSpec(env=args.env, n_envs=args.n_envs, n_steps=args.n_steps).with_preset()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        rows = [measure(spec, w, args.warmup, args.iterations) for w in (0, 1, 2)]
    finally:
        ray.shutdown()
    result = {
        "benchmark": "bench_ray_rollout",
        "settings": {**vars(args), "spec": dataclasses.asdict(spec)},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(),
            "load_avg": os.getloadavg(),
        },  # fmt: skip
        "results": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    print(f"\nwritten {OUT}")


if __name__ == "__main__":
    main()
