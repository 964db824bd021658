"""Learned-reward wrapper overhead: raw vector env vs batched vs per-sub-env scoring.

For each env, in one process: steps/s of (a) the raw ``SyncVectorEnv`` of N sub-envs, (b) the
same wrapped in ``VectorPreferenceReward`` (one reward-model call for all sub-envs), (c) N
``PreferenceReward`` sub-envs each scoring alone. The reward model is BPref's (ensemble of 3
MLPs, 3x256) and prefenv's CLI default (3 MLPs, 2x64). Random actions; the env work is identical
across the three. Each figure is the best of ``--repeats`` interleaved measurements, which damps
interference from other processes on a shared machine.

Usage:
    python benchmarks/bench_wrapper_overhead.py [--steps 3000] [--envs 8]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import numpy as np
import torch

from prefenv.reward_models import MLPRewardModel, RewardEnsemble
from prefenv.wrappers import PreferenceReward, VectorPreferenceReward


def _steps_per_second(venv: gym.vector.VectorEnv, steps: int, seed: int = 0) -> float:
    venv.reset(seed=seed)
    rng = np.random.default_rng(seed)
    low, high = venv.single_action_space.low, venv.single_action_space.high
    actions = rng.uniform(low, high, size=(steps, venv.num_envs, *low.shape)).astype(np.float32)
    for t in range(min(50, steps)):  # warm-up
        venv.step(actions[t])
    start = time.perf_counter()
    for t in range(steps):
        venv.step(actions[t])
    elapsed = time.perf_counter() - start
    venv.close()
    return steps * venv.num_envs / elapsed


MODELS = {"B-Pref 3x(3x256)": (256, 256, 256), "default 3x(2x64)": (64, 64)}


def _model(env_id: str, hidden: tuple[int, ...]) -> RewardEnsemble:
    env = gym.make(env_id)
    torch.manual_seed(0)
    members = [
        MLPRewardModel.for_spaces(env.observation_space, env.action_space, hidden_sizes=hidden)
        for _ in range(3)
    ]
    return RewardEnsemble(members)


def run(env_id: str, hidden: tuple[int, ...], n_envs: int, steps: int, repeats: int) -> dict:
    model = _model(env_id, hidden)
    makers = {
        "raw": lambda: gym.vector.SyncVectorEnv([lambda: gym.make(env_id)] * n_envs),
        "batched": lambda: VectorPreferenceReward(
            gym.vector.SyncVectorEnv([lambda: gym.make(env_id)] * n_envs), model
        ),
        "per_env": lambda: gym.vector.SyncVectorEnv(
            [lambda: PreferenceReward(gym.make(env_id), model)] * n_envs
        ),
    }
    best = dict.fromkeys(makers, 0.0)
    for _ in range(repeats):
        for name, make in makers.items():
            best[name] = max(best[name], _steps_per_second(make(), steps))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="vector steps per measurement")
    parser.add_argument("--envs", type=int, default=8, help="sub-envs")
    parser.add_argument("--env-ids", nargs="+", default=["HalfCheetah-v5", "Pendulum-v1"])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (best kept)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"torch threads: {torch.get_num_threads()}, sub-envs: {args.envs}, vector steps: {args.steps}"
    )
    print()
    print(
        "| env | reward model | raw steps/s | batched learned reward | per-sub-env learned "
        "reward | batched steps/s vs raw | batched vs per-sub-env |"
    )
    print("|---|---|---|---|---|---|---|")
    for env_id in args.env_ids:
        for label, hidden in MODELS.items():
            r = run(env_id, hidden, args.envs, args.steps, args.repeats)
            print(
                f"| {env_id} | {label} | {r['raw']:,.0f} | {r['batched']:,.0f} | "
                f"{r['per_env']:,.0f} | {(r['batched'] / r['raw'] - 1) * 100:+.1f}% | "
                f"{r['batched'] / r['per_env']:.2f}x |"
            )


if __name__ == "__main__":
    main()
