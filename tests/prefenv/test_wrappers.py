"""PreferenceReward / VectorPreferenceReward / TrajectoryRecorder / prefenv.check."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

import prefenv
from prefenv.predictors import Prediction
from prefenv.recording import TrajectoryRecorder, collect_trajectories
from prefenv.reward_models import MLPRewardModel, RewardEnsemble
from prefenv.wrappers import PreferenceReward, VectorPreferenceReward


def _transitions(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs, acts, next_obs = (rng.normal(size=(n, 2)).astype(np.float32) for _ in range(3))
    return obs, acts, next_obs


def _ensemble(seed: int = 0) -> RewardEnsemble:
    torch.manual_seed(seed)
    return RewardEnsemble([MLPRewardModel(2, 2, hidden_sizes=(16,)) for _ in range(3)])


def test_single_env_reward_is_learned_and_true_reward_moves_to_info(point_env, exact_model):
    env = PreferenceReward(point_env, exact_model)
    obs, _ = env.reset(seed=3)
    action = np.array([0.5, -0.25], dtype=np.float32)
    next_obs, reward, terminated, truncated, info = env.step(action)
    assert reward == pytest.approx(next_obs.sum() + 10 * action.sum(), rel=1e-6)
    assert info["true_reward"] == pytest.approx(-np.linalg.norm(next_obs), rel=1e-6)
    assert info["learned_reward"] == reward


def test_uncertainty_shaping_adds_k_std(point_env, exact_model):
    env = PreferenceReward(point_env, exact_model, shaping=-2.0)
    env.reset(seed=0)
    next_obs, reward, *_ = env.step(np.zeros(2, dtype=np.float32))
    assert reward == pytest.approx(next_obs.sum() - 2.0, rel=1e-6)


def test_shaping_without_ensemble_is_a_clear_error(point_env, point_env_cls):
    single = MLPRewardModel(2, 2, hidden_sizes=(8,))
    assert single.predictor().predict(*_transitions(3)).std is None
    with pytest.raises(ValueError, match="needs a reward ensemble"):
        PreferenceReward(point_env, single, shaping=1.0)
    with pytest.raises(ValueError, match="needs a reward ensemble"):
        VectorPreferenceReward(SyncVectorEnv([point_env_cls] * 2), single, shaping=-0.5)
    wrapped = PreferenceReward(point_env, _ensemble(), shaping=1.0)
    with pytest.raises(ValueError, match="needs a reward ensemble"):
        wrapped.set_predictor(single.predictor())  # the check holds for every later snapshot too
    PreferenceReward(point_env, single)  # no shaping: the single model is fine


def test_reward_model_for_another_env_is_rejected(point_env, point_env_cls, exact_model_cls):
    class Wrong(exact_model_cls):
        obs_dim = 17

    with pytest.raises(ValueError, match="trained on another env"):
        PreferenceReward(point_env, Wrong())


@pytest.mark.parametrize("vector_cls", [SyncVectorEnv, AsyncVectorEnv])
def test_vector_wrapper_scores_all_subenvs_in_one_call(vector_cls, point_env_cls, exact_model_cls):
    model = exact_model_cls()
    venv = vector_cls([lambda: point_env_cls(horizon=5) for _ in range(4)])
    env = VectorPreferenceReward(venv, model)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(12):
        actions = rng.uniform(-1, 1, size=(4, 2)).astype(np.float32)
        prev_obs = obs
        obs, rewards, terminated, truncated, infos = env.step(actions)
        assert rewards.shape == (4,) and infos["true_reward"].shape == (4,)
        # a reset step (after truncation, NEXT_STEP autoreset) carries no transition: reward 0
        resetting = np.linalg.norm(obs - prev_obs - 0.1 * actions, axis=1) > 1e-4
        expected = obs.sum(axis=1) + 10 * actions.sum(axis=1)
        np.testing.assert_allclose(rewards[~resetting], expected[~resetting], rtol=1e-5)
        assert np.all(rewards[resetting] == 0.0)
        np.testing.assert_allclose(
            infos["true_reward"][~resetting], -np.linalg.norm(obs[~resetting], axis=1), rtol=1e-5
        )
    env.close()
    assert set(model.batch_sizes) == {4}
    assert model.calls == 12


def test_vector_wrapper_same_step_scores_against_final_obs(point_env_cls, exact_model_cls):
    model = exact_model_cls()
    venv = SyncVectorEnv(
        [lambda: point_env_cls(horizon=3) for _ in range(2)], autoreset_mode=AutoresetMode.SAME_STEP
    )
    env = VectorPreferenceReward(venv, model)
    env.reset(seed=1)
    actions = np.full((2, 2), 0.5, dtype=np.float32)
    for _ in range(3):
        obs, rewards, terminated, truncated, infos = env.step(actions)
    assert truncated.all()
    finals = np.stack(infos["final_obs"])
    np.testing.assert_allclose(rewards, finals.sum(axis=1) + 10.0, rtol=1e-5)


def test_recorder_returns_full_episodes_with_true_rewards(point_env_cls, exact_model_cls):
    venv = SyncVectorEnv([lambda: point_env_cls(horizon=7) for _ in range(3)])
    env = TrajectoryRecorder(VectorPreferenceReward(venv, exact_model_cls()))
    env.reset(seed=0)
    for _ in range(7 * 3 + 2):
        env.step(np.zeros((3, 2), dtype=np.float32))
    trajectories = env.trajectories
    assert len(trajectories) == 9
    assert all(len(t) == 7 and t.obs.shape == (8, 2) for t in trajectories)
    for t in trajectories:
        np.testing.assert_allclose(t.true_rewards, -np.linalg.norm(t.obs[1:], axis=1), rtol=1e-5)
    stats = env.pop_episode_stats()
    assert len(stats) == 9 and env.pop_episode_stats() == []
    assert stats[0].true_return == pytest.approx(trajectories[0].true_return, rel=1e-5)


def test_recorder_capacity_drops_oldest_episodes(point_env_cls, exact_model_cls):
    venv = SyncVectorEnv([lambda: point_env_cls(horizon=5)])
    env = TrajectoryRecorder(venv, capacity_steps=12)
    env.reset(seed=0)
    for _ in range(6 * 5):
        env.step(np.zeros((1, 2), dtype=np.float32))
    assert sum(len(t) for t in env.trajectories) <= 12
    assert len(env.trajectories) == 2


def test_collect_trajectories_is_seeded(point_env_cls, exact_model_cls):
    a = collect_trajectories(point_env_cls(), n_episodes=2, seed=5)
    b = collect_trajectories(point_env_cls(), n_episodes=2, seed=5)
    assert len(a) == 2 and len(a[0]) == 20
    np.testing.assert_array_equal(a[1].obs, b[1].obs)


def test_make_wraps_a_registered_env():
    class PendulumModel:
        obs_dim, act_dim, episode_level, ensemble = 3, 1, False, False

        def predict(self, obs, acts, next_obs, done=None):
            return Prediction(np.ones(len(obs), dtype=np.float32), None)

    env = prefenv.make("Pendulum-v1", reward_model=PendulumModel())
    env.reset(seed=0)
    _, reward, _, _, info = env.step(env.action_space.sample())
    assert reward == 1.0 and info["true_reward"] <= 0.0
    venv = prefenv.make_vec("Pendulum-v1", 3, reward_model=PendulumModel())
    venv.reset(seed=0)
    _, rewards, *_ = venv.step(venv.action_space.sample())
    np.testing.assert_array_equal(rewards, np.ones(3))


def test_check_passes_for_a_wrapped_env_and_reports_dims(
    exact_model, point_env_cls, exact_model_cls
):
    report = prefenv.check(lambda: PreferenceReward(point_env_cls(), exact_model), n_steps=30)
    assert (report.obs_dim, report.act_dim, report.true_reward_in_info) == (2, 2, True)
    assert prefenv.check("CartPole-v1", n_steps=30).act_dim == 2


def test_check_catches_nondeterminism(point_env_cls, exact_model_cls):
    class Leaky(point_env_cls):
        """Draws noise from the global numpy RNG instead of self.np_random."""

        def step(self, action):
            obs, r, te, tr, info = super().step(action)
            noise = np.random.normal(size=2)  # noqa: NPY002 - the unseeded global RNG is the bug
            return obs + noise.astype(np.float32) * 1e-3, r, te, tr, info

    # Gymnasium's check_env may catch it first; either way it is an AssertionError naming it
    with pytest.raises(AssertionError, match="(?i)deterministic"):
        prefenv.check(Leaky, n_steps=5)


def test_check_catches_non_finite_true_reward(point_env_cls, exact_model_cls):
    class NaNTrue(point_env_cls):
        def step(self, action):
            obs, r, te, tr, info = super().step(action)
            return obs, r, te, tr, {"true_reward": float("nan")}

    with pytest.raises(prefenv.ContractError, match="finite"):
        prefenv.check(NaNTrue, n_steps=5)


def test_nested_dict_observation_is_a_clear_error(exact_model, point_env_cls, exact_model_cls):
    class Nested(point_env_cls):
        def __init__(self):
            super().__init__()
            self.observation_space = gym.spaces.Dict(
                {"a": gym.spaces.Dict({"b": gym.spaces.Box(-1, 1, (2,))})}
            )

    with pytest.raises(TypeError, match="nested Dict"):
        PreferenceReward(Nested(), exact_model)


def _perturb(model: torch.nn.Module) -> None:
    """An in-place weight update, as an optimiser step makes."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5)


