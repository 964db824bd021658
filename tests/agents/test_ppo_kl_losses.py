"""Pure pieces of agents.ppo_kl against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from agents.ppo_kl import (
    KLController,
    PPOKLConfig,
    compute_gae,
    entropy_loss,
    kl_estimate,
    kl_penalized_rewards,
    normalize_advantages,
    ppo_clip_loss,
    value_loss,
)
from agents.ppo_kl.normalize import ReturnScaler, RunningMeanStd

# ---------------------------------------------------------------- GAE


def _gae(terminated=(0, 0, 0), truncated=(0, 0, 0), valid=(1, 1, 1)):
    col = lambda xs, dt=np.float32: np.asarray(xs, dtype=dt)[:, None]  # noqa: E731
    return compute_gae(
        rewards=col([1.0, 2.0, 3.0]),
        values=col([0.5, 1.0, 1.5]),
        next_values=col([1.0, 1.5, 2.0]),
        terminated=col(terminated, bool),
        truncated=col(truncated, bool),
        valid=col(valid, bool),
        gamma=0.5,
        gae_lambda=0.5,
    )


def test_gae_no_episode_end() -> None:
    adv, ret = _gae()
    # deltas: 1 + .5*1 - .5 = 1; 2 + .5*1.5 - 1 = 1.75; 3 + .5*2 - 1.5 = 2.5; gamma*lam = .25
    np.testing.assert_allclose(adv[:, 0], [1.0 + 0.25 * 2.375, 1.75 + 0.25 * 2.5, 2.5])
    np.testing.assert_allclose(ret[:, 0], adv[:, 0] + [0.5, 1.0, 1.5])


def test_gae_terminated_does_not_bootstrap_and_reset_step_is_masked() -> None:
    adv, _ = _gae(terminated=(0, 1, 0), valid=(1, 1, 0))
    # t=1 terminated: delta = 2 - 1 = 1, nothing flows back from t=2 (the masked reset step)
    np.testing.assert_allclose(adv[:, 0], [1.0 + 0.25 * 1.0, 1.0, 0.0])


def test_gae_truncated_bootstraps_from_final_obs_value() -> None:
    adv, _ = _gae(truncated=(0, 1, 0), valid=(1, 1, 0))
    # t=1 truncated: delta = 2 + .5 * V(final obs)=1.5 - 1 = 1.75, no advantage carried over
    np.testing.assert_allclose(adv[:, 0], [1.0 + 0.25 * 1.75, 1.75, 0.0])


def test_gae_envs_are_independent() -> None:
    rewards = np.array([[1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    zeros = np.zeros((2, 2), dtype=np.float32)
    no = np.zeros((2, 2), dtype=bool)
    adv, _ = compute_gae(rewards, zeros, zeros, no, no, ~no, gamma=1.0, gae_lambda=1.0)
    np.testing.assert_allclose(adv, [[2.0, 0.0], [1.0, 0.0]])


# ---------------------------------------------------------------- losses


def test_ppo_clip_loss_hand_computed() -> None:
    log_ratio = torch.log(torch.tensor([0.5, 1.5, 1.0]))
    adv = torch.tensor([1.0, -1.0, 2.0])
    # per sample max(-A r, -A clip(r)): max(-.5, -.8) = -.5; max(1.5, 1.2) = 1.5; -2
    loss = ppo_clip_loss(log_ratio, adv, clip_coef=0.2)
    assert loss.item() == pytest.approx((-0.5 + 1.5 - 2.0) / 3)


def test_ppo_clip_loss_gradient_zero_when_clipped() -> None:
    log_ratio = torch.log(torch.tensor([1.5])).requires_grad_()
    ppo_clip_loss(log_ratio, torch.tensor([1.0]), 0.2).backward()
    assert log_ratio.grad is not None and log_ratio.grad.item() == 0.0


def test_value_loss_hand_computed() -> None:
    v, old, ret = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0]), torch.tensor([0.0, 0.0])
    assert value_loss(v, old, ret, None).item() == pytest.approx((1 + 9) / 2)
    # clipped values 1.5, 2.5 -> squared 2.25, 6.25; max with 1, 9 -> 2.25, 9
    assert value_loss(v, old, ret, 0.5).item() == pytest.approx((2.25 + 9.0) / 2)


def test_entropy_loss_and_advantage_normalisation() -> None:
    assert entropy_loss(torch.tensor([1.0, 3.0])).item() == -2.0
    adv = normalize_advantages(torch.tensor([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(adv.numpy(), [-1.0, 0.0, 1.0], atol=1e-6)
    single = torch.tensor([5.0])
    assert normalize_advantages(single) is single


# ---------------------------------------------------------------- KL


def test_kl_estimators_hand_computed() -> None:
    logp, ref = np.array([-1.0, -2.0]), np.array([-1.5, -1.0])
    np.testing.assert_allclose(kl_estimate(logp, ref, "k1"), [0.5, -1.0])
    expected_k3 = [(math.exp(-0.5) - 1) + 0.5, (math.e - 1) - 1.0]
    np.testing.assert_allclose(kl_estimate(logp, ref, "k3"), expected_k3)
    assert (kl_estimate(np.random.default_rng(0).normal(size=50), np.zeros(50), "k3") >= 0).all()
    with pytest.raises(ValueError, match="k1"):
        kl_estimate(logp, ref, "k2")


def test_kl_penalized_rewards() -> None:
    rewards = np.array([1.0, 2.0], dtype=np.float32)
    out = kl_penalized_rewards(rewards, np.array([0.5, -1.0], dtype=np.float32), 0.1)
    np.testing.assert_allclose(out, [0.95, 2.1], rtol=1e-6)
    assert out.dtype == np.float32
    assert kl_penalized_rewards(rewards, np.full(2, np.nan, np.float32), 0.0) is rewards


@pytest.mark.parametrize(
    ("episode_kl", "expected_error"), [(12.0, 0.2), (6.6, 0.1), (3.0, -0.2), (0.0, -0.2)]
)
def test_adaptive_kl_follows_ziegler(episode_kl: float, expected_error: float) -> None:
    ctl = KLController(0.2, adaptive=True, target=6.0, horizon=10000)
    beta = ctl.update(episode_kl, n_episodes=100)
    assert beta == pytest.approx(0.2 * (1 + expected_error * 100 / 10000))
    assert (beta > 0.2) == (episode_kl > 6.0)


def test_fixed_kl_and_empty_batch_leave_beta() -> None:
    assert KLController(0.3).update(100.0, 10) == 0.3
    assert KLController(0.3, adaptive=True).update(float("nan"), 0) == 0.3


# ---------------------------------------------------------------- normalisers and config


def test_running_mean_std_matches_numpy() -> None:
    data = np.random.default_rng(0).normal(3.0, 2.0, size=(100, 2))
    rms = RunningMeanStd((2,), epsilon=0.0)
    for chunk in np.split(data, 4):
        rms.update(chunk)
    np.testing.assert_allclose(rms.mean, data.mean(0))
    np.testing.assert_allclose(rms.var, data.var(0))


def test_return_scaler_ignores_masked_steps() -> None:
    scaler = ReturnScaler(num_envs=2, gamma=0.9)
    valid = np.array([True, False])
    scaler(np.array([1.0, 5.0]), np.array([False, False]), valid)
    assert scaler.returns.tolist() == [1.0, 0.0]
    scaler(np.array([1.0, 0.0]), np.array([True, False]), np.array([True, True]))
    assert scaler.returns.tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"learning_rate": 0.0},
        {"gamma": 1.5},
        {"batch_size": 0},
        {"kl_coef": -1.0},
        {"kl_estimator": "k2"},
        {"adaptive_kl": True, "kl_coef": 0.0},
        {"clip_vloss": 0.0},
        {"hidden_sizes": ()},
        {"activation": "gelu"},
    ],
)
def test_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="PPOKLConfig"):
        PPOKLConfig(**kwargs)


def test_config_round_trip() -> None:
    cfg = PPOKLConfig(hidden_sizes=[16, 16], kl_coef=0.1)
    assert PPOKLConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown PPOKLConfig fields"):
        PPOKLConfig.from_dict({"n_stepz": 3})
