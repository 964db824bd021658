"""Shared test fixtures: a tiny env with a hidden reward, an exact reward predictor, one thread.

The classes are handed out through fixtures (tests import nothing from conftest).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from prefenv.predictors import Prediction


class PointEnv(gym.Env):
    """2-D point pushed by a Box action; hidden reward = -distance to the origin.

    Observation: Box(2) position. Action: Box(2) in [-1, 1], moves the point by 0.1 * action.
    Reward: -||position||. Terminated: never. Truncated: after ``horizon`` steps.
    """

    metadata = {"render_modes": []}

    def __init__(self, horizon: int = 20):
        self.observation_space = spaces.Box(-10.0, 10.0, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.horizon = horizon
        self._pos = np.zeros(2, dtype=np.float32)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._pos = self.np_random.uniform(-1, 1, size=2).astype(np.float32)
        self._t = 0
        return self._pos.copy(), {}

    def step(self, action):
        self._pos = np.clip(self._pos + 0.1 * np.asarray(action, dtype=np.float32), -10, 10)
        self._t += 1
        reward = -float(np.linalg.norm(self._pos))
        return self._pos.copy(), reward, False, self._t >= self.horizon, {}


class SumNextObsPredictor:
    """Exact reward predictor: mean = sum(next_obs) + 10 * sum(acts), std = 1 (an 'ensemble').

    Records every call's batch size and ``done`` so tests can check what the wrappers pass.
    """

    obs_dim = 2
    act_dim = 2
    episode_level = False
    ensemble = True

    def __init__(self):
        self.calls = 0
        self.batch_sizes: list[int] = []
        self.dones: list[np.ndarray | None] = []

    def predict(self, obs, acts, next_obs, done=None) -> Prediction:
        self.calls += 1
        self.batch_sizes.append(len(obs))
        self.dones.append(None if done is None else np.array(done))
        mean = (next_obs.sum(axis=1) + 10 * acts.sum(axis=1)).astype(np.float32)
        return Prediction(mean, np.ones_like(mean))


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny test models gain nothing from intra-op threads; on a shared 2-core machine the
    spinning second thread made them about 5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def point_env_cls():
    return PointEnv


@pytest.fixture
def exact_model_cls():
    return SumNextObsPredictor


@pytest.fixture
def point_env():
    return PointEnv()


@pytest.fixture
def exact_model():
    return SumNextObsPredictor()


@pytest.fixture
def one_thread():
    """Tiny models train faster on one thread, above all on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
