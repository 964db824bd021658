"""Learning from preferences on the recommendation simulator: long-term true utility per session.

Arms, all with the same seed and evaluated on the same 256 held-out sessions (eval seed 12345,
``prefenv/RecSlate-v0``: 2,000 items, 3 of 10 candidates per step); the trained arms are evaluated
with deterministic actions (the headline) and with sampled ones (under ``"sampled"``), and report
the KL to their reference per session over the last 10 training iterations:

- ``random``, ``popularity``, ``greedy-click``: the production recommenders (numpy policies).
- ``ppo-kl (true utility)``: PPO-KL trained on the env's hidden true utility, leashed by a KL
  penalty to the popularity recommender (the upper reference).
- ``ppo-kl (learned reward)``: the same agent and leash trained by ``prefenv train`` (the CLI's
  TrainingRun) on a reward model fit to synthetic oracle comparisons of whole sessions; the
  model reads ``(obs, act, next_obs)``, as the env's ``metadata["prefenv_reward_next_obs"]`` asks
  (the user's click shows only in ``next_obs``).
- with ``--sb3``: SB3 PPO on true clicks, and SB3 PPO on the learned preference reward.

Goal (issue 5): learned >= 90% of the true-utility PPO-KL, and above popularity and greedy-click.

Usage::

    nice -n 10 python benchmarks/bench_rec_preferences.py --steps 200000 --queries 1000 [--sb3]
    # or arms as parallel processes, merged into one results.json:
    python benchmarks/bench_rec_preferences.py --arms true,learned & \
        python benchmarks/bench_rec_preferences.py --arms sb3-clicks,sb3-learned

Results: ``benchmarks/out/rec_preferences/seed<N>/`` (run folders, ``results.json``) and a
Markdown table on stdout. ``--reevaluate`` loads the arms a finished run saved (``true/agent``,
``learned/``) and evaluates them again in both modes without training.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers the ids)
import prefenv
from envs.recommendation import RecommendationVectorEnv
from envs.recommendation.policies import (
    GreedyClickPolicy,
    PopularityPolicy,
    RandomPolicy,
)
from prefenv.agent import agent_factory
from prefenv.app.runs import TrainingRun, make_vector_env
from prefenv.app.spec import REWARD_OUTPUTS, TrainSpec, load_spec, save_spec
from prefenv.reward_models import load_reward_model
from prefenv.sampling import QUERY_METHODS
from prefenv.wrappers import VectorPreferenceReward

EVAL_SEED = 12345
ENV_ID = "prefenv/RecSlate-v0"


Predict = Callable[..., np.ndarray]
"""``predict(obs, deterministic=True) -> actions``, as ``Agent.predict``."""


def evaluate(predict: Callable[[np.ndarray], np.ndarray], sessions: int = 256) -> dict[str, float]:
    """Per-session means of true utility, clicks, satisfaction and length (one session per user)."""
    env = RecommendationVectorEnv(sessions, slate_size=3)
    obs, _ = env.reset(seed=EVAL_SEED)
    totals = {k: np.zeros(sessions) for k in ("utility", "clicks", "satisfaction", "length")}
    done = np.zeros(sessions, dtype=bool)
    while not done.all():
        obs, _, terminated, truncated, info = env.step(predict(obs))
        live = ~done
        totals["utility"][live] += info["true_reward"][live]
        totals["clicks"][live] += info["clicks"][live]
        totals["satisfaction"][live] += info["satisfaction"][live]
        totals["length"][live] += 1
        done |= terminated | truncated
    return {k: float(v.mean()) for k, v in totals.items()}


def evaluate_modes(predict: Predict, log_dir: Path | None = None) -> dict[str, Any]:
    """Deterministic metrics, ``"sampled"`` metrics, and the final KL to the reference."""
    return {
        **evaluate(predict),
        "sampled": evaluate(lambda obs: predict(obs, deterministic=False)),
        "kl_to_ref_episode": final_kl(log_dir) if log_dir else None,
    }


def final_kl(log_dir: Path, iterations: int = 10) -> float | None:
    """Mean KL to the reference per episode over the agent's last ``iterations`` log rows."""
    path = log_dir / "progress.csv"
    if not path.exists():
        return None
    with path.open() as f:
        values = [r.get("kl_to_ref_episode", "") for r in csv.DictReader(f)]
    values = [float(v) for v in values if v not in ("", "nan")][-iterations:]
    return float(np.mean(values)) if values else None


