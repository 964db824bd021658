"""RLHF for a recommender: PPO-KL on a learned preference reward, leashed to the production policy.

The production recommender (popularity or greedy-click) is PPO-KL's frozen reference: every step's
reward is ``r_hat - beta * KL(pi || pi_production)``, as an RLHF policy is leashed to its SFT model.
The reward model ``r_hat`` is fit to synthetic comparisons of whole user sessions, labelled by a
teacher who sees the hidden true utility (engagement, satisfaction, diversity). This is exactly
what ``prefenv train --env prefenv/RecSlate-v0 --reference popularity --kl-coef 0.02`` runs.

    python examples/recommendation_ppo_kl.py --steps 200000 --queries 1000 --out rec_run
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from envs.recommendation import RecommendationVectorEnv
from envs.recommendation.evaluation import evaluate_sessions
from envs.recommendation.policies import GreedyClickPolicy, PopularityPolicy, RandomPolicy
from prefenv.app.runs import TrainingRun
from prefenv.app.spec import TrainSpec, save_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200_000, help="PPO-KL env steps")
    parser.add_argument("--queries", type=int, default=1000, help="session comparisons")
    parser.add_argument("--rounds", type=int, default=11, help="feedback rounds (reward refits)")
    parser.add_argument("--n-envs", type=int, default=16)
    parser.add_argument("--n-steps", type=int, default=128, help="PPO rollout steps per env")
    parser.add_argument("--initial-steps", type=int, default=8192)
    parser.add_argument("--reward-epochs", type=int, default=50)
    parser.add_argument("--reference", default="popularity", choices=["popularity", "greedy-click"])
    parser.add_argument("--kl-coef", type=float, default=0.02, help="beta of the KL leash")
    parser.add_argument("--eval-sessions", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/rec_ppo_kl"))
    args = parser.parse_args()

    spec = TrainSpec(
        env="prefenv/RecSlate-v0",
        agent="ppo-kl",
        teacher="oracle",
        queries=args.queries,
        steps=args.steps,
        rounds=args.rounds,
        n_envs=args.n_envs,
        seed=args.seed,
        segment_length=50,  # the horizon: whole sessions are compared
        initial_steps=args.initial_steps,
        kl_coef=args.kl_coef,
        n_steps=args.n_steps,
        reward_epochs=args.reward_epochs,
        reference=args.reference,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    for stale in args.out.glob("comparisons.sqlite*"):
        stale.unlink()
    save_spec(spec, args.out)
    run = TrainingRun(spec, args.out)
    summary = run.run(progress=False)
    accuracy = summary["reward_model_val_accuracy"]  # None: under 100 labels, none held out
    print(
        f"trained PPO-KL on {summary['labels_used']} comparisons, {summary['timesteps']:,} steps; "
        "reward model held-out accuracy "
        + ("n/a (too few labels to hold any out)" if accuracy is None else f"{accuracy:.2f}")
    )

    probe = RecommendationVectorEnv(1, slate_size=3)
    policies = {
        f"PPO-KL (learned reward, KL {args.kl_coef} to {args.reference})": run.agent.predict,
        "popularity": PopularityPolicy.for_env(probe),
        "greedy-click": GreedyClickPolicy.for_env(probe),
        "random": RandomPolicy.for_env(probe, rng=np.random.default_rng(args.seed)),
    }
    print(f"\nheld-out sessions ({args.eval_sessions} users), per session:")
    for name, predict in policies.items():
        m = evaluate_sessions(predict, args.eval_sessions, slate_size=3)
        print(
            f"  {name:>45}: true utility {m.utility:6.1f} | clicks {m.clicks:5.1f} | "
            f"satisfaction {m.satisfaction:6.1f} | length {m.length:4.1f}"
        )
    print(f"run folder: {args.out} (prefenv resume / eval work on it)")


if __name__ == "__main__":
    main()
