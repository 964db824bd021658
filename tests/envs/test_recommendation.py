"""Recommendation envs: choice model, dynamics, action errors, vector/single equivalence, policies."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import data_equivalence

import envs  # noqa: F401  (registers the ids)
from envs.recommendation import (
    Catalog,
    ObsLayout,
    RecommendationEnv,
    RecommendationVectorEnv,
    SimConfig,
    UserBatchSimulator,
    check_slates,
    choice_probabilities,
    sample_choices,
)
from envs.recommendation.policies import (
    GreedyClickPolicy,
    PopularityPolicy,
    ProductionPolicy,
    RandomPolicy,
)

REC_IDS = ["prefenv/RecSlate-v0", "prefenv/RecSingle-v0"]


# ----------------------------------------------------------------------------- registration


@pytest.mark.parametrize("env_id", REC_IDS)
def test_sb3_check_env(env_id: str) -> None:
    sb3_env_checker = pytest.importorskip("stable_baselines3.common.env_checker")
    env = gym.make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SB3 warns on anything it dislikes: fail on it
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        sb3_env_checker.check_env(env, warn=True, skip_render_check=True)
    env.close()


def test_spaces_of_the_registered_variants() -> None:
    slate, single = gym.make(REC_IDS[0]), gym.make(REC_IDS[1])
    assert slate.action_space == gym.spaces.MultiDiscrete([10, 10, 10])
    assert single.action_space == gym.spaces.Discrete(10)
    layout = ObsLayout(20, 10)
    assert slate.observation_space.shape == single.observation_space.shape == (layout.dim,)
    assert gym.make(REC_IDS[0], n_items=1000, n_candidates=5).action_space.nvec.tolist() == [5] * 3


# ----------------------------------------------------------------------------- choice model


def test_choice_probabilities_match_hand_computed_values() -> None:
    probs = choice_probabilities(np.array([[1.0, 0.0, -np.inf]]), no_click_logit=0.5)
    e = [math.exp(1.0), 1.0, 0.0, math.exp(0.5)]
    np.testing.assert_allclose(probs[0], np.array(e) / sum(e), rtol=1e-12)
    # Position bias 0.5: slot k's weight is multiplied by 0.5 ** k.
    probs = choice_probabilities(np.array([[0.0, 0.0, 0.0]]), 0.0, position_bias=0.5)
    e = [1.0, 0.5, 0.25, 1.0]
    np.testing.assert_allclose(probs[0], np.array(e) / sum(e), rtol=1e-12)


def test_sample_choices_inverts_the_cdf_and_skips_empty_slots() -> None:
    probs = np.array([[0.2, 0.0, 0.3, 0.5]] * 4)
    picks = sample_choices(probs, np.array([0.1, 0.2, 0.49, 0.999999]))
    assert picks.tolist() == [0, 2, 2, 3]  # 3 = no click; slot 1 (p = 0) never drawn


def test_slate_logits_are_affinity_plus_appeal() -> None:
    cfg = SimConfig(n_items=50, n_topics=4, n_candidates=5, horizon=5)
    sim = _sim(cfg, seed=1)
    sim.interest[0] = [0.5, -0.2, 0.1, 0.9]
    sim.profile[0] = [1.0, 0.0, 0.0, 2.0]
    ids = sim.candidates()[0]
    logits = sim.slate_logits(np.array([[3, 1, -1]]))[0]
    for slot, k in ((0, 3), (1, 1)):
        j = ids[k]
        effective = sim.interest[0] - cfg.boredom_weight * sim.profile[0]
        expected = cfg.affinity_scale * effective @ sim.catalog.topics[j] + sim.catalog.appeal[j]
        assert logits[slot] == pytest.approx(expected, rel=1e-12)
    assert logits[2] == -np.inf


def test_catalog_has_trashy_and_nutritious_clusters_and_clickbait() -> None:
    cfg = SimConfig(n_items=1000)
    cat = Catalog.generate(cfg, np.random.default_rng(0))
    np.testing.assert_allclose(cat.topics.sum(1), 1.0)
    assert (cat.quality[cat.cluster < 10] < 0.5).all() and (
        cat.quality[cat.cluster >= 10] > -0.5
    ).all()
    # Clickbait: the worse the item, the more it appeals (and the more popular it looks).
    assert np.corrcoef(cat.quality, cat.appeal)[0, 1] < -0.9
    assert np.corrcoef(cat.quality, cat.popularity)[0, 1] < -0.5
    with pytest.raises(ValueError, match="write|read-only"):
        cat.quality[0] = 1.0


# ----------------------------------------------------------------------------- dynamics


def _sim(cfg: SimConfig, seed: int = 0, n_users: int = 1) -> UserBatchSimulator:
    sim = UserBatchSimulator(n_users, cfg)
    sim.rngs = [np.random.default_rng(seed + u) for u in range(n_users)]
    sim.reset_users(np.arange(n_users))
    return sim


def test_a_click_moves_interests_toward_the_item_and_bores_the_user() -> None:
    # no_click_logit -50: the top slot is always clicked.
    cfg = SimConfig(
        n_items=50, n_topics=4, n_candidates=5, no_click_logit=-50.0, position_bias=1e-9
    )
    sim = _sim(cfg)
    before, budget = sim.interest.copy(), sim.budget.copy()
    j = sim.candidates()[0, 2]
    out = sim.step(np.array([[2]]))
    topic, q = sim.catalog.topics[j], sim.catalog.quality[j]
    assert out.clicked_slot.tolist() == [0] and out.item.tolist() == [j]
    np.testing.assert_allclose(sim.interest[0], before[0] + cfg.drift_rate * (topic - before[0]))
    np.testing.assert_allclose(sim.profile[0], topic)  # boredom memory of the consumed topic
    affinity = before[0] @ topic
    watch = sim.catalog.length[j] / (
        1 + math.exp(-(cfg.affinity_scale * affinity + sim.catalog.appeal[j]))
    )
    assert out.engagement[0] == pytest.approx(watch)
    assert out.satisfaction[0] == pytest.approx(q + affinity)
    assert out.diversity[0] == pytest.approx(1.0)  # empty history
    assert sim.budget[0] == pytest.approx(budget[0] - watch * (1 - cfg.refund_rate * q))
    # Consuming the same item again: boredom lowers its affinity, diversity is low.
    sim.candidate_table[0, 1, 0] = j
    again = sim.step(np.array([[0]]))
    assert again.satisfaction[0] < out.satisfaction[0] + cfg.drift_rate * 2
    assert again.diversity[0] == pytest.approx(0.0, abs=1e-12)


def test_no_click_leaves_interests_and_costs_budget_until_the_user_leaves() -> None:
    cfg = SimConfig(n_items=50, n_candidates=5, no_click_logit=50.0, time_budget=2.0)
    sim = _sim(cfg)
    before = sim.interest.copy()
    ends = [sim.step(np.array([[0, 1]])) for _ in range(4)]
    np.testing.assert_array_equal(sim.interest, before)
    assert [bool(o.terminated[0]) for o in ends] == [False, False, False, True]
    assert not any(o.truncated[0] for o in ends)
    assert all(o.clicked_slot[0] == -1 and o.engagement[0] == 0 for o in ends)


def test_horizon_truncates_and_leaving_terminates_in_the_env() -> None:
    stay = SimConfig(no_click_logit=50.0, no_click_cost=0.0)
    env = RecommendationEnv(horizon=7, sim_config=stay)
    env.reset(seed=0)
    flags = [env.step(env.action_space.sample())[2:4] for _ in range(7)]
    assert flags == [(False, False)] * 6 + [(False, True)]
    with pytest.raises(gym.error.ResetNeeded):
        env.step(env.action_space.sample())
    leave = SimConfig(no_click_logit=50.0, time_budget=1.0)
    env = RecommendationEnv(sim_config=leave)
    env.reset(seed=0)
    assert env.step(env.action_space.sample())[2:4] == (False, False)
    assert env.step(env.action_space.sample())[2:4] == (True, False)


def test_info_reports_each_objective_and_the_weighted_true_reward() -> None:
    weights = {"engagement": 0.5, "satisfaction": 2.0, "diversity": -1.0}
    env = RecommendationEnv(objective_weights=weights)
    env.reset(seed=3)
    clicks = 0
    for _ in range(10):
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        mix = sum(w * info[k] for k, w in weights.items())
        assert reward == info["true_reward"] == pytest.approx(mix)
        assert info["clicks"] == int(info["clicked_slot"] >= 0)
        clicks += info["clicks"]
        if terminated or truncated:
            break
    assert clicks > 0
    with pytest.raises(ValueError, match="unknown terms"):
        RecommendationEnv(objective_weights={"clicks": 1.0})


# ----------------------------------------------------------------------------- bad actions


def test_bad_actions_raise_clear_errors() -> None:
    env = gym.make("prefenv/RecSlate-v0", on_duplicate="error")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="out of range.*10 candidates"):
        env.step(np.array([0, 1, 10]))
    with pytest.raises(ValueError, match="out of range"):
        env.step(np.array([-1, 1, 2]))
    with pytest.raises(ValueError, match="same candidate twice"):
        env.step(np.array([4, 2, 4]))
    with pytest.raises(ValueError, match="3 ints per user"):
        env.step(np.array([1, 2]))
    with pytest.raises(ValueError, match="integer candidate slots"):
        env.step(np.array([0.5, 1, 2]))
    single = gym.make("prefenv/RecSingle-v0")
    single.reset(seed=0)
    with pytest.raises(ValueError, match="out of range"):
        single.step(12)
    with pytest.raises(ValueError, match="slate_size must be in"):
        RecommendationEnv(slate_size=11)


def test_repeated_candidates_are_shown_once_by_default() -> None:
    assert check_slates(np.array([[4, 2, 4], [1, 1, 1]]), 10).tolist() == [[4, 2, -1], [1, -1, -1]]
    cfg = SimConfig(no_click_logit=-50.0, position_bias=1.0)
    env = RecommendationEnv(sim_config=cfg)
    env.reset(seed=0)
    for _ in range(10):
        *_, info = env.step(np.array([5, 5, 5]))
        assert info["clicked_slot"] == 0  # the only non-empty slot


# ----------------------------------------------------------------------------- vector env


def _actions(space: gym.Space, rng: np.random.Generator, n: int) -> np.ndarray:
    nvec = getattr(space, "nvec", None)
    shape = (n,) if nvec is None else (n, len(nvec))
    high = int(space.n) if nvec is None else int(nvec[0])
    return rng.integers(0, high, size=shape)


@pytest.mark.parametrize("slate_size", [3, None])
def test_native_vector_env_equals_sync_vector_env_of_single_envs(slate_size: int | None) -> None:
    kwargs = {"n_items": 300, "slate_size": slate_size, "horizon": 12}
    native = RecommendationVectorEnv(3, **kwargs)
    sync = gym.vector.SyncVectorEnv([lambda: RecommendationEnv(**kwargs) for _ in range(3)])
    assert native.observation_space == sync.observation_space
    assert native.action_space == sync.action_space
    assert data_equivalence(native.reset(seed=5), sync.reset(seed=5), exact=True)
    rng = np.random.default_rng(0)
    dones = 0
    for _ in range(40):  # several sessions per sub-env: autoresets included
        actions = _actions(native.single_action_space, rng, 3)
        a, b = native.step(actions), sync.step(actions)
        assert data_equivalence(a, b, exact=True)
        dones += int(np.sum(a[2] | a[3]))
    assert dones >= 6


def test_vector_env_is_seeded_and_validates_actions() -> None:
    def rollout(seed: int) -> list:
        env = RecommendationVectorEnv(4, n_items=300)
        out = [env.reset(seed=seed)]
        rng = np.random.default_rng(1)
        out += [env.step(_actions(env.single_action_space, rng, 4)) for _ in range(30)]
        return out

    assert data_equivalence(rollout(2), rollout(2), exact=True)
    assert not data_equivalence(rollout(2), rollout(3))
    env = RecommendationVectorEnv(2, on_duplicate="error")
    with pytest.raises(gym.error.ResetNeeded):
        env.step(np.zeros((2, 3), dtype=np.int64))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="same candidate twice"):
        env.step(np.array([[0, 1, 2], [3, 3, 4]]))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros((3, 3), dtype=np.int64))


# ----------------------------------------------------------------------------- policies


def _run_policy(policy, env: RecommendationVectorEnv, steps: int) -> dict[str, float]:
    obs, _ = env.reset(seed=0)
    totals = {"clicks": 0.0, "satisfaction": 0.0, "true_reward": 0.0, "valid": 0.0}
    for _ in range(steps):
        obs, _, _, _, info = env.step(policy(obs))
        for key in ("clicks", "satisfaction", "true_reward"):
            totals[key] += float(info[key].sum())
        totals["valid"] += float(info["_clicks"].sum())
    return {k: v / totals["valid"] for k, v in totals.items() if k != "valid"}


def test_production_policies_give_valid_slates_and_clickbait_trades_satisfaction() -> None:
    env = RecommendationVectorEnv(64, n_items=1000)
    layout = env.layout
    policies = {
        "random": RandomPolicy(layout, 3, np.random.default_rng(0)),
        "popularity": PopularityPolicy(layout, 3),
        "greedy": GreedyClickPolicy.for_env(env),
    }
    obs, _ = env.reset(seed=0)
    for policy in policies.values():
        actions = policy(obs)
        assert actions.shape == (64, 3) and env.action_space.contains(actions)
        assert all(len(set(row)) == 3 for row in actions.tolist())
        assert policy(obs[0]).shape == (3,)
    per_step = {name: _run_policy(p, env, 60) for name, p in policies.items()}
    for name in ("popularity", "greedy"):  # more clicks per step, less satisfaction
        assert per_step[name]["clicks"] > per_step["random"]["clicks"]
        assert per_step[name]["satisfaction"] < per_step["random"]["satisfaction"]


def test_production_policy_module_is_a_consistent_stochastic_policy() -> None:
    env = RecommendationVectorEnv(8, n_items=300)
    obs, _ = env.reset(seed=0)
    x = torch.as_tensor(obs)
    ref = ProductionPolicy.for_env(env, temperature=0.5)
    torch.manual_seed(0)
    actions, log_probs, values = ref.act(x)
    assert actions.shape == (8, 3) and values.abs().sum() == 0
    torch.testing.assert_close(ref.log_prob(x, actions), log_probs)
    lp, entropy, _ = ref.evaluate(x, actions)
    torch.testing.assert_close(lp, log_probs)
    assert (entropy > 0).all()
    top, _, _ = ref.act(x, deterministic=True)
    np.testing.assert_array_equal(top.numpy(), GreedyClickPolicy.for_env(env)(obs))
    single = RecommendationVectorEnv(2, n_items=300, slate_size=None)
    s_obs, _ = single.reset(seed=0)
    s_ref = ProductionPolicy.for_env(single, kind="popularity")
    all_actions = torch.arange(10).repeat_interleave(2)
    probs = s_ref.log_prob(torch.as_tensor(s_obs).repeat(10, 1), all_actions).exp()
    torch.testing.assert_close(probs.reshape(10, 2).sum(0), torch.ones(2))


def test_production_policy_is_a_ppo_kl_reference() -> None:
    ppo_kl = pytest.importorskip("agents.ppo_kl")
    env = RecommendationVectorEnv(2, n_items=300, horizon=10)
    ref = ProductionPolicy.for_env(env)
    config = ppo_kl.PPOKLConfig(
        n_steps=16, batch_size=16, n_epochs=1, hidden_sizes=(16,), kl_coef=0.1, seed=0
    )
    agent = ppo_kl.PPOKL(env, config, ref_policy=ref)
    metrics = agent.learn(32)
    assert agent.ref_policy is ref
    assert len(metrics) == 1 and np.isfinite(metrics[0].kl_to_ref)
    assert metrics[0].episodes > 0 and np.isfinite(metrics[0].episode_true_return)
