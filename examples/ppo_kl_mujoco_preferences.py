"""PPO-KL on a MuJoCo task from synthetic preferences, assembled from the library's parts.

The same pipeline `prefenv train` runs, spelled out: vector env -> learned-reward wrapper ->
trajectory recorder -> PPO-KL; a B-Pref teacher labels segment pairs into a durable store and the
reward ensemble is refit every round. Prints one line per round.

    python examples/ppo_kl_mujoco_preferences.py [--env prefenv/Hopper-v0] [--steps 100000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import prefenv
from agents.ppo_kl import PPOKL, PPOKLConfig
from prefenv.loop import PreferenceLoop, PreferenceLoopConfig
from prefenv.recording import TrajectoryRecorder
from prefenv.reward_models import RewardEnsemble
from prefenv.reward_training import RewardTrainConfig
from prefenv.store import ComparisonStore
from prefenv.teachers import make_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="prefenv/HalfCheetah-v0", help="task id")
    parser.add_argument("--steps", type=int, default=100_000, help="agent env steps")
    parser.add_argument("--queries", type=int, default=300, help="query budget")
    parser.add_argument("--rounds", type=int, default=5, help="reward refits after the first")
    parser.add_argument("--n-envs", type=int, default=8, help="parallel sub-envs")
    parser.add_argument("--n-steps", type=int, default=256, help="PPO rollout per sub-env")
    parser.add_argument("--segment-length", type=int, default=50, help="steps per segment")
    parser.add_argument("--teacher", default="noisy", help="teacher preset")
    parser.add_argument("--out", type=Path, default=Path("runs/example_ppo_kl"))
    args = parser.parse_args()

    venv = prefenv.make_vec(args.env, args.n_envs)
    model = RewardEnsemble.for_spaces(
        venv.single_observation_space, venv.single_action_space, hidden_sizes=(64, 64)
    )
    reward_env = prefenv.VectorPreferenceReward(venv, model)
    env = TrajectoryRecorder(reward_env)
    agent = PPOKL(env, PPOKLConfig(n_steps=args.n_steps, norm_obs=True, norm_reward=True))
    loop = PreferenceLoop(
        env=env,
        agent=agent,
        teacher=make_teacher(args.teacher, np.random.default_rng(0)),
        store=ComparisonStore(args.out / "comparisons.sqlite"),
        reward_model=model,
        reward_env=reward_env,  # gets the new snapshot after every refit
        config=PreferenceLoopConfig(
            total_timesteps=args.steps,
            total_queries=args.queries,
            n_rounds=args.rounds,
            initial_timesteps=args.steps // (args.rounds + 2),
            segment_length=args.segment_length,
            reward_train=RewardTrainConfig(max_epochs=50),
        ),
    )
    for m in loop.run():
        print(
            f"round {m.round}: steps {m.timesteps:>7} labels {m.labels_used:>4} "
            f"RM acc {m.reward_model.val_accuracy:.2f} true return {m.true_return:8.1f} "
            f"learned {m.learned_return:7.2f} corr {m.return_correlation:5.2f}"
            + ("  REWARD HACKING?" if m.hacking_alarm else "")
        )
    venv.close()


if __name__ == "__main__":
    main()