def spec_for(args: argparse.Namespace, seed: int, agent: str = "ppo-kl") -> TrainSpec:
    leash = agent == "ppo-kl"
    return TrainSpec(
        env=ENV_ID,
        agent=agent,
        teacher=args.teacher,
        queries=args.queries,
        steps=args.steps,
        rounds=args.rounds,
        n_envs=args.n_envs,
        seed=seed,
        segment_length=args.segment_length,
        ensemble=args.ensemble,
        initial_steps=args.initial_steps,
        kl_coef=args.kl_coef if leash else 0.0,
        n_steps=args.n_steps,
        reward_epochs=args.reward_epochs,
        reward_width=args.reward_width,
        reward_depth=args.reward_depth,
        reward_output=args.reward_output,
        query_method=args.query_method,
        query_window=args.query_window,
        surf=args.surf,
        shaping=args.shaping,
        reference=args.reference if leash else "",
    )


def true_utility_agent(spec: TrainSpec, out: Path) -> Predict:
    """PPO-KL built exactly as TrainingRun builds it, trained on the true utility (no reward model);
    saved to ``out/agent`` for ``--reevaluate``."""
    venv = RecommendationVectorEnv(spec.n_envs, slate_size=3)
    seeds = spec.seeds()
    agent = agent_factory("ppo-kl").build(
        spec, venv, seed=seeds.agent, env_seed=seeds.env, log_dir=out / "agent_logs"
    )
    agent.learn(spec.steps)
    agent.save(out / "agent")
    return agent.predict


def saved_true_utility_agent(spec: TrainSpec, out: Path) -> Predict:
    """The agent :func:`true_utility_agent` saved in ``out/agent``."""
    venv = RecommendationVectorEnv(spec.n_envs, slate_size=3)
    return agent_factory("ppo-kl").load(spec, venv, out / "agent", log_dir=None).predict


def saved_preference_agent(spec: TrainSpec, out: Path) -> Predict:
    """The final agent of the finished ``prefenv train`` run in ``out``."""
    run_spec = load_spec(out)
    venv = make_vector_env(run_spec)
    spaces = (venv.single_observation_space, venv.single_action_space)
    reward = VectorPreferenceReward(venv, load_reward_model(out / "reward_model", *spaces))
    return agent_factory(run_spec.agent).load(run_spec, reward, out / "agent", log_dir=None).predict


def preference_agent(spec: TrainSpec, out: Path) -> Predict:
    """``prefenv train``'s TrainingRun from synthetic comparisons; returns its final policy."""
    for stale in out.glob("comparisons.sqlite*"):
        stale.unlink()
    out.mkdir(parents=True, exist_ok=True)
    spec = spec.with_preset()  # run.json records what ran (rounds, reward output, queries)
    save_spec(spec, out)
    run = TrainingRun(spec, out)
    summary = run.run(progress=False)
    accuracy = summary["reward_model_val_accuracy"]  # None: too few labels to hold any out
    (out / "final_rm_accuracy.txt").write_text(
        "none\n" if accuracy is None else f"{accuracy:.3f}\n"
    )
    return run.agent.predict