def test_wrapper_reads_its_snapshot_until_refresh_or_set_predictor(point_env_cls):
    model = _ensemble()
    env = PreferenceReward(point_env_cls(), model)
    action = np.array([0.3, -0.2], dtype=np.float32)

    def first_step() -> tuple[float, np.ndarray, np.ndarray]:
        obs, _ = env.reset(seed=0)
        next_obs, reward, *_ = env.step(action)
        return reward, obs, next_obs

    before = first_step()[0]
    _perturb(model)  # training writes the live model...
    assert first_step()[0] == before  # ...the wrapper's snapshot does not follow: no hidden cache
    env.refresh()
    after, obs, next_obs = first_step()
    assert after != before
    expected = model.predictor().predict(obs[None], action[None], next_obs[None]).mean[0]
    assert after == pytest.approx(float(expected), rel=1e-6)
    env.set_predictor(_ensemble(seed=1).predictor())  # any snapshot of the right sizes
    assert first_step()[0] not in (before, after)


def test_vector_wrapper_snapshot_and_learned_rewards_follow_set_predictor(point_env_cls):
    model = _ensemble()
    env = VectorPreferenceReward(SyncVectorEnv([point_env_cls] * 3), model, shaping=-1.5)
    obs, acts, next_obs = _transitions(5)
    stale = env.learned_rewards(obs, acts, next_obs, 5)
    _perturb(model)
    np.testing.assert_array_equal(env.learned_rewards(obs, acts, next_obs, 5), stale)
    env.set_predictor(model.predictor())
    mean, std = model.predictor().predict(obs, acts, next_obs)
    relabelled = env.learned_rewards(obs, acts, next_obs, 5)
    np.testing.assert_allclose(relabelled, mean - 1.5 * std, rtol=1e-6)
    assert not np.allclose(relabelled, stale)


