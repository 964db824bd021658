"""Speed: agents.ppo_kl vs Stable-Baselines3 PPO on HalfCheetah-v5, in one process.

Identical hyperparameters for both (SB3 PPO defaults except n_steps): 8 envs x 256 steps = 2048
per batch, minibatch 64, 10 epochs, [64, 64] tanh actor and critic, lr 3e-4, no normalisation.
Ours steps a Gymnasium ``SyncVectorEnv``; SB3 its ``DummyVecEnv`` (both sequential, one process).
The figure is env-steps/s including the updates (wall-clock of ``learn``).

Usage::

    python benchmarks/bench_ppo_speed.py            # 100k steps each
    python benchmarks/bench_ppo_speed.py --quick    # ~20k steps each
    python benchmarks/bench_ppo_speed.py --steps 200000 --repeats 2 --threads 1

With ``--repeats R`` the two agents alternate (ours, SB3, ours, SB3, ...) so background load
hits both alike; the best run of each is reported (and every run is listed). Steps per CPU-second
(``time.process_time``) are printed too: on a shared machine they are less sensitive to other
processes than wall-clock, which stays the headline figure.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import gymnasium as gym
import torch

from agents.ppo_kl import PPOKL, PPOKLConfig

ENV_ID = "HalfCheetah-v5"
NUM_ENVS = 8
N_STEPS = 256
BATCH_SIZE = 64
N_EPOCHS = 10


def run_ours(steps: int, seed: int) -> tuple[float, float]:
    """(env-steps per wall second, per CPU second) of ppo_kl.learn(steps)."""
    env = gym.make_vec(ENV_ID, num_envs=NUM_ENVS, vectorization_mode="sync")
    cfg = PPOKLConfig(n_steps=N_STEPS, batch_size=BATCH_SIZE, n_epochs=N_EPOCHS, seed=seed)
    agent = PPOKL(env, cfg)
    start, cpu = time.perf_counter(), time.process_time()
    agent.learn(steps)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    done = agent.num_timesteps
    env.close()
    return done / elapsed, done / cpu


def run_sb3(steps: int, seed: int) -> tuple[float, float]:
    """(env-steps per wall second, per CPU second) of stable_baselines3.PPO.learn(steps)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    venv = make_vec_env(ENV_ID, n_envs=NUM_ENVS, seed=seed)
    model = PPO(
        "MlpPolicy",
        venv,
        n_steps=N_STEPS,
        batch_size=BATCH_SIZE,
        n_epochs=N_EPOCHS,
        seed=seed,
        device="cpu",
        verbose=0,
    )
    start, cpu = time.perf_counter(), time.process_time()
    model.learn(steps)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    done = model.num_timesteps
    venv.close()
    return done / elapsed, done / cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=100_000, help="env steps per agent and run")
    parser.add_argument("--quick", action="store_true", help="20,480 steps per run (10 iterations)")
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs per agent")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for both")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    steps = 20_480 if args.quick else args.steps
    torch.set_num_threads(args.threads)
    ours: list[tuple[float, float]] = []
    sb3: list[tuple[float, float]] = []
    for r in range(args.repeats):
        ours.append(run_ours(steps, args.seed + r))
        sb3.append(run_sb3(steps, args.seed + r))
    best_ours, best_sb3 = max(x[0] for x in ours), max(x[0] for x in sb3)
    cpu_ours, cpu_sb3 = max(x[1] for x in ours), max(x[1] for x in sb3)
    print(
        f"# {ENV_ID}, {NUM_ENVS} envs x {N_STEPS} steps, minibatch {BATCH_SIZE}, {N_EPOCHS} epochs, "
        f"{steps} steps/run, torch threads {args.threads}, torch {torch.__version__}, "
        f"python {platform.python_version()}, cmd: {' '.join(sys.argv)}"
    )
    print("# runs ours (wall, cpu steps/s): " + ", ".join(f"{w:.0f}/{c:.0f}" for w, c in ours))
    print("# runs sb3  (wall, cpu steps/s): " + ", ".join(f"{w:.0f}/{c:.0f}" for w, c in sb3))
    print(
        "| benchmark | steps/run | ppo_kl steps/s | SB3 PPO steps/s | ratio | "
        "ppo_kl steps/CPU-s | SB3 steps/CPU-s | CPU ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {ENV_ID} speed, identical hparams, {NUM_ENVS} envs | {steps} | {best_ours:.0f} | "
        f"{best_sb3:.0f} | {best_ours / best_sb3:.2f}x | {cpu_ours:.0f} | {cpu_sb3:.0f} | "
        f"{cpu_ours / cpu_sb3:.2f}x |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
