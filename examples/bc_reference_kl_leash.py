"""RLHF's three stages for control: behaviour cloning -> reward model -> PPO with a KL leash.

1. A demonstrator (PPO trained briefly on the true reward) produces demonstrations.
2. Behaviour cloning turns them into the reference policy (the SFT stage).
3. PPO-KL starts from that policy and trains on a learned preference reward while a per-step
   KL penalty keeps it near the reference. We print the KL to the reference as training goes.

    python examples/bc_reference_kl_leash.py [--env Pendulum-v1] [--kl-coef 0.1]
"""

from __future__ import annotations

import argparse
import copy

import gymnasium as gym
import numpy as np

import prefenv
from agents.policies import MLPActorCritic
from agents.ppo_kl import PPOKL, PPOKLConfig
from agents.sft import BCConfig, behaviour_clone, collect_demonstrations
from prefenv.recording import collect_trajectories
from prefenv.reward_models import RewardEnsemble
from prefenv.reward_training import RewardTrainConfig, train_reward_model
from prefenv.sampling import sample_segment_pairs
from prefenv.teachers import make_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Pendulum-v1", help="Gymnasium id with Box actions")
    parser.add_argument("--demo-steps", type=int, default=20_000, help="demonstrator training")
    parser.add_argument("--steps", type=int, default=20_000, help="PPO-KL steps")
    parser.add_argument("--queries", type=int, default=300, help="oracle comparisons")
    parser.add_argument("--kl-coef", type=float, default=0.1, help="beta of the KL leash")
    args = parser.parse_args()

    n_envs, hidden = 4, (64, 64)
    venv = gym.make_vec(args.env, num_envs=n_envs)
    demonstrator = PPOKL(venv, PPOKLConfig(n_steps=256, hidden_sizes=hidden, seed=1))
    demonstrator.learn(args.demo_steps)
    demos = collect_demonstrations(venv, demonstrator.predict, n_steps=500, seed=2)

    reference = MLPActorCritic(venv.single_observation_space, venv.single_action_space, hidden)
    bc = behaviour_clone(reference, demos, BCConfig(epochs=30))
    print(f"behaviour cloning: NLL {bc.initial_val_nll:.2f} -> {bc.val_nll:.2f} (held out)")

    rng = np.random.default_rng(0)
    single = gym.make(args.env)
    pairs = sample_segment_pairs(
        collect_trajectories(single, 30, seed=3), args.queries, 50, rng=rng
    )
    model = RewardEnsemble.for_spaces(
        single.observation_space, single.action_space, hidden_sizes=hidden
    )
    rm = train_reward_model(
        model, make_teacher("oracle", rng).label(pairs), RewardTrainConfig(max_epochs=50)
    )
    print(f"reward model: held-out accuracy {rm.val_accuracy:.2f}")

    env = prefenv.VectorPreferenceReward(gym.make_vec(args.env, num_envs=n_envs), model)
    config = PPOKLConfig(n_steps=256, hidden_sizes=hidden, kl_coef=args.kl_coef, norm_reward=True)
    agent = PPOKL(env, config, policy=copy.deepcopy(reference), ref_policy=reference)
    for m in agent.learn(args.steps)[:: max(1, args.steps // (256 * n_envs * 5))]:
        print(
            f"steps {m.timesteps:>6}: KL to reference {m.kl_to_ref:.4f}/step, "
            f"true return {m.episode_true_return:8.1f}"
        )


if __name__ == "__main__":
    main()