def test_shaping_is_applied_by_the_wrapper_to_the_predictor_mean_and_std(point_env_cls):
    model = _ensemble()
    predictor = model.predictor()
    obs, acts, next_obs = _transitions(6)
    mean, std = predictor.predict(obs, acts, next_obs)
    assert std is not None and std.min() > 0  # members disagree
    # the predictor itself has no shaping: the same (mean, std) whatever the wrapper does
    for k in (0.0, -2.0, 0.7):
        env = VectorPreferenceReward(SyncVectorEnv([point_env_cls] * 2), predictor, shaping=k)
        np.testing.assert_allclose(
            env.learned_rewards(obs, acts, next_obs, 6), mean + k * std, rtol=1e-6, atol=1e-7
        )
    np.testing.assert_array_equal(predictor.predict(obs, acts, next_obs).mean, mean)


def test_vector_wrapper_passes_done_to_the_predictor(point_env_cls, exact_model_cls):
    predictor = exact_model_cls()
    env = VectorPreferenceReward(SyncVectorEnv([lambda: point_env_cls(horizon=2)] * 2), predictor)
    env.reset(seed=0)
    for _ in range(3):
        env.step(np.zeros((2, 2), dtype=np.float32))
    assert [d.tolist() for d in predictor.dones] == [[False, False], [True, True], [False, False]]
    single = exact_model_cls()
    wrapped = PreferenceReward(point_env_cls(horizon=1), single)
    wrapped.reset(seed=0)
    wrapped.step(np.zeros(2, dtype=np.float32))
    assert single.dones[0].tolist() == [True]


def test_refresh_needs_a_model_and_set_predictor_checks_sizes(point_env, exact_model):
    env = PreferenceReward(point_env, exact_model)
    assert env.reward_model is None and env.predictor is exact_model
    with pytest.raises(RuntimeError, match="set_predictor"):
        env.refresh()
    with pytest.raises(ValueError, match="trained on another env"):
        env.set_predictor(MLPRewardModel(3, 2, hidden_sizes=(4,)).predictor())
    with pytest.raises(TypeError, match="RewardPredictor"):
        env.set_predictor(MLPRewardModel(2, 2, hidden_sizes=(4,)))  # the model, not a snapshot
    with pytest.raises(TypeError, match="as_reward_model"):
        PreferenceReward(point_env, torch.nn.Linear(6, 1))
