"""RUNE's exploration schedule and the wrappers' ``mean + k_t * std`` with a step count."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gymnasium.vector import SyncVectorEnv

from prefenv.exploration import (
    ConstantShaping,
    RuneSchedule,
    ShapingSchedule,
    as_schedule,
    shapes_never,
)
from prefenv.predictors import Prediction
from prefenv.reward_models import MLPRewardModel, RewardEnsemble
from prefenv.wrappers import PreferenceReward, VectorPreferenceReward


class TwoMembers:
    """A hand-built 2-member ensemble: ``r_0 = sum(next_obs)``, ``r_1 = r_0 + 2 * a_0``.

    So the member mean is ``sum(next_obs) + a_0`` and the population std is ``|a_0|``.
    """

    obs_dim = 2
    act_dim = 2
    episode_level = False
    ensemble = True

    def predict(self, obs, acts, next_obs, done=None) -> Prediction:
        r0 = next_obs.sum(axis=1)
        r1 = r0 + 2.0 * acts[:, 0]
        members = np.stack([r0, r1]).astype(np.float32)
        return Prediction(members.mean(axis=0), members.std(axis=0))


def _expected(next_obs: np.ndarray, action: np.ndarray, k: float) -> float:
    return float(next_obs.sum() + action[0] + k * abs(action[0]))


# --- schedules ---------------------------------------------------------------------------------


def test_rune_schedule_values_by_hand() -> None:
    schedule = RuneSchedule(beta0=0.2, decay=0.5)
    assert [schedule.value(t) for t in (0, 1, 2, 3)] == pytest.approx([0.2, 0.1, 0.05, 0.025])
    rune = RuneSchedule()
    assert (rune.beta0, rune.decay) == (0.05, 1e-5)  # RUNE sac_explore.yaml
    assert rune.value(1) == pytest.approx(0.05 * 0.99999, rel=1e-12)
    # half-life ln 2 / -ln(1 - 1e-5) = 69,314.37 steps; about 0.05 e^-10 after 1M steps
    assert rune.value(69_314) == pytest.approx(0.025, rel=1e-4)
    assert rune.value(1_000_000) == pytest.approx(0.05 * math.exp(-10.0), rel=1e-4)
    assert RuneSchedule(beta0=0.3, decay=0.0).value(10**9) == 0.3


def test_constant_schedule_and_conversion() -> None:
    assert ConstantShaping(-1.5).value(0) == ConstantShaping(-1.5).value(10**6) == -1.5
    assert as_schedule(0.7) == ConstantShaping(0.7)
    assert as_schedule(np.float32(2.0)) == ConstantShaping(2.0)
    rune = RuneSchedule()
    assert as_schedule(rune) is rune and isinstance(rune, ShapingSchedule)
    assert shapes_never(ConstantShaping(0.0)) and shapes_never(RuneSchedule(beta0=0.0))
    assert not shapes_never(ConstantShaping(-0.1)) and not shapes_never(rune)


def test_invalid_schedules_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\)"):
        RuneSchedule(decay=1.0)
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\)"):
        RuneSchedule(decay=-1e-5)
    with pytest.raises(ValueError, match="finite"):
        RuneSchedule(beta0=math.inf)
    with pytest.raises(ValueError, match="finite"):
        ConstantShaping(math.nan)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        RuneSchedule().value(-1)
    with pytest.raises(TypeError, match="ShapingSchedule"):
        as_schedule("rune")  # type: ignore[arg-type]


# --- the wrappers ------------------------------------------------------------------------------


def test_single_env_reward_is_mean_plus_k_t_std_at_known_steps(point_env) -> None:
    env = PreferenceReward(point_env, TwoMembers(), shaping=RuneSchedule(beta0=1.0, decay=0.5))
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for t, k in enumerate([1.0, 0.5, 0.25, 0.125]):
        assert env.shaping_steps == t and env.shaping == pytest.approx(k)
        action = rng.uniform(0.2, 1.0, size=2).astype(np.float32) * rng.choice([-1, 1])
        next_obs, reward, *_ = env.step(action)
        assert reward == pytest.approx(_expected(next_obs, action, k), rel=1e-5)
    assert env.shaping_steps == 4


def test_vector_step_counts_every_subenv_and_scores_all_with_one_k(point_env_cls) -> None:
    n = 3
    venv = SyncVectorEnv([lambda: point_env_cls(horizon=2) for _ in range(n)])
    env = VectorPreferenceReward(venv, TwoMembers(), shaping=RuneSchedule(beta0=2.0, decay=0.25))
    obs, _ = env.reset(seed=1)
    rng = np.random.default_rng(1)
    for step in range(4):  # steps 2 and 3: a truncation, then NEXT_STEP's reset step
        k = 2.0 * 0.75 ** (n * step)
        assert env.shaping_steps == n * step and env.shaping == pytest.approx(k)
        actions = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
        next_obs, rewards, *_ = env.step(actions)
        if step != 2:  # step 2 is the reset step: no transition, reward 0
            expected = [_expected(next_obs[i], actions[i], k) for i in range(n)]
            np.testing.assert_allclose(rewards, expected, rtol=1e-5)
        else:
            np.testing.assert_array_equal(rewards, np.zeros(n))
    # reset steps count too, so the count is the agent's num_timesteps (vector steps x num_envs)
    assert env.shaping_steps == 4 * n


def test_wrapper_std_is_the_population_std_of_the_members_per_step_rewards(point_env_cls) -> None:
    # RUNE's bonus: np.std (ddof 0) across members of each member's per-step reward
    torch.manual_seed(0)
    members = [MLPRewardModel(2, 2, hidden_sizes=(16,)) for _ in range(3)]
    ensemble = RewardEnsemble(members)
    rng = np.random.default_rng(0)
    obs, acts, next_obs = (rng.normal(size=(5, 2)).astype(np.float32) for _ in range(3))
    per_member = np.stack([m.predictor().predict(obs, acts, next_obs).mean for m in members])
    env = VectorPreferenceReward(
        SyncVectorEnv([point_env_cls] * 2), ensemble, shaping=RuneSchedule(beta0=0.5, decay=0.1)
    )
    env.shaping_steps = 7
    expected = per_member.mean(axis=0) + 0.5 * 0.9**7 * per_member.std(axis=0, ddof=0)
    np.testing.assert_allclose(
        env.learned_rewards(obs, acts, next_obs, 5), expected, rtol=1e-5, atol=1e-6
    )


def test_restored_step_count_resumes_the_schedule(point_env_cls) -> None:
    schedule = RuneSchedule(beta0=1.0, decay=0.1)

    def make() -> VectorPreferenceReward:
        venv = SyncVectorEnv([lambda: point_env_cls(horizon=50) for _ in range(2)])
        return VectorPreferenceReward(venv, TwoMembers(), shaping=schedule)

    actions = np.full((2, 2), 0.5, dtype=np.float32)
    first = make()
    first.reset(seed=3)
    for _ in range(5):
        first.step(actions)
    resumed = make()
    resumed.reset(seed=3)
    for _ in range(5):
        resumed.step(actions)  # the same states...
    resumed.shaping_steps = 0  # ...but a fresh wrapper of a resumed run starts its count at 0
    assert resumed.shaping != first.shaping
    resumed.shaping_steps = first.shaping_steps  # what the lead sets: agent.num_timesteps
    assert resumed.shaping_steps == 10 and resumed.shaping == pytest.approx(0.9**10)
    np.testing.assert_array_equal(resumed.step(actions)[1], first.step(actions)[1])
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="shaping_steps must be a whole number"):
            resumed.shaping_steps = bad  # type: ignore[assignment]


def test_a_schedule_needs_an_ensemble_unless_it_is_zero(point_env) -> None:
    single = MLPRewardModel(2, 2, hidden_sizes=(8,))
    with pytest.raises(ValueError, match="needs a reward ensemble"):
        PreferenceReward(point_env, single, shaping=RuneSchedule())
    PreferenceReward(point_env, single, shaping=RuneSchedule(beta0=0.0))


def test_constant_float_shaping_keeps_k_while_counting(point_env, exact_model) -> None:
    env = PreferenceReward(point_env, exact_model, shaping=-2.0)
    env.reset(seed=0)
    for _ in range(3):
        next_obs, reward, *_ = env.step(np.zeros(2, dtype=np.float32))
        assert reward == pytest.approx(next_obs.sum() - 2.0, rel=1e-6)  # std is 1
    assert env.shaping == -2.0 and env.shaping_steps == 3
    assert env.shaping_schedule == ConstantShaping(-2.0)


def test_the_bonus_decays_toward_zero_over_steps(point_env_cls) -> None:
    # behaviour over a run: the bonus k_t * std, per unit of std, falls to ~0
    venv = SyncVectorEnv([lambda: point_env_cls(horizon=25) for _ in range(4)])
    env = VectorPreferenceReward(venv, TwoMembers(), shaping=RuneSchedule(beta0=0.5, decay=0.01))
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    bonus_per_std = []
    resetting = np.zeros(4, dtype=bool)
    for _ in range(300):
        actions = rng.uniform(-1, 1, size=(4, 2)).astype(np.float32)
        actions[:, 0] = np.copysign(np.maximum(np.abs(actions[:, 0]), 0.1), actions[:, 0])
        next_obs, rewards, terminated, truncated, _ = env.step(actions)
        scored = ~resetting  # NEXT_STEP reset steps score nothing
        resetting = terminated | truncated
        if scored.any():
            bonus = rewards - (next_obs.sum(axis=1) + actions[:, 0])
            bonus_per_std.append(float(np.mean(bonus[scored] / np.abs(actions[scored, 0]))))
    bonus_per_std = np.array(bonus_per_std)
    assert bonus_per_std[0] == pytest.approx(0.5, rel=1e-4)
    assert np.all(np.diff(bonus_per_std) <= 1e-6)  # never grows
    assert bonus_per_std[100] < 0.5 * 0.99**400  # 4 sub-envs: t >= 400 by then
    assert abs(bonus_per_std[-1]) < 1e-5  # 0.5 * 0.99^1196 = 3e-6
