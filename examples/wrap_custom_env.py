"""Your own Gymnasium env, end to end: check it, wrap it with a learned reward, train on it.

The env below hides its real objective (reach the goal, spend little energy). We record random
episodes, let a synthetic teacher compare segment pairs, fit a reward ensemble by Bradley-Terry,
and wrap the env: the agent now sees the learned reward, the true one moves to info. Then
``prefenv.app.train`` runs the whole preference loop on it (PPO-KL, noisy teacher) into a run
folder, exactly as ``prefenv train`` would, and the true return is read from its rounds.

    python examples/wrap_custom_env.py [--queries 400] [--episodes 60] [--steps 40000]

The command-line equivalent, with GoalReach in an importable module ``my_pkg``::

    prefenv train --import my_pkg --env examples/GoalReach-v0 --teacher noisy --out runs/goal
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium import spaces

import prefenv
from prefenv.app import train
from prefenv.recording import collect_trajectories
from prefenv.reward_models import RewardEnsemble
from prefenv.reward_training import RewardTrainConfig, train_reward_model
from prefenv.sampling import sample_segment_pairs
from prefenv.teachers import make_teacher


class GoalReach(gym.Env):
    """A point in the plane steered toward a goal.

    Observation: Box(4) = position (2) and goal (2). Action: Box(2) in [-1, 1] (velocity).
    Reward (hidden from the agent once wrapped): -distance to goal - 0.1 * |action|^2.
    Terminated: never. Truncated: after 50 steps.
    """

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-5.0, 5.0, shape=(4,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._state = np.zeros(4, dtype=np.float32)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._state = self.np_random.uniform(-2, 2, size=4).astype(np.float32)
        self._t = 0
        return self._state.copy(), {}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float32), -1, 1)
        self._state[:2] = np.clip(self._state[:2] + 0.2 * action, -5, 5)
        self._t += 1
        distance = float(np.linalg.norm(self._state[:2] - self._state[2:]))
        reward = -distance - 0.1 * float(action @ action)
        return self._state.copy(), reward, False, self._t >= 50, {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=60, help="random episodes to record")
    parser.add_argument("--queries", type=int, default=400, help="pairs the teacher labels")
    parser.add_argument("--epochs", type=int, default=100, help="max reward-training epochs")
    parser.add_argument("--steps", type=int, default=40_000, help="agent env steps of the run")
    parser.add_argument("--train-queries", type=int, default=200, help="labels the run asks for")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a temp dir)")
    args = parser.parse_args()

    report = prefenv.check(GoalReach, n_steps=60)  # Gymnasium check_env + prefenv's contract
    print(f"check passed: obs features {report.obs_dim}, action features {report.act_dim}")

    rng = np.random.default_rng(0)
    trajectories = collect_trajectories(GoalReach(), n_episodes=args.episodes, seed=0)
    pairs = sample_segment_pairs(trajectories, args.queries, segment_length=25, rng=rng)
    comparisons = make_teacher("noisy", rng).label(pairs)  # Bradley-Terry teacher, beta = 1

    env = GoalReach()
    model = RewardEnsemble.for_spaces(
        env.observation_space, env.action_space, n_members=3, hidden_sizes=(64, 64)
    )
    metrics = train_reward_model(model, comparisons, RewardTrainConfig(max_epochs=args.epochs))
    print(f"reward model: held-out accuracy {metrics.val_accuracy:.2f} on {metrics.n_val} pairs")

    wrapped = prefenv.PreferenceReward(GoalReach(), model)
    wrapped.reset(seed=1)
    learned, true = [], []
    for _ in range(50):
        _, reward, _, _, info = wrapped.step(wrapped.action_space.sample())
        learned.append(reward)
        true.append(info["true_reward"])
    corr = np.corrcoef(learned, true)[0, 1]
    print(f"per-step learned vs true reward correlation on a fresh episode: {corr:.2f}")

    # The whole loop on the same env: register it, then train as `prefenv train` does.
    if "examples/GoalReach-v0" not in gym.registry:
        gym.register("examples/GoalReach-v0", entry_point=GoalReach, max_episode_steps=50)
    out = args.out or Path(tempfile.mkdtemp(prefix="goal-reach-")) / "run"
    summary = train(
        env="examples/GoalReach-v0", out=out, teacher="noisy", queries=args.train_queries,
        steps=args.steps, rounds=4, n_envs=4, n_steps=64, initial_steps=args.steps // 5,
        segment_length=25, overwrite=True,
    )  # fmt: skip
    rounds = (out / "rounds.csv").read_text().splitlines()
    first = float(rounds[1].split(",")[5])
    print(f"trained on learned reward: true return {first:.1f} after round 1, "
          f"{summary['final_true_return']:.1f} at the end (run folder {out})")  # fmt: skip


if __name__ == "__main__":
    main()
