"""Label smoothing in Bradley-Terry training: the loss by hand, its finite optimum, and what it
does to a tanh reward fit to labels about falls (it stays below its ceiling, so speed still pays).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prefenv.records import Comparison, Trajectory
from prefenv.reward_models import MLPRewardModel
from prefenv.reward_training import RewardTrainConfig, bradley_terry_loss, train_reward_model
from prefenv.sampling import sample_segment_pairs

H = 20
"""Segment length of the synthetic falling task."""


def test_smoothed_loss_by_hand_and_its_finite_optimum() -> None:
    t = torch.tensor
    logits, labels, s = t([-1.0, 0.0, 2.5]), t([1.0, 0.5, 0.0]), 0.1
    targets = [1 - s / 2, 0.5, s / 2]  # a tie stays a tie
    expected = -np.mean([
        q * math.log(1 / (1 + math.exp(-x))) + (1 - q) * math.log(1 / (1 + math.exp(x)))
        for x, q in zip(logits.tolist(), targets, strict=True)
    ])  # fmt: skip
    zeros = torch.zeros(3)
    got = bradley_terry_loss(zeros, logits, labels, label_smoothing=s)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert bradley_terry_loss(zeros, logits, labels, label_smoothing=0.0).item() == pytest.approx(
        bradley_terry_loss(zeros, logits, labels).item()
    )
    # the pull on a right label stops at |R1 - R0| = ln((2 - s) / s) and turns back beyond it
    optimum = math.log((2 - s) / s)
    for x, sign in ((optimum, 0), (optimum + 2.0, 1), (optimum - 2.0, -1)):
        logit = t([x], requires_grad=True)
        (grad,) = torch.autograd.grad(
            bradley_terry_loss(t([0.0]), logit, t([1.0]), 0, 0, 0, s), logit
        )
        assert (
            (grad.item() == pytest.approx(0.0, abs=1e-6)) if sign == 0 else grad.item() * sign > 0
        )
    # the plain loss pulls the same pair apart at any distance
    logit = t([optimum + 2.0], requires_grad=True)
    (grad,) = torch.autograd.grad(bradley_terry_loss(t([0.0]), logit, t([1.0])), logit)
    assert grad.item() < 0
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        RewardTrainConfig(label_smoothing=1.0)


def _episodes(rng: np.random.Generator, n: int) -> list[Trajectory]:
    """A slow walker that mostly falls: one speed per episode in [0, 0.3], 80% of episodes end
    early, leaning (obs[1]) over their last four steps. True reward ``1 + 2 * speed`` per step:
    a healthy bonus and forward progress, as on Walker2d."""
    episodes = []
    for _ in range(n):
        speed = rng.uniform(0.0, 0.3)
        steps = int(rng.integers(5, 60)) if rng.random() < 0.8 else 60
        lean = np.zeros(steps + 1)
        if steps < 60:
            lean[-4:] = np.linspace(0.5, 2.0, 4)
        obs = np.column_stack([speed + 0.05 * rng.normal(size=steps + 1),
                               lean + 0.1 * rng.normal(size=steps + 1)])  # fmt: skip
        episodes.append(Trajectory(obs, rng.normal(size=(steps, 1)), 1.0 + 2.0 * obs[:-1, 0]))
    return episodes


def _upright_rewards(model: MLPRewardModel, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """``([N, H] learned step rewards, [N] true per-step means)`` on upright windows at speeds
    up to 1, beyond anything the labels showed: a walker that learned to run."""
    speed = rng.uniform(0.0, 1.0, size=400)
    obs = np.stack([np.column_stack([v + 0.05 * rng.normal(size=H + 1), 0.1 * rng.normal(size=H + 1)])
                    for v in speed]).astype(np.float32)  # fmt: skip
    with torch.no_grad():
        rewards = model(torch.as_tensor(obs[:, :-1]).reshape(-1, 2), torch.zeros(400 * H, 1),
                        torch.as_tensor(obs[:, 1:]).reshape(-1, 2)).numpy().reshape(400, H)  # fmt: skip
    return rewards, (1.0 + 2.0 * obs[:, :-1, 0]).mean(1)


def test_smoothing_keeps_a_tanh_reward_off_its_ceiling_so_speed_still_pays(one_thread) -> None:
    """100 oracle labels of a slow walker that mostly falls, a tanh reward network.

    The plain loss wins the many pairs decided by a fall by pushing every upright step to the
    ceiling: on upright windows faster than any labelled one, the fastest (true > 2.6 per step)
    earn no more than the merely fast (2.0-2.4). Smoothed labels stop that push. Measured (seeds
    0, 1, 2): saturated share plain 0.73 / 0.76 / 0.71, smoothed 0.08 / 0.01 / 0.21; per-step
    gap fastest - fast plain 0.000 / 0.000 / 0.000, smoothed 0.195 / 0.170 / 0.191.
    """
    for seed in (0, 1, 2):
        rng = np.random.default_rng(seed)
        pairs = sample_segment_pairs(_episodes(rng, 200), 100, H, rng=rng)
        labels = [Comparison(a, b, float(b.true_return > a.true_return)) for a, b in pairs]
        results = {}
        for smoothing in (0.0, 0.1):
            torch.manual_seed(seed)
            model = MLPRewardModel(2, 1, hidden_sizes=(32, 32))  # tanh output
            config = RewardTrainConfig(lr=3e-3, batch_size=64, max_epochs=200, patience=200,
                                       val_fraction=0.0, label_smoothing=smoothing)  # fmt: skip
            train_reward_model(model, labels, config)
            rewards, true = _upright_rewards(model, np.random.default_rng(100 + seed))
            gap = rewards[true > 2.6].mean() - rewards[(true > 2.0) & (true < 2.4)].mean()
            results[smoothing] = (float((np.abs(rewards) > 0.95).mean()), float(gap))
        (plain_sat, plain_gap), (smooth_sat, smooth_gap) = results[0.0], results[0.1]
        assert plain_sat > 0.5 and smooth_sat < 0.35, (seed, results)
        assert plain_gap < 0.03 and smooth_gap > 0.1, (seed, results)


def test_train_spec_resolves_and_passes_label_smoothing() -> None:
    from prefenv.app.spec import TrainSpec

    spec = TrainSpec(env="prefenv/Reacher-v0", label_smoothing=0.05)
    assert spec.loop_config().reward_train.label_smoothing == 0.05
    unset = TrainSpec(env="prefenv/Reacher-v0").with_preset()
    assert unset.label_smoothing == 0.0  # no presets entry sets it: the plain loss
    assert unset.loop_config().reward_train.label_smoothing == 0.0
    with pytest.raises(ValueError, match="--label-smoothing must be in"):
        TrainSpec(label_smoothing=1.5)
