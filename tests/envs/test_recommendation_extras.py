"""Recommendation extras: click proxy rewards, held-out session evaluation, ratings-driven worlds."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the ids)
from envs.recommendation import RecommendationEnv, RecommendationVectorEnv, UserBatchSimulator
from envs.recommendation.evaluation import evaluate_sessions
from envs.recommendation.policies import PopularityPolicy, RandomPolicy
from envs.recommendation.ratings import fit_factors, read_ratings, world_from_ratings

# ----------------------------------------------------------------------------- click proxy


@pytest.mark.parametrize("reward", ["clicks", "engagement"])
def test_proxy_reward_is_returned_while_info_keeps_the_true_utility(reward):
    proxy = RecommendationVectorEnv(8, reward=reward)
    plain = RecommendationVectorEnv(8)
    obs_p, _ = proxy.reset(seed=3)
    obs_u, _ = plain.reset(seed=3)
    policy = PopularityPolicy.for_env(plain)
    for _ in range(30):
        obs_p, r_p, *_, info_p = proxy.step(policy(obs_p))
        obs_u, r_u, *_, info_u = plain.step(policy(obs_u))
        np.testing.assert_array_equal(obs_p, obs_u)  # same dynamics
        np.testing.assert_array_equal(r_u, info_u.get("true_reward", np.zeros(8)))
        if "true_reward" in info_p:
            np.testing.assert_array_equal(info_p["true_reward"], info_u["true_reward"])
            mask = info_p["_true_reward"]
            np.testing.assert_allclose(r_p[mask], info_p[reward][mask])


def test_single_env_click_reward_and_bad_reward_name():
    env = RecommendationEnv(reward="clicks")
    check_env(env, skip_render_check=True)
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.array([0, 1, 2]))
    assert reward == info["clicks"] and "true_reward" in info
    with pytest.raises(ValueError, match="reward must be one of"):
        RecommendationEnv(reward="ctr")
    assert gym.make("prefenv/RecSingle-v0", reward="clicks").unwrapped._setup.reward == "clicks"


# ----------------------------------------------------------------------------- evaluation


def test_evaluate_sessions_is_seeded_and_consistent():
    probe = RecommendationVectorEnv(1)
    a = evaluate_sessions(PopularityPolicy.for_env(probe), sessions=32, seed=5)
    b = evaluate_sessions(PopularityPolicy.for_env(probe), sessions=32, seed=5)
    assert a == b and a.sessions == 32
    assert 1 <= a.length <= 50 and 0 <= a.clicks <= a.length
    assert a.click_rate == pytest.approx(a.clicks / a.length)
    rnd = evaluate_sessions(RandomPolicy.for_env(probe, rng=np.random.default_rng(0)), 32, seed=5)
    assert rnd.satisfaction > a.satisfaction  # popularity favours clickbait


# ----------------------------------------------------------------------------- ratings


def _planted_csv(path, n_users=60, n_items=80, rank=3, density=0.6, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal((n_users, rank))
    q = rng.standard_normal((n_items, rank))
    bias = rng.normal(0, 0.5, n_items)
    full = 3.0 + bias[None, :] + p @ q.T + 0.1 * rng.standard_normal((n_users, n_items))
    mask = rng.random((n_users, n_items)) < density
    lines = ["user,item,rating"] + [
        f"u{u},i{i},{full[u, i]:.4f}" for u, i in zip(*np.nonzero(mask), strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fitted_factors_reconstruct_held_out_ratings_better_than_the_mean(tmp_path):
    ratings = read_ratings(_planted_csv(tmp_path / "r.csv"))
    assert len(ratings.user_ids) == 60 and len(ratings.item_ids) == 80
    rows = np.random.default_rng(1).permutation(len(ratings))
    test, train = rows[: len(rows) // 10], rows[len(rows) // 10 :]
    model = fit_factors(ratings.subset(train), n_factors=3, reg=0.1, iterations=20, seed=0)
    held_out = ratings.subset(test)
    baseline = float(np.sqrt(np.mean((held_out.values - model.global_mean) ** 2)))
    assert model.rmse(held_out) < 0.35 * baseline
    again = fit_factors(ratings.subset(train), n_factors=3, reg=0.1, iterations=20, seed=0)
    np.testing.assert_array_equal(model.item_factors, again.item_factors)  # seeded


def test_world_from_ratings_drives_the_envs_and_keeps_fitted_preferences(tmp_path):
    path = _planted_csv(tmp_path / "r.csv")
    world = world_from_ratings(path, n_factors=3, seed=0)
    cat = world.catalog
    assert cat.n_items == 80 and cat.n_topics == world.config.n_topics == 6
    np.testing.assert_allclose(cat.topics.sum(axis=1), 1.0)
    assert np.all(np.abs(world.user_pool) <= 1.0) and world.user_pool.shape == (60, 6)
    # affinity in the simulator is proportional to the fitted preference p_u . q_i
    m = world.model
    affinity = world.user_pool @ cat.topics.T
    fitted = m.user_factors @ m.item_factors.T
    norms = np.abs(m.item_factors).sum(axis=1)
    scale = affinity[0, 0] * norms[0] / fitted[0, 0]
    np.testing.assert_allclose(affinity * norms[None, :], scale * fitted, atol=1e-9)
    assert np.corrcoef(cat.quality, m.item_bias)[0, 1] > 0.999
    env = RecommendationEnv(**world.env_kwargs(), slate_size=3)
    check_env(env, skip_render_check=True)
    env.reset(seed=0)
    assert any(np.allclose(env.sim.interest[0], row) for row in world.user_pool)
    venv = gym.make_vec("prefenv/RecSlate-v0", num_envs=2, **world.env_kwargs())
    obs, _ = venv.reset(seed=1)
    assert obs.shape == (2, 6 + 3 + 10 * 8)
    sim = UserBatchSimulator.from_ratings(str(path), n_users=4, n_factors=3)
    sim.rngs = [np.random.default_rng(i) for i in range(4)]
    sim.reset_users(np.arange(4))
    assert sim.observe().shape == (4, 6 + 3 + 10 * 8)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("user,item,rating\nu1,i1,4\nu2,i2\n", "line 3: expected 3 comma-separated fields"),
        ("u1,i1,4\nu1,i2,great\n", "line 2: rating 'great' is not a finite number"),
        ("u1,i1,nan\n", "line 1: rating 'nan' is not a finite number"),
        ("u1,,3\n", "line 1: empty user or item id"),
        ("user,item,rating\n\n", "holds no ratings"),
    ],
)
def test_malformed_ratings_name_the_line_and_the_fix(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_ratings(path)


def test_ratings_with_too_few_items_for_the_candidates_is_a_clear_error(tmp_path):
    path = tmp_path / "small.csv"
    path.write_text("u1,i1,4\nu1,i2,3\nu2,i1,5\n")
    with pytest.raises(ValueError, match="fewer than n_candidates"):
        world_from_ratings(path, n_factors=1)


def test_user_pool_shape_and_range_are_validated():
    with pytest.raises(ValueError, match="user_pool must have shape"):
        UserBatchSimulator(2, user_pool=np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        UserBatchSimulator(2, user_pool=np.full((5, 20), 2.0))
