"""Learning from preferences on MuJoCo: final true return and wall-clock, per seed.

Runs ``prefenv train`` (the same TrainingRun the CLI uses) for each seed, then evaluates the
final policy for ``--eval-episodes`` deterministic episodes on the hidden true reward. With
``--true-reward`` it instead trains the same agent on the env's true reward (no teacher, no reward
model): the reference the preference run is measured against (goal: >= 0.8 of it).

Usage::

    python benchmarks/bench_preferences.py --env prefenv/HalfCheetah-v0 --seeds 0 1 2 \\
        --steps 1000000 --queries 1000 --teacher oracle
    python benchmarks/bench_preferences.py --true-reward --seeds 0 1 2
    python benchmarks/bench_preferences.py --agent sb3-sac --n-envs 1 --steps 50000 \\
        --initial-steps 5000 --queries 200            # SB3 SAC through the same loop

Results go to ``benchmarks/out/preferences/<tag>/seed<N>`` (run folders) and a Markdown table is
printed. The peer library's side is ``benchmarks/peers/imitation_preferences.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import torch

from prefenv.agent import agent_factory
from prefenv.app.reports import episode_returns
from prefenv.app.runs import TrainingRun, evaluate_run, make_vector_env
from prefenv.app.spec import TrainSpec, save_spec


def _true_reward_run(spec: TrainSpec, out: Path, eval_episodes: int) -> dict:
    """The same agent with the same settings on the env's own reward (the upper reference).

    Built by the agent's registered factory exactly as ``prefenv train`` builds it (PPO-KL with
    obs + return normalisation; SB3 agents behind the same return-scaling ``VecNormalize``), on
    the plain vector env instead of the learned-reward stack.
    """
    import gymnasium as gym

    seeds = spec.seeds()
    agent = agent_factory(spec.agent).build(
        spec, make_vector_env(spec), seed=seeds.agent, env_seed=seeds.env,
        log_dir=out / "agent_logs",
    )  # fmt: skip
    start, cpu_start = time.perf_counter(), time.process_time()
    agent.learn(spec.steps)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    eval_env = gym.make_vec(spec.env, num_envs=1, vectorization_mode="sync")
    deterministic = episode_returns(eval_env, agent.predict, eval_episodes, seed=12345)
    sampled = episode_returns(
        eval_env, lambda obs: agent.predict(obs, deterministic=False), eval_episodes, seed=12345
    )
    return {
        "true_return_mean": float(np.mean(deterministic.true)),
        "length_mean": float(np.mean(deterministic.lengths)),
        "sampled_true_return_mean": float(np.mean(sampled.true)),
        "sampled_length_mean": float(np.mean(sampled.lengths)),
        "seconds": seconds,
        "cpu_seconds": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="prefenv/HalfCheetah-v0")
    parser.add_argument("--agent", default="ppo-kl")
    parser.add_argument("--teacher", default="oracle")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument(
        "--rounds", type=int, default=21, help="feedback rounds, the initial one included"
    )
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--n-steps", type=int, default=256)
    parser.add_argument("--reward-epochs", type=int, default=30)
    parser.add_argument(
        "--initial-steps", type=int, default=16_384,
        help="env steps of the initial policy before the first queries",
    )  # fmt: skip
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument(
        "--preset", default="auto", help="auto: the task's tuned agent settings; none: defaults"
    )
    parser.add_argument(
        "--reward-output", default="auto",
        help="the reward network's output (tanh, linear; auto: the task's presets entry)",
    )  # fmt: skip
    parser.add_argument(
        "--query-method", default="auto",
        help="uniform, disagreement, entropy (auto: the task's presets entry; HalfCheetah's "
        "runs before its disagreement entry were uniform)",
    )  # fmt: skip
    parser.add_argument(
        "--query-window", type=int, default=None,
        help="queries from the N most recent episodes only (QPA: 10); 0: every episode; unset: "
        "the task's presets entry (HalfCheetah's runs before its entry used every episode)",
    )  # fmt: skip
    parser.add_argument(
        "--rune", action="store_true", help="RUNE's decaying ensemble-disagreement bonus"
    )
    parser.add_argument("--true-reward", action="store_true", help="train on the true reward")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: one core a run)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/preferences"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tag = f"{args.agent}-" + ("true-reward" if args.true_reward else args.teacher)
    if args.true_reward and args.agent == "ppo-kl":
        tag = "true-reward"  # the folder name earlier runs used
    if args.preset != "none":
        tag += "-preset"  # earlier runs (the agents' defaults) keep their folders
    if args.reward_output != "auto":
        tag += f"-{args.reward_output}"
    if args.query_method != "auto":
        tag += f"-{args.query_method}"
    if args.query_window:
        tag += f"-window{args.query_window}"
    if args.rune:
        tag += "-rune"
    rows = []
    for seed in args.seeds:
        spec = TrainSpec(
            env=args.env,
            agent=args.agent,
            teacher=args.teacher,
            queries=args.queries,
            steps=args.steps,
            rounds=args.rounds,
            n_envs=args.n_envs,
            n_steps=args.n_steps,
            reward_epochs=args.reward_epochs,
            initial_steps=args.initial_steps,
            seed=seed,
            preset=args.preset,
            reward_output=args.reward_output,
            query_method=args.query_method,
            query_window=args.query_window,
            rune=args.rune,
            eval_episodes=0,  # evaluated below with --eval-episodes: not twice
        ).with_preset()  # as prefenv train: the task's tuned settings unless --preset none
        out = args.out / args.env.replace("/", "_") / tag / f"seed{seed}"
        out.mkdir(parents=True, exist_ok=True)
        finished = out / "bench_result.json"
        if finished.exists():  # a rerun of a split grid skips the seeds already measured
            rows.append(json.loads(finished.read_text()))
            print(f"seed {seed}: already measured in {finished}")
            continue
        if args.true_reward:
            result = _true_reward_run(spec, out, args.eval_episodes)
        else:
            for stale in out.glob("comparisons.sqlite*"):
                stale.unlink()
            save_spec(spec, out)
            start, cpu_start = time.perf_counter(), time.process_time()
            TrainingRun(spec, out).run(progress=False)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            evaluation = evaluate_run(out, episodes=args.eval_episodes)
            result = {
                "true_return_mean": evaluation["true_return_mean"],
                "length_mean": evaluation["deterministic"]["length_mean"],
                "sampled_true_return_mean": evaluation["sampled"]["true_return_mean"],
                "sampled_length_mean": evaluation["sampled"]["length_mean"],
                "seconds": seconds,
                "cpu_seconds": cpu,
            }
        result.update(seed=seed, spec=dataclasses.asdict(spec))
        (out / "bench_result.json").write_text(json.dumps(result, indent=2))
        rows.append(result)
        print(
            f"seed {seed}: true return {result['true_return_mean']:.0f} in {result['seconds']:.0f}s "
            f"({result['cpu_seconds']:.0f} CPU-s)"
        )

    returns = np.array([r["true_return_mean"] for r in rows])
    seconds = np.array([r["seconds"] for r in rows])
    print()
    cpu = np.array([r["cpu_seconds"] for r in rows])
    print("| env | setup | seeds | final true return (mean ± std) | wall-clock s | CPU s |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.env} | {tag}, {args.queries} queries, {args.steps:,} steps | {len(rows)} | "
        f"{returns.mean():,.0f} ± {returns.std():,.0f} | {seconds.mean():,.0f} | {cpu.mean():,.0f} |"
    )


if __name__ == "__main__":
    main()
