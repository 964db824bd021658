"""The proxy trap: optimise raw clicks and satisfaction falls; learn from preferences and it rises.

Two identical PPO agents recommend slates to simulated users (``prefenv/RecSlate-v0``'s user model):

- the **clicks agent** is trained on the env's click proxy (``reward="clicks"``: 1 per click), what
  a click-through-rate-driven production system optimises;
- the **preference agent** is trained on a reward model fit to synthetic comparisons of whole
  sessions, labelled by a teacher who judges the hidden true utility (mostly satisfaction).

After every training chunk both are evaluated on the same held-out users: clicks and summed
satisfaction per session. By default sessions are *captive* (``--time-budget 1000``: users do not
leave within the 50-step horizon, as in a feed whose harm shows up outside the session); with the
simulator's default budget (40 minutes) unhappy users leave early, which ties clicks to quality.

    python examples/recommendation_proxy_trap.py --steps 200000 --queries 500 --out proxy_trap
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from agents.ppo_kl import PPOKL, PPOKLConfig
from envs.recommendation import RecommendationVectorEnv, SimConfig
from envs.recommendation.evaluation import SessionMetrics, evaluate_sessions
from envs.recommendation.policies import GreedyClickPolicy, PopularityPolicy, RandomPolicy
from prefenv.loop import PreferenceLoop, PreferenceLoopConfig
from prefenv.recording import TrajectoryRecorder
from prefenv.reward_models import RewardEnsemble
from prefenv.reward_training import RewardTrainConfig
from prefenv.store import ComparisonStore
from prefenv.teachers import make_teacher
from prefenv.wrappers import VectorPreferenceReward

Curve = list[tuple[int, SessionMetrics]]


def agent_config(args: argparse.Namespace) -> PPOKLConfig:
    """The one PPO configuration both agents use (only their reward differs)."""
    return PPOKLConfig(n_steps=args.n_steps, norm_reward=True, seed=args.seed)


def train_clicks_agent(args: argparse.Namespace, env_kwargs: dict, evaluate: Callable) -> Curve:
    """PPO on the click proxy; evaluated after each of ``--points`` equal chunks."""
    venv = RecommendationVectorEnv(args.n_envs, reward="clicks", **env_kwargs)
    agent = PPOKL(venv, agent_config(args))
    curve = [(0, evaluate(agent.predict))]
    for _ in range(args.points):
        agent.learn(args.steps // args.points)
        curve.append((agent.num_timesteps, evaluate(agent.predict)))
    return curve


def train_preference_agent(
    args: argparse.Namespace, env_kwargs: dict, evaluate: Callable, store_path: Path
) -> Curve:
    """The same PPO on a learned reward, refit each round from oracle comparisons of sessions."""
    venv = RecommendationVectorEnv(args.n_envs, **env_kwargs)
    model = RewardEnsemble.for_spaces(
        venv.single_observation_space, venv.single_action_space, n_members=3, hidden_sizes=(64, 64)
    )
    reward_env = VectorPreferenceReward(venv, model)
    recorder = TrajectoryRecorder(reward_env)
    agent = PPOKL(recorder, agent_config(args))
    store_path.unlink(missing_ok=True)
    loop = PreferenceLoop(
        env=recorder,
        agent=agent,
        teacher=make_teacher("oracle", np.random.default_rng(args.seed)),
        store=ComparisonStore(store_path),
        reward_model=model,
        reward_env=reward_env,  # gets the new snapshot after every refit
        config=PreferenceLoopConfig(
            total_timesteps=args.steps,
            total_queries=args.queries,
            n_rounds=args.points - 1,
            initial_timesteps=args.initial_steps,
            segment_length=50,  # the horizon: teachers compare whole sessions
            reward_train=RewardTrainConfig(max_epochs=args.reward_epochs, seed=args.seed),
            seed=args.seed,
        ),
    )
    curve = [(0, evaluate(agent.predict))]
    while not loop.done:
        loop.step()
        curve.append((agent.num_timesteps, evaluate(agent.predict)))
    loop.store.close()
    return curve


def plot(curves: dict[str, Curve], baselines: dict[str, SessionMetrics], path: Path) -> None:
    """Clicks and satisfaction per session vs training steps, with the production baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, field, label in zip(
        axes,
        ("clicks", "satisfaction"),
        ("clicks / session", "satisfaction / session"),
        strict=True,
    ):
        for (name, curve), color in zip(curves.items(), ("tab:red", "tab:blue"), strict=True):
            steps = [s for s, _ in curve]
            ax.plot(steps, [getattr(m, field) for _, m in curve], "o-", color=color, label=name)
        for (name, m), style in zip(baselines.items(), (":", "--", "-."), strict=True):
            ax.axhline(getattr(m, field), color="grey", linestyle=style, label=name)
        ax.set_xlabel("training env steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("The proxy trap: clicks vs satisfaction over training (held-out users)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None, **defaults) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000, help="env steps per agent")
    parser.add_argument("--queries", type=int, default=400, help="comparisons for the reward model")
    parser.add_argument("--points", type=int, default=6, help="evaluations over training")
    parser.add_argument("--n-envs", type=int, default=16)
    parser.add_argument("--n-steps", type=int, default=128, help="PPO rollout steps per env")
    parser.add_argument("--initial-steps", type=int, default=4096)
    parser.add_argument("--reward-epochs", type=int, default=50)
    parser.add_argument("--time-budget", type=float, default=1000.0, help="session minutes")
    parser.add_argument("--eval-sessions", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("proxy_trap"))
    parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def run(args: argparse.Namespace, plot_path: Path) -> dict:
    """Train both agents, evaluate the baselines, plot, and return a JSON-able summary."""
    torch.set_num_threads(1)
    env_kwargs = {"slate_size": 3, "sim_config": SimConfig(time_budget=args.time_budget)}

    def evaluate(predict: Callable) -> SessionMetrics:
        return evaluate_sessions(predict, args.eval_sessions, **env_kwargs)

    probe = RecommendationVectorEnv(1, **env_kwargs)
    baselines = {
        "random": evaluate(RandomPolicy.for_env(probe, rng=np.random.default_rng(args.seed))),
        "popularity": evaluate(PopularityPolicy.for_env(probe)),
        "greedy-click": evaluate(GreedyClickPolicy.for_env(probe)),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    curves = {
        "clicks agent": train_clicks_agent(args, env_kwargs, evaluate),
        "preference agent": train_preference_agent(
            args, env_kwargs, evaluate, args.out / "comparisons.sqlite"
        ),
    }
    plot(curves, baselines, plot_path)
    summary = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "baselines": {k: dataclasses.asdict(m) for k, m in baselines.items()},
        "curves": {
            name: [{"steps": s, **dataclasses.asdict(m)} for s, m in curve]
            for name, curve in curves.items()
        },
    }
    (args.out / "proxy_trap.json").write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    args = parse_args()
    summary = run(args, args.out / "proxy_trap.png")
    print(f"time budget {args.time_budget:g} min, {args.steps:,} steps per agent, seed {args.seed}")
    for name, curve in summary["curves"].items():
        first, last = curve[0], curve[-1]
        print(
            f"{name:>16}: clicks/session {first['clicks']:5.1f} -> {last['clicks']:5.1f}, "
            f"satisfaction/session {first['satisfaction']:6.1f} -> {last['satisfaction']:6.1f}, "
            f"true utility {first['utility']:6.1f} -> {last['utility']:6.1f}"
        )
    for name, m in summary["baselines"].items():
        print(
            f"{name:>16}: clicks/session {m['clicks']:5.1f}, satisfaction {m['satisfaction']:6.1f}"
        )
    print(f"plot: {args.out / 'proxy_trap.png'}")


if __name__ == "__main__":
    main()
