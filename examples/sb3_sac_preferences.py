"""Stable-Baselines3 SAC learning from preferences through the same loop as PPO-KL.

SB3's VecEnv API is not Gymnasium's, so the env stack is bridged explicitly
(`agents.sb3.SB3VecEnvBridge`); the preference loop, teacher, store and reward model are the same
objects PPO-KL uses.

    python examples/sb3_sac_preferences.py [--env prefenv/Reacher-v0] [--steps 20000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecNormalize

import prefenv
from agents.sb3 import SB3Agent, SB3VecEnvBridge, make_sb3_agent
from prefenv.loop import PreferenceLoop, PreferenceLoopConfig
from prefenv.recording import TrajectoryRecorder
from prefenv.reward_models import RewardEnsemble
from prefenv.reward_training import RewardTrainConfig
from prefenv.store import ComparisonStore
from prefenv.teachers import make_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="prefenv/Reacher-v0", help="task id (Box actions)")
    parser.add_argument("--steps", type=int, default=20_000, help="agent env steps")
    parser.add_argument("--queries", type=int, default=200, help="query budget")
    parser.add_argument("--rounds", type=int, default=4, help="reward refits after the first")
    parser.add_argument("--n-envs", type=int, default=4, help="parallel sub-envs")
    parser.add_argument("--segment-length", type=int, default=25, help="steps per segment")
    parser.add_argument("--learning-starts", type=int, default=500, help="SAC warm-up steps")
    parser.add_argument("--out", type=Path, default=Path("runs/example_sb3_sac"))
    args = parser.parse_args()

    # SB3 expects finished sub-envs to come back already reset: SAME_STEP autoreset
    venv = prefenv.make_vec(
        args.env, args.n_envs, vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}
    )
    model = RewardEnsemble.for_spaces(
        venv.single_observation_space, venv.single_action_space, hidden_sizes=(64, 64)
    )
    reward_env = prefenv.VectorPreferenceReward(venv, model)
    env = TrajectoryRecorder(reward_env)
    bridged = VecNormalize(SB3VecEnvBridge(env), norm_obs=False, norm_reward=True)
    agent = SB3Agent(
        make_sb3_agent("sb3-sac", bridged, seed=0, learning_starts=args.learning_starts)
    )
    loop = PreferenceLoop(
        env=env,
        agent=agent,
        teacher=make_teacher("oracle", np.random.default_rng(0)),
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
            f"round {m.round}: steps {m.timesteps:>6} labels {m.labels_used:>4} "
            f"RM acc {m.reward_model.val_accuracy:.2f} true return {m.true_return:7.2f}"
        )
    venv.close()


if __name__ == "__main__":
    main()
