"""Learned-reward wrapper overhead: raw vector env vs batched vs per-sub-env scoring.

For each env, in one process: steps/s of (a) the raw ``SyncVectorEnv`` of N sub-envs, (b) the
same wrapped in ``VectorPreferenceReward`` (one predictor call for all sub-envs), (c) N
``PreferenceReward`` sub-envs each scoring alone. Each wrapper holds the reward model's frozen
inference snapshot (``model.predictor()``: stacked numpy MLPs). The reward model is BPref's
(ensemble of 3 MLPs, 3x256) and prefenv's CLI default (3 MLPs, 2x64). Random actions; the env work
is identical across the three.

The three envs stay alive for the whole measurement and are stepped in interleaved rounds of
``--steps`` vector steps each (raw, batched, per-sub-env, raw, ...). The steps/s columns are the
best round of each. The overhead is given twice: from those best rounds, and as the median over
rounds of the batched/raw ratio *within* a round, whose two halves ran a fraction of a second
apart: on a shared machine whose load drifts, that paired figure is the steadier one.

Usage:
    python benchmarks/bench_wrapper_overhead.py [--steps 500] [--repeats 10] [--envs 8]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import numpy as np
import torch

from prefenv.reward_models import MLPRewardModel, RewardEnsemble
from prefenv.wrappers import PreferenceReward, VectorPreferenceReward

MODELS = {"B-Pref 3x(3x256)": (256, 256, 256), "default 3x(2x64)": (64, 64)}


class _Stepper:
    """One vector env, reset once and stepped with random actions in timed blocks."""

    def __init__(self, venv: gym.vector.VectorEnv, steps: int, seed: int = 0) -> None:
        self.venv, self.steps = venv, steps
        self.rng = np.random.default_rng(seed)
        venv.reset(seed=seed)
        self.rate()  # warm-up block (caches, first-call costs), not reported

    def rate(self) -> float:
        """Sub-env steps per second over one block of ``steps`` vector steps."""
        low, high = self.venv.single_action_space.low, self.venv.single_action_space.high
        shape = (self.steps, self.venv.num_envs, *low.shape)
        actions = self.rng.uniform(low, high, size=shape).astype(np.float32)
        start = time.perf_counter()
        for action in actions:
            self.venv.step(action)
        return self.steps * self.venv.num_envs / (time.perf_counter() - start)


def _model(env_id: str, hidden: tuple[int, ...]) -> RewardEnsemble:
    env = gym.make(env_id)
    torch.manual_seed(0)
    members = [
        MLPRewardModel.for_spaces(env.observation_space, env.action_space, hidden_sizes=hidden)
        for _ in range(3)
    ]
    return RewardEnsemble(members)


def run(
    env_id: str, hidden: tuple[int, ...], n_envs: int, steps: int, repeats: int
) -> dict[str, list[float]]:
    """Steps/s of each variant in each of ``repeats`` interleaved rounds."""
    model = _model(env_id, hidden)

    def sub_envs() -> list[Callable[[], gym.Env]]:
        return [lambda: gym.make(env_id)] * n_envs

    makers: dict[str, Callable[[], gym.vector.VectorEnv]] = {
        "raw": lambda: gym.vector.SyncVectorEnv(sub_envs()),
        "batched": lambda: VectorPreferenceReward(gym.vector.SyncVectorEnv(sub_envs()), model),
        "per_env": lambda: gym.vector.SyncVectorEnv(
            [lambda: PreferenceReward(gym.make(env_id), model)] * n_envs
        ),
    }
    steppers = {name: _Stepper(make(), steps) for name, make in makers.items()}
    rates: dict[str, list[float]] = {name: [] for name in steppers}
    for _ in range(repeats):
        for name, stepper in steppers.items():
            rates[name].append(stepper.rate())
    for stepper in steppers.values():
        stepper.venv.close()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="vector steps per timed round")
    parser.add_argument("--envs", type=int, default=8, help="sub-envs")
    parser.add_argument("--env-ids", nargs="+", default=["HalfCheetah-v5", "Hopper-v5"])
    parser.add_argument("--repeats", type=int, default=10, help="interleaved rounds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"torch threads: {torch.get_num_threads()}, sub-envs: {args.envs}, "
        f"rounds: {args.repeats} x {args.steps} vector steps, load average: {os.getloadavg()[0]:.1f}"
    )
    print()
    print(
        "| env | reward model | raw steps/s | batched learned reward | per-sub-env learned "
        "reward | batched steps/s vs raw | same, median of paired rounds | batched vs "
        "per-sub-env |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for env_id in args.env_ids:
        for label, hidden in MODELS.items():
            r = run(env_id, hidden, args.envs, args.steps, args.repeats)
            raw, batched, per_env = max(r["raw"]), max(r["batched"]), max(r["per_env"])
            paired = np.median(np.array(r["batched"]) / np.array(r["raw"]))
            print(
                f"| {env_id} | {label} | {raw:,.0f} | {batched:,.0f} | {per_env:,.0f} | "
                f"{(batched / raw - 1) * 100:+.1f}% | {(paired - 1) * 100:+.1f}% | "
                f"{batched / per_env:.2f}x |"
            )


if __name__ == "__main__":
    main()
