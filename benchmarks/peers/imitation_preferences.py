"""The peer library's preference comparisons on HalfCheetah, timed like prefenv's benchmark.

Runs in its own environment (`bash benchmarks/peers/setup_imitation.sh`: imitation 1.0.1 pins
gymnasium 0.29 and SB3 2.2), on HalfCheetah-v4 (same reward as v5). Setup follows imitation's
documented preference-comparison recipe: BasicRewardNet normalised by a running norm, the
oracle teacher (SyntheticGatherer at temperature 0), BasicRewardTrainer, SB3 PPO with its
defaults on 8 envs, hyperbolic query schedule, 10% initial comparisons. Final policy: 10
deterministic episodes on the true reward.

    benchmarks/peers/.venv-imitation/bin/python benchmarks/peers/imitation_preferences.py \
        --seeds 0 --steps 1000000 --queries 1000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from imitation.algorithms import preference_comparisons
from imitation.rewards.reward_nets import BasicRewardNet, NormalizedRewardNet
from imitation.util.networks import RunningNorm
from imitation.util.util import make_vec_env
from stable_baselines3 import PPO


def run(
    seed: int, env_id: str, steps: int, queries: int, iterations: int, fragment: int,
    variable_horizon: bool = False, temperature: float = 0.0,
) -> dict:  # fmt: skip
    rng = np.random.default_rng(seed)
    venv = make_vec_env(env_id, rng=rng, n_envs=8)
    reward_net = NormalizedRewardNet(
        BasicRewardNet(venv.observation_space, venv.action_space),
        normalize_output_layer=RunningNorm,
    )
    agent = PPO("MlpPolicy", venv, seed=seed, device="cpu")
    trajectory_generator = preference_comparisons.AgentTrainer(
        algorithm=agent, reward_fn=reward_net, venv=venv, exploration_frac=0.0, rng=rng
    )
    trainer = preference_comparisons.PreferenceComparisons(
        trajectory_generator,
        reward_net,
        num_iterations=iterations,
        fragmenter=preference_comparisons.RandomFragmenter(warning_threshold=0, rng=rng),
        preference_gatherer=preference_comparisons.SyntheticGatherer(
            temperature=temperature, rng=rng
        ),
        reward_trainer=preference_comparisons.BasicRewardTrainer(
            preference_model=preference_comparisons.PreferenceModel(reward_net),
            loss=preference_comparisons.CrossEntropyRewardLoss(),
            epochs=3,
            rng=rng,
        ),
        fragment_length=fragment,
        transition_oversampling=1,
        initial_comparison_frac=0.1,
        allow_variable_horizon=variable_horizon,
        initial_epoch_multiplier=4,
        query_schedule="hyperbolic",
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train(total_timesteps=steps, total_comparisons=queries)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    env = gym.make(env_id)
    result = {"seed": seed, "temperature": temperature, "seconds": seconds, "cpu_seconds": cpu}
    for mode, deterministic in (("", True), ("sampled_", False)):
        returns, lengths = [], []
        for episode in range(10):
            obs, _ = env.reset(seed=12345 + episode)
            total, length, done = 0.0, 0, False
            while not done:
                action, _ = agent.predict(obs, deterministic=deterministic)
                obs, reward, terminated, truncated, _ = env.step(action)
                total, length = total + float(reward), length + 1
                done = terminated or truncated
            returns.append(total)
            lengths.append(length)
        result[f"{mode}true_return_mean"] = float(np.mean(returns))
        result[f"{mode}length_mean"] = float(np.mean(lengths))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="HalfCheetah-v4")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--fragment-length", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/peers"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (prefenv uses 1)")
    parser.add_argument(
        "--temperature", type=float, default=0.0,
        help="SyntheticGatherer temperature: 0 the oracle, 1 its default (prefenv's 'noisy' teacher, "
        "B-Pref beta 1)",
    )  # fmt: skip
    parser.add_argument(
        "--variable-horizon", action="store_true",
        help="allow episodes that end early (Hopper, Walker2d, Ant terminate when unhealthy); "
        "imitation refuses them otherwise",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    tag = "" if args.temperature == 0 else f"_t{args.temperature:g}"
    if args.queries != 1000:
        tag += f"_q{args.queries}"
    for seed in args.seeds:
        finished = args.out / f"imitation_{args.env}{tag}_seed{seed}.json"
        if finished.exists():  # a rerun of a split grid skips the seeds already measured
            rows.append(json.loads(finished.read_text()))
            print(f"seed {seed}: already measured in {finished}")
            continue
        result = run(
            seed, args.env, args.steps, args.queries, args.iterations, args.fragment_length,
            args.variable_horizon, args.temperature,
        )  # fmt: skip
        finished.write_text(json.dumps(result))
        rows.append(result)
        print(
            f"seed {seed}: true return {result['true_return_mean']:.0f} in {result['seconds']:.0f}s "
            f"({result['cpu_seconds']:.0f} CPU-s)"
        )
    returns = np.array([r["true_return_mean"] for r in rows])
    print(
        f"| {args.env} | imitation 1.0.1, {args.queries} queries, {args.steps:,} steps | "
        f"{len(rows)} | {returns.mean():,.0f} ± {returns.std():,.0f} | "
        f"{np.mean([r['seconds'] for r in rows]):,.0f} | "
        f"{np.mean([r['cpu_seconds'] for r in rows]):,.0f} |"
    )


if __name__ == "__main__":
    main()
