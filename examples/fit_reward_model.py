"""Fit a reward ensemble to oracle comparisons and inspect it.

Shows the held-out ordering accuracy, the ensemble's uncertainty on familiar vs unfamiliar
inputs, and the Hugging Face-style save_pretrained / load round trip (with the space check).

    python examples/fit_reward_model.py [--queries 500] [--out runs/reward_model]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np

from prefenv.recording import collect_trajectories
from prefenv.reward_models import RewardEnsemble, load_reward_model
from prefenv.reward_training import RewardTrainConfig, evaluate_reward_model, train_reward_model
from prefenv.sampling import sample_segment_pairs
from prefenv.teachers import make_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=500, help="oracle comparisons to fit")
    parser.add_argument("--epochs", type=int, default=100, help="max training epochs")
    parser.add_argument("--out", type=Path, default=Path("runs/reward_model"), help="save folder")
    args = parser.parse_args()

    env = gym.make("Pendulum-v1")
    rng = np.random.default_rng(0)
    oracle = make_teacher("oracle", rng)
    train_pairs = sample_segment_pairs(
        collect_trajectories(env, 30, seed=0), args.queries, segment_length=50, rng=rng
    )
    test_pairs = sample_segment_pairs(
        collect_trajectories(env, 10, seed=99), 300, segment_length=50, rng=rng
    )

    model = RewardEnsemble.for_spaces(
        env.observation_space, env.action_space, n_members=3, hidden_sizes=(64, 64)
    )
    metrics = train_reward_model(
        model, oracle.label(train_pairs), RewardTrainConfig(max_epochs=args.epochs)
    )
    _, test_accuracy = evaluate_reward_model(model, oracle.label(test_pairs))
    print(f"trained {metrics.epochs} epochs in {metrics.seconds:.1f}s")
    print(
        f"held-out accuracy {metrics.val_accuracy:.3f}; fresh-episode accuracy {test_accuracy:.3f}"
    )

    segment = test_pairs[0][0]
    obs, acts, nxt = segment.obs[:-1], segment.acts, segment.obs[1:]
    predictor = model.predictor()  # a frozen inference snapshot: (mean, std) per transition
    _, std_in = predictor.predict(obs, acts, nxt)
    _, std_out = predictor.predict(obs * 10, acts * 10, nxt * 10)
    print(
        f"ensemble std: familiar inputs {std_in.mean():.3f}, unfamiliar (x10) {std_out.mean():.3f}"
    )

    model.save_pretrained(args.out)
    loaded = load_reward_model(args.out, env.observation_space, env.action_space)
    reloaded = loaded.predictor().predict(obs, acts, nxt)
    same = np.allclose(reloaded.mean, predictor.predict(obs, acts, nxt).mean)
    print(f"saved to {args.out}; reloaded predictions identical: {same}")


if __name__ == "__main__":
    main()
