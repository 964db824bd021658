"""HalfCheetah's posture trap: does a run's final agent run on its feet or on its back?

HalfCheetah's observation starts with the torso's height and its pitch (``rooty``, radians; 0 is
upright). A cheetah that has flipped over and runs on its back holds ``|pitch|`` near pi. For each
run folder this loads the final agent as ``prefenv eval`` does and plays ``--episodes``
deterministic episodes, then reports the true return, the share of steps with ``|pitch| > pi / 2``
(upside down) and the mean pitch and torso height.

Usage::

    python benchmarks/report_posture.py RUN_DIR [RUN_DIR ...] [--episodes 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import torch

from prefenv.agent import agent_factory
from prefenv.app.reports import episode_returns
from prefenv.app.runs import make_vector_env
from prefenv.app.spec import load_spec
from prefenv.reward_models import load_reward_model
from prefenv.wrappers import VectorPreferenceReward


def posture(run: Path, episodes: int, seed: int = 12345) -> dict[str, float]:
    """Deterministic episodes of ``run``'s agent: return, share upside down, mean pitch/height."""
    spec = load_spec(run)
    if "HalfCheetah" not in spec.env:
        raise SystemExit(f"{run}: a {spec.env} run; the pitch test is HalfCheetah's")
    spec = dataclasses.replace(spec, n_envs=1)
    env = make_vector_env(spec)
    spaces = (env.single_observation_space, env.single_action_space)
    reward_env = VectorPreferenceReward(env, load_reward_model(run / "reward_model", *spaces))
    agent = agent_factory(spec.agent).load(spec, reward_env, run / "agent", log_dir=None)
    seen: list[np.ndarray] = []

    def predict(obs: np.ndarray) -> np.ndarray:  # every observation the agent acts on
        seen.append(obs[0, :2].copy())  # torso height and pitch
        return agent.predict(obs, True)

    returns = episode_returns(reward_env, predict, episodes, seed).true
    reward_env.close()
    height, pitch = np.array(seen).T
    pitch_array = np.abs(pitch)
    return {
        "return": float(np.mean(returns)),
        "upside_down": float(np.mean(pitch_array > np.pi / 2)),
        "mean_abs_pitch": float(pitch_array.mean()),
        "mean_height": float(height.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders")
    parser.add_argument("--episodes", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| run | true return | share of steps upside down | mean abs pitch (rad) | height |")
    print("|---|---:|---:|---:|---:|")
    for run in args.runs:
        p = posture(run, args.episodes)
        print(f"| {run.name} | {p['return']:,.0f} | {p['upside_down']:.2f} | "
              f"{p['mean_abs_pitch']:.2f} | {p['mean_height']:.2f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
