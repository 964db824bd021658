"""The recommendation ids' native vector entry point: registration, equivalence, the reward stack."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import data_equivalence
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import envs  # noqa: F401  (registers the ids)
import prefenv
from envs.recommendation import RecommendationVectorEnv
from prefenv.app.runs import TrainingRun, TrainSpec, make_vector_env, reward_uses_next_obs
from prefenv.recording import TrajectoryRecorder
from prefenv.reward_models import RewardEnsemble

REC_IDS = ("prefenv/RecSlate-v0", "prefenv/RecSingle-v0")
MODES = (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP)


def _random_actions(venv: gym.vector.VectorEnv, rng: np.random.Generator) -> np.ndarray:
    space = venv.single_action_space
    n = space.n if isinstance(space, gym.spaces.Discrete) else int(space.nvec[0])
    shape = (venv.num_envs,) + space.shape
    return rng.integers(0, n, size=shape)


@pytest.mark.parametrize("env_id", REC_IDS)
def test_registered_with_a_lazy_vector_entry_point(env_id: str) -> None:
    entry = gym.spec(env_id).vector_entry_point
    assert isinstance(entry, str) and entry.endswith(":RecommendationVectorEnv")
    venv = gym.make_vec(env_id, num_envs=3, vectorization_mode="vector_entry_point")
    assert isinstance(venv, RecommendationVectorEnv)
    assert venv.num_envs == 3
    single = gym.make(env_id)
    assert venv.single_action_space == single.action_space
    assert venv.single_observation_space == single.observation_space


def test_other_ids_have_no_vector_entry_point() -> None:
    assert gym.spec("prefenv/HalfCheetah-v0").vector_entry_point is None


def test_next_obs_reward_flag_survives_both_vectorizations() -> None:
    for mode in ("vector_entry_point", "sync"):
        assert reward_uses_next_obs(
            prefenv.make_vec("prefenv/RecSlate-v0", 2, vectorization_mode=mode)
        )
    assert not reward_uses_next_obs(gym.make_vec("CartPole-v1", 2, vectorization_mode="sync"))


@pytest.mark.parametrize("env_id", REC_IDS)
@pytest.mark.parametrize("mode", MODES)
def test_native_equals_sync_step_for_step(env_id: str, mode: AutoresetMode) -> None:
    native = prefenv.make_vec(env_id, 4, vector_kwargs={"autoreset_mode": mode}, horizon=8)
    sync = prefenv.make_vec(
        env_id, 4, vectorization_mode="sync", vector_kwargs={"autoreset_mode": mode}, horizon=8
    )
    assert isinstance(native, RecommendationVectorEnv) and isinstance(sync, SyncVectorEnv)
    assert native.metadata["autoreset_mode"] == sync.metadata["autoreset_mode"] == mode
    assert data_equivalence(native.reset(seed=5), sync.reset(seed=5))
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(40):
        actions = _random_actions(native, rng)
        a, b = native.step(actions), sync.step(actions)
        assert data_equivalence(a, b, exact=False)
        ended += int(np.sum(a[2] | a[3]))
    assert ended > 4  # autoresets were exercised


def test_same_step_reports_final_obs_and_info() -> None:
    venv = RecommendationVectorEnv(2, horizon=3, autoreset_mode=AutoresetMode.SAME_STEP)
    venv.reset(seed=0)
    for _ in range(2):
        _, _, terminated, truncated, infos = venv.step(np.zeros((2, 3), dtype=np.int64) + [0, 1, 2])
        assert "final_obs" not in infos
    obs, _, terminated, truncated, infos = venv.step(np.zeros((2, 3), dtype=np.int64) + [0, 1, 2])
    done = terminated | truncated
    assert done.all()  # horizon 3 (or the user left earlier and was reset: not with 3 steps)
    assert infos["_final_obs"].all() and infos["_final_info"].all()
    assert infos["final_obs"][0].shape == obs[0].shape
    assert not np.array_equal(infos["final_obs"][0], obs[0])  # obs is the new session's first
    assert "true_reward" in infos["final_info"] and "true_reward" not in infos
    assert (obs[:, venv.layout.user_dim - 3] == 0).all()  # session progress restarted


def test_rejects_disabled_autoreset_and_foreign_vector_kwargs() -> None:
    with pytest.raises(ValueError, match="NEXT_STEP or SAME_STEP"):
        RecommendationVectorEnv(2, autoreset_mode=AutoresetMode.DISABLED)
    with pytest.raises(ValueError, match="vectorization_mode='sync'"):
        prefenv.make_vec(
            "prefenv/RecSlate-v0",
            2,
            vectorization_mode="vector_entry_point",
            vector_kwargs={"copy": False},
        )
    # the default (auto) mode falls back to a SyncVectorEnv when vector_kwargs need one
    venv = prefenv.make_vec("prefenv/RecSlate-v0", 2, vector_kwargs={"copy": False})
    assert isinstance(venv, SyncVectorEnv)


@pytest.mark.parametrize("mode", MODES)
def test_preference_reward_and_recorder_on_the_native_env(mode: AutoresetMode) -> None:
    probe = RecommendationVectorEnv(1)
    model = RewardEnsemble.for_spaces(
        probe.single_observation_space, probe.single_action_space, n_members=2, hidden_sizes=(16,)
    )
    stacks = [
        TrajectoryRecorder(
            prefenv.make_vec(
                "prefenv/RecSlate-v0",
                3,
                reward_model=model,
                vectorization_mode=vectorization,
                vector_kwargs={"autoreset_mode": mode},
                horizon=6,
            )
        )
        for vectorization in ("vector_entry_point", "sync")
    ]
    for stack in stacks:
        stack.reset(seed=1)
    rng = np.random.default_rng(1)
    for _ in range(30):
        actions = _random_actions(stacks[0], rng)
        (obs_a, r_a, *_, info_a), (obs_b, r_b, *_, info_b) = (s.step(actions) for s in stacks)
        np.testing.assert_allclose(obs_a, obs_b)
        np.testing.assert_allclose(r_a, r_b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(info_a["true_reward"], info_b["true_reward"])
    native, sync = (s.trajectories for s in stacks)
    assert len(native) == len(sync) > 3
    for a, b in zip(native, sync, strict=True):
        np.testing.assert_allclose(a.obs, b.obs)
        np.testing.assert_allclose(a.acts, b.acts)
        np.testing.assert_allclose(a.true_rewards, b.true_rewards)
        assert a.terminated == b.terminated


@pytest.mark.parametrize(
    ("agent", "mode"),
    [("ppo-kl", AutoresetMode.NEXT_STEP), ("sb3-ppo", AutoresetMode.SAME_STEP)],
)
def test_training_runs_use_the_native_env(agent: str, mode: AutoresetMode) -> None:
    spec = TrainSpec(env="prefenv/RecSlate-v0", agent=agent, n_envs=3)
    assert spec.vectorization == "auto"
    venv = make_vector_env(spec)
    assert isinstance(venv, RecommendationVectorEnv)
    assert venv.metadata["autoreset_mode"] == mode
    forced = make_vector_env(TrainSpec(env="prefenv/RecSlate-v0", n_envs=3, vectorization="sync"))
    assert isinstance(forced, SyncVectorEnv)
    with pytest.raises(ValueError, match="unknown --vectorization .threads.: choose one of"):
        TrainSpec(vectorization="threads")


@pytest.mark.parametrize("agent", ["ppo-kl", "sb3-ppo"])
def test_tiny_training_run_on_the_native_env(tmp_path, agent: str) -> None:
    leash = {"kl_coef": 0.05, "reference": "popularity"} if agent == "ppo-kl" else {}
    spec = TrainSpec(
        env="prefenv/RecSlate-v0", agent=agent, steps=1600, initial_steps=400, queries=24,
        rounds=3, n_envs=2, n_steps=100, segment_length=25, reward_epochs=3, ensemble=2, **leash,
    )  # fmt: skip
    run = TrainingRun(spec, tmp_path / "run")
    assert isinstance(run.recorder.unwrapped, RecommendationVectorEnv)
    # the click shows only in next_obs: the env asks for r(obs, act, next_obs) reward models
    assert reward_uses_next_obs(run.recorder)
    assert all(member.use_next_obs for member in run.reward_model.members)
    summary = run.run(progress=False)
    assert summary["labels_used"] == 24
    assert summary["timesteps"] >= 1600
    assert np.isfinite(summary["final_true_return"])