def sb3_clicks_agent(spec: TrainSpec, out: Path) -> Predict:
    """SB3 PPO on the raw click proxy (``reward="clicks"``)."""
    from agents.sb3 import SB3VecEnvBridge, make_sb3_agent

    venv = prefenv.make_vec(  # the native vector env, resetting on the same step as SB3 does
        ENV_ID,
        spec.n_envs,
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
        reward="clicks",
    )
    bridge = SB3VecEnvBridge(venv)
    bridge.seed(spec.seed)
    model = make_sb3_agent("sb3-ppo", bridge, seed=spec.seed, n_steps=spec.n_steps)
    model.learn(spec.steps)
    return lambda obs, deterministic=True: model.predict(obs, deterministic=deterministic)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument(
        "--rounds", type=int, default=11, help="feedback rounds, the initial one included"
    )
    parser.add_argument("--n-envs", type=int, default=16)
    parser.add_argument("--n-steps", type=int, default=128)
    parser.add_argument("--initial-steps", type=int, default=8192)
    parser.add_argument("--segment-length", type=int, default=50, help="50 = whole sessions")
    parser.add_argument("--ensemble", type=int, default=3)
    parser.add_argument("--reward-epochs", type=int, default=50)
    parser.add_argument("--reward-width", type=int, default=64)
    parser.add_argument("--reward-depth", type=int, default=2)
    parser.add_argument(
        "--reward-output", default="auto", choices=["auto", *REWARD_OUTPUTS],
        help="the reward network's output (auto: the task's presets entry, else tanh)",
    )  # fmt: skip
    parser.add_argument(
        "--query-method", default="auto", choices=["auto", *QUERY_METHODS],
        help="how each round's pairs are chosen (auto: the task's presets entry, else uniform)",
    )  # fmt: skip
    parser.add_argument(
        "--query-window", type=int, default=None,
        help="draw pairs from the newest N finished sessions only (unset: the presets entry, else 0)",
    )  # fmt: skip
    parser.add_argument(
        "--surf", action="store_true",
        help="SURF: pseudo-labels on unlabelled pairs and temporal crops in every refit",
    )  # fmt: skip
    parser.add_argument(
        "--shaping", type=float, default=0.0,
        help="the learned reward is mean + k * std of the ensemble; k < 0 is pessimism",
    )  # fmt: skip
    parser.add_argument("--teacher", default="oracle")
    parser.add_argument("--kl-coef", type=float, default=0.02)
    parser.add_argument("--reference", default="popularity", choices=["popularity", "greedy-click"])
    parser.add_argument("--sb3", action="store_true", help="also SB3 PPO on clicks / learned")
    parser.add_argument("--skip-true", action="store_true", help="skip the true-utility arm")
    parser.add_argument(
        "--arms",
        default="",
        help="comma list of trained arms to run (true, learned, sb3-clicks, sb3-learned) instead "
        "of true,learned[,sb3-*]; results merge into the seed folder's results.json, so arms can "
        "run as parallel processes",
    )
    parser.add_argument(
        "--reevaluate", action="store_true",
        help="evaluate the arms a finished run saved under --out again, both modes, no training",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/rec_preferences"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    out = args.out / f"seed{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    probe = RecommendationVectorEnv(1, slate_size=3)
    rng = np.random.default_rng(args.seed)
    results: dict[str, dict[str, float]] = {}
    for name, policy in (
        ("random", RandomPolicy.for_env(probe, rng=rng)),
        ("popularity", PopularityPolicy.for_env(probe)),
        ("greedy-click", GreedyClickPolicy.for_env(probe)),
    ):
        results[name] = {**evaluate(policy), "cpu_s": 0.0}
    spec = spec_for(args, args.seed)
    sb3_spec = spec_for(args, args.seed, agent="sb3-ppo")
    train_true, train_learned = (
        (saved_true_utility_agent, saved_preference_agent)
        if args.reevaluate
        else (true_utility_agent, preference_agent)
    )
    builders: dict[str, tuple[str, Callable[[], Predict]]] = {
        "true": ("ppo-kl (true utility)", lambda: train_true(spec, out / "true")),
        "learned": ("ppo-kl (learned reward)", lambda: train_learned(spec, out / "learned")),
        "sb3-clicks": ("sb3-ppo (true clicks)", lambda: sb3_clicks_agent(sb3_spec, out / "sb3")),
        "sb3-learned": (
            "sb3-ppo (learned reward)",
            lambda: preference_agent(sb3_spec, out / "sb3_learned"),
        ),
    }
    chosen = [a for a in args.arms.split(",") if a] or [
        *(["true"] if not args.skip_true else []),
        "learned",
        *(["sb3-clicks", "sb3-learned"] if args.sb3 else []),
    ]
    unknown = sorted(set(chosen) - set(builders))
    if unknown:
        parser.error(f"unknown arms {unknown}: choose from {', '.join(builders)}")
    if args.reevaluate and not set(chosen) <= {"true", "learned"}:
        parser.error(
            "--reevaluate reloads the true and learned arms only: pass --arms true,learned"
        )
    results_path = out / "results.json"
    # --reevaluate keeps each arm's training CPU time from the finished run's results
    earlier = json.loads(results_path.read_text())["results"] if results_path.exists() else {}
    logs = {"true": out / "true" / "agent_logs", "learned": out / "learned" / "agent_logs"}
    for arm in chosen:
        name, build = builders[arm]
        start = time.process_time()
        predict = build()
        cpu = time.process_time() - start
        metrics = evaluate_modes(predict, logs.get(arm))
        cpu = earlier.get(name, {}).get("cpu_s", cpu) if args.reevaluate else cpu
        results[name] = {**metrics, "cpu_s": cpu}
        print(f"{name}: {metrics} ({cpu:.0f} CPU-s)", flush=True)
    if (args.arms or args.reevaluate) and results_path.exists():
        # merge with what arms run by other processes wrote meanwhile (read at the end)
        results = {**json.loads(results_path.read_text())["results"], **results}
    results_path.write_text(
        json.dumps({"args": vars(args), "results": results}, indent=2, default=str)
    )

    true = results.get("ppo-kl (true utility)", {}).get("utility")
    print(
        f"\n{ENV_ID}, seed {args.seed}, {args.steps:,} steps, {args.queries} queries, "
        f"KL {args.kl_coef} to {args.reference}\n"
    )
    print("| policy | true utility / session | vs true-utility PPO-KL | sampled | clicks | "
          "satisfaction | session length | KL to ref. / session | train CPU s |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, m in results.items():
        ratio = f"{m['utility'] / true:.0%}" if true else "-"
        sampled = f"{m['sampled']['utility']:.1f}" if "sampled" in m else "-"
        kl = m.get("kl_to_ref_episode")
        print(
            f"| {name} | {m['utility']:.1f} | {ratio} | {sampled} | {m['clicks']:.1f} | "
            f"{m['satisfaction']:.1f} | {m['length']:.1f} | "
            f"{'-' if kl is None else f'{kl:.0f}'} | {m['cpu_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
