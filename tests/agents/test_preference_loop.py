"""A tiny preference-learning run: PPO-KL on a learned reward raises the hidden true return."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from agents.ppo_kl import PPOKL, PPOKLConfig
from prefenv.loop import PreferenceLoop, PreferenceLoopConfig
from prefenv.recording import TrajectoryRecorder
from prefenv.reward_models import RewardEnsemble
from prefenv.reward_training import RewardTrainConfig
from prefenv.store import ComparisonStore
from prefenv.teachers import make_teacher
from prefenv.wrappers import VectorPreferenceReward


class Reach(gym.Env):
    """Point steered to the origin. Obs Box(2) position; action Box(2); hidden reward -distance.

    Terminated: never. Truncated: after 25 steps.
    """

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-3.0, 3.0, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._pos = np.zeros(2, dtype=np.float32)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._pos = self.np_random.uniform(-2, 2, size=2).astype(np.float32)
        self._t = 0
        return self._pos.copy(), {}

    def step(self, action):
        move = 0.2 * np.clip(np.asarray(action, dtype=np.float32), -1, 1)
        self._pos = np.clip(self._pos + move, -3, 3).astype(np.float32)
        self._t += 1
        return self._pos.copy(), -float(np.linalg.norm(self._pos)), False, self._t >= 25, {}


def test_preference_loop_raises_true_return(tmp_path):
    venv = gym.vector.SyncVectorEnv([Reach for _ in range(4)])
    model = RewardEnsemble.for_spaces(
        venv.single_observation_space, venv.single_action_space, n_members=2, hidden_sizes=(32, 32)
    )
    reward_env = VectorPreferenceReward(venv, model)
    env = TrajectoryRecorder(reward_env)
    agent = PPOKL(
        env,
        PPOKLConfig(
            n_steps=128, batch_size=64, n_epochs=5, learning_rate=1e-3, norm_reward=True, seed=0
        ),
    )
    loop = PreferenceLoop(
        env=env,
        agent=agent,
        teacher=make_teacher("oracle", np.random.default_rng(0)),
        store=ComparisonStore(tmp_path / "comparisons.sqlite"),
        reward_model=model,
        reward_env=reward_env,
        config=PreferenceLoopConfig(
            total_timesteps=24_576,
            total_queries=150,
            n_rounds=3,
            initial_timesteps=2048,
            segment_length=10,
            reward_train=RewardTrainConfig(max_epochs=40, lr=1e-3),
        ),
    )
    history = loop.run()
    assert [m.round for m in history] == [0, 1, 2, 3]
    probe = (np.ones((3, 2), dtype=np.float32),) * 3  # the wrapper scores with the last refit
    np.testing.assert_array_equal(
        reward_env.predictor.predict(*probe).mean, model.predictor().predict(*probe).mean
    )
    assert history[-1].labels_used == 150 and len(loop.store) == 150
    initial, final = history[0].true_return, history[-1].true_return
    # random steering hovers around -1.4 per step; reaching the origin gives about -0.5
    assert final > initial + 8.0, f"true return {initial:.1f} -> {final:.1f}"
    assert history[-1].reward_model.val_accuracy >= 0.8
    assert history[-1].return_correlation > 0.5


class Wobble(gym.Env):
    """Random walk on a line that falls (terminates) once it leaves [-1, 1]; cut after 40 steps."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-5.0, 5.0, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self._x = np.zeros(1, dtype=np.float32)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._x[:] = 0.0
        self._t = 0
        return self._x.copy(), {}

    def step(self, action):
        self._x = (self._x + 0.3 * np.asarray(action, dtype=np.float32)).astype(np.float32)
        self._t += 1
        fell = bool(abs(self._x[0]) > 1.0)
        return self._x.copy(), 1.0, fell, self._t >= 40, {}


class RandomLearner:
    """Steps the env with seeded random actions: what the loop calls on an agent (``learn`` and
    ``num_timesteps``), nothing more."""

    def __init__(self, env) -> None:
        self.env = env
        self.env.reset(seed=0)
        self.env.action_space.seed(0)
        self.num_timesteps = 0

    def learn(self, total_timesteps: int) -> None:
        for _ in range(-(-total_timesteps // self.env.num_envs)):
            self.env.step(self.env.action_space.sample())
            self.num_timesteps += self.env.num_envs


def _wobble_loop(
    path, teacher: str, config: PreferenceLoopConfig, n_members: int = 1
) -> PreferenceLoop:
    """A loop over 4 Wobble envs, a random learner and a small reward ensemble."""
    venv = gym.vector.SyncVectorEnv([Wobble for _ in range(4)])
    model = RewardEnsemble.for_spaces(
        venv.single_observation_space, venv.single_action_space, n_members=n_members,
        hidden_sizes=(8,),
    )  # fmt: skip
    reward_env = VectorPreferenceReward(venv, model)
    env = TrajectoryRecorder(reward_env)
    return PreferenceLoop(env=env, agent=RandomLearner(env), store=ComparisonStore(path),
                          teacher=make_teacher(teacher, np.random.default_rng(0)),
                          reward_model=model, reward_env=reward_env, config=config)  # fmt: skip


def _stored_segments(tmp_path, cut_at_termination: bool) -> list:
    config = PreferenceLoopConfig(
        total_timesteps=2_400, total_queries=60, n_rounds=1, initial_timesteps=1_200,
        segment_length=15, cut_at_termination=cut_at_termination,
        reward_train=RewardTrainConfig(max_epochs=2),
    )  # fmt: skip
    loop = _wobble_loop(tmp_path / f"cut{cut_at_termination}.sqlite", "oracle", config)
    loop.run()
    return [s for c in loop.store.load() for s in (c.segment0, c.segment1)]


def test_loop_asks_about_windows_cut_at_the_fall_by_default(tmp_path):
    cut = _stored_segments(tmp_path, cut_at_termination=True)
    short = [s for s in cut if len(s) < 15]
    assert short, "no segment ended at a fall"
    # a shorter segment is a window that ran into the fall: it ends outside [-1, 1]
    assert all(abs(float(s.obs[-1, 0])) > 1.0 for s in short)
    assert {len(s) for s in _stored_segments(tmp_path, cut_at_termination=False)} == {15}
