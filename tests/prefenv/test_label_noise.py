"""RIME's noisy-label filter: the threshold rule by hand, and planted flips caught in training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prefenv.label_noise import LabelNoiseFilter, RobustLabels, pair_losses
from prefenv.records import Comparison, Segment, Trajectory
from prefenv.reward_models import MLPRewardModel, RewardEnsemble
from prefenv.reward_training import (
    RewardTrainConfig,
    RewardTrainMetrics,
    bradley_terry_loss,
    evaluate_reward_model,
    train_reward_model,
)
from prefenv.sampling import sample_segment_pairs

TRUE_WEIGHTS = np.array([1.0, -0.5])
"""The hidden reward of the synthetic task: ``r_t = obs_t @ TRUE_WEIGHTS``."""


# ---------------------------------------------------------------- the rule, by hand


def test_first_split_trusts_all_but_the_flips_then_the_bound_tightens() -> None:
    noise_filter = LabelNoiseFilter(RobustLabels())
    # before any trusted pair: rho = 0, var = 1 -> tau_lower = -ln(1e-8) + 0 + min(3 * 1, 3)
    assert noise_filter.tau_lower == pytest.approx(-math.log(1e-8) + 3.0)
    split = noise_filter.split(np.array([0.1, 0.5, 7.0, 30.0]))
    assert split.tau_upper == pytest.approx(-math.log(1e-3))  # 6.91
    np.testing.assert_array_equal(split.flipped, [False, False, True, True])
    np.testing.assert_array_equal(split.trusted, [True, True, False, False])  # flips win
    np.testing.assert_array_equal(split.dropped, [False, False, False, False])
    # statistics of the trusted losses {0.1, 0.5}: rho = 0.1 * 0.5, pooled var = 0.04
    assert noise_filter.max == pytest.approx(0.05)
    assert noise_filter.var == pytest.approx(0.04)
    beta = 3.0 - 2.0 * 1 / 60
    expected = -math.log(0.05 + 1e-8) + 0.5 * 0.05 + beta * 0.04
    assert noise_filter.tau_lower == pytest.approx(expected)  # ~3.14
    split = noise_filter.split(np.array([1.0, 3.0, 3.5, 8.0]))
    np.testing.assert_array_equal(split.trusted, [True, True, False, False])
    np.testing.assert_array_equal(split.dropped, [False, False, True, False])
    np.testing.assert_array_equal(split.flipped, [False, False, False, True])


def test_beta_decays_linearly_to_its_floor() -> None:
    noise_filter = LabelNoiseFilter(RobustLabels(beta_max=3.0, beta_min=1.0, decay_epochs=4))
    betas = []
    for _ in range(6):
        betas.append(noise_filter.beta)
        noise_filter.split(np.array([0.2, 0.3]))
    assert betas == pytest.approx([3.0, 2.5, 2.0, 1.5, 1.0, 1.0])


def test_uncertainty_term_is_capped() -> None:
    noise_filter = LabelNoiseFilter(RobustLabels(max_uncertainty=0.5))
    noise_filter.split(np.array([0.0, 10.0, 5.0]))  # tau_upper 6.9: 10 flipped, {0, 5} trusted
    assert noise_filter.var == pytest.approx(6.25)
    rho = noise_filter.max
    assert noise_filter.tau_lower == pytest.approx(-math.log(rho + 1e-8) + 0.5 * rho + 0.5)


def test_nothing_under_the_bound_trusts_every_unflipped_pair() -> None:
    noise_filter = LabelNoiseFilter(RobustLabels())
    noise_filter.max, noise_filter.var = 2.0, 0.0  # tau_lower = -ln 2 + 1 ~ 0.31
    split = noise_filter.split(np.array([1.0, 2.0, 9.0]))
    np.testing.assert_array_equal(split.trusted, [True, True, False])
    np.testing.assert_array_equal(split.flipped, [False, False, True])
    assert noise_filter.max == 2.0  # statistics untouched


def test_config_and_inputs_are_validated() -> None:
    with pytest.raises(ValueError, match="beta_min"):
        RobustLabels(beta_min=4.0, beta_max=3.0)
    with pytest.raises(ValueError, match="flip_tau"):
        RobustLabels(flip_tau=0.7)
    with pytest.raises(ValueError, match="decay_epochs"):
        RobustLabels(decay_epochs=0)
    with pytest.raises(ValueError, match="finite losses"):
        LabelNoiseFilter(RobustLabels()).split(np.array([0.1, math.nan]))


def test_pair_losses_are_the_bradley_terry_loss_per_pair() -> None:
    gen = torch.Generator().manual_seed(0)
    r0, r1 = torch.randn(32, generator=gen), torch.randn(32, generator=gen)
    labels = torch.randint(0, 3, (32,), generator=gen).float() / 2
    losses = pair_losses(r0, r1, labels)
    assert losses.shape == (32,)
    torch.testing.assert_close(losses.mean(), bradley_terry_loss(r0, r1, labels))


# ---------------------------------------------------------------- planted flips in training


def _comparisons(seed: int, n: int) -> list[Comparison]:
    """Oracle comparisons of 5-step segments of random 2-D states under the linear reward."""
    rng = np.random.default_rng(seed)
    trajectories = []
    for _ in range(40):
        obs = rng.normal(size=(51, 2))
        trajectories.append(Trajectory(obs, rng.normal(size=(50, 1)), obs[:-1] @ TRUE_WEIGHTS))
    pairs = sample_segment_pairs(trajectories, n, 5, rng=rng)
    return [Comparison(a, b, float(b.true_return > a.true_return)) for a, b in pairs]


def _flip(comparisons: list[Comparison], index: np.ndarray) -> list[Comparison]:
    noisy = list(comparisons)
    for i in index:
        c = comparisons[i]
        noisy[i] = Comparison(c.segment0, c.segment1, 1.0 - c.label)
    return noisy


def _fit(
    comparisons: list[Comparison], robust: RobustLabels | None
) -> tuple[MLPRewardModel, RewardTrainMetrics]:
    torch.manual_seed(0)
    # linear output: a tanh-bounded step reward cannot order sums of unbounded true rewards
    model = MLPRewardModel(2, 1, hidden_sizes=(32, 32), output_activation=None)
    config = RewardTrainConfig(
        lr=3e-3, batch_size=64, max_epochs=60, patience=60, val_fraction=0.0, robust=robust
    )
    metrics = train_reward_model(model, comparisons, config)
    return model, metrics


def _losses(model: MLPRewardModel, comparisons: list[Comparison]) -> np.ndarray:
    """``[N]`` per-pair losses of ``model`` against the comparisons' labels."""
    with torch.no_grad():
        return pair_losses(
            model.segment_returns([c.segment0 for c in comparisons]),
            model.segment_returns([c.segment1 for c in comparisons]),
            torch.tensor([c.label for c in comparisons]),
        ).numpy()


def test_filter_catches_planted_flips_and_beats_training_on_them(one_thread) -> None:
    """20% of 400 labels flipped: the filter flags most of them, and accuracy on the truth rises.

    Measured (seeds 0-2 of this setup): without the filter 0.84-0.85 held-out accuracy against
    the true labels, with it 0.94-0.96; the final model's losses against the final bound flag
    the planted flips with precision 0.91-0.95 and recall 0.84-0.95.
    """
    clean, held_out = _comparisons(0, 400), _comparisons(100, 500)
    planted = np.random.default_rng(7).choice(len(clean), 80, replace=False)
    noisy = _flip(clean, planted)

    plain, _ = _fit(noisy, None)
    robust, metrics = _fit(noisy, RobustLabels())
    _, accuracy_plain = evaluate_reward_model(plain, held_out)
    _, accuracy_robust = evaluate_reward_model(robust, held_out)
    assert accuracy_robust >= accuracy_plain + 0.05, (accuracy_plain, accuracy_robust)
    assert accuracy_robust >= 0.9

    member = metrics.members[0]
    assert member.flipped + member.dropped >= 40 and metrics.flipped == member.flipped
    losses = _losses(robust, noisy)
    flagged = losses >= member.tau_lower
    caught = np.isin(np.flatnonzero(flagged), planted).sum()
    precision, recall = caught / flagged.sum(), caught / len(planted)
    assert precision >= 0.8 and recall >= 0.75, (precision, recall)


def test_robust_training_reports_nothing_when_off_and_trains_ensembles(one_thread) -> None:
    comparisons = _comparisons(1, 120)
    _, metrics = _fit(comparisons, None)
    assert (metrics.flipped, metrics.dropped) == (0.0, 0.0)
    assert math.isnan(metrics.members[0].tau_lower)
    torch.manual_seed(0)
    ensemble = RewardEnsemble([MLPRewardModel(2, 1, hidden_sizes=(16,)) for _ in range(2)])
    config = RewardTrainConfig(lr=3e-3, max_epochs=5, robust=RobustLabels())
    metrics = train_reward_model(ensemble, comparisons, config)
    assert len(metrics.members) == 2
    assert all(math.isfinite(m.tau_lower) for m in metrics.members)
    assert metrics.flipped == np.mean([m.flipped for m in metrics.members])


def test_text_like_pair_sources_filter_too() -> None:
    """The filter needs only segment_returns: a featureless context-scored source works."""

    class Scores(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scores = torch.nn.Parameter(torch.zeros(6))

        def segment_returns(self, segments) -> torch.Tensor:
            return self.scores[torch.tensor([s.context["id"] for s in segments])]

    segments = [
        Segment(np.zeros((2, 0)), np.zeros((1, 0)), np.array([float(i)]), context={"id": i})
        for i in range(6)
    ]
    rng = np.random.default_rng(0)
    pairs = [tuple(rng.choice(6, 2, replace=False)) for _ in range(200)]
    comparisons = [Comparison(segments[a], segments[b], float(b > a)) for a, b in pairs]
    comparisons = _flip(comparisons, np.arange(0, 200, 10))  # 10% wrong
    model = Scores()
    config = RewardTrainConfig(lr=0.1, batch_size=32, max_epochs=40, robust=RobustLabels())
    train_reward_model(model, comparisons, config)
    assert (model.scores.diff() > 0).all(), model.scores


# ---------------------------------------------------------------- the noise-aware likelihood


def test_label_noise_likelihood_by_hand() -> None:
    """``sigmoid`` becomes ``e + (1 - 2e) sigmoid``: a sure-wrong label costs at most ``-ln e``."""
    t = torch.tensor
    logits = t([-3.0, 0.0, 2.0])
    labels = t([1.0, 1.0, 0.0])
    e = 0.2
    expected = -np.mean([
        math.log(e + (1 - 2 * e) / (1 + math.exp(3.0))),
        math.log(e + (1 - 2 * e) * 0.5),
        math.log(e + (1 - 2 * e) / (1 + math.exp(2.0))),
    ])  # fmt: skip
    zeros = torch.zeros(3)
    assert bradley_terry_loss(zeros, logits, labels, label_noise=e).item() == pytest.approx(
        expected, rel=1e-6
    )
    assert bradley_terry_loss(zeros, logits, labels, label_noise=0.0).item() == pytest.approx(
        bradley_terry_loss(zeros, logits, labels).item()
    )
    # the model is sure segment 1 wins by 60; the label says segment 0
    sure = t([60.0], requires_grad=True)
    plain = bradley_terry_loss(t([0.0]), sure, t([0.0]))
    noisy = bradley_terry_loss(t([0.0]), sure, t([0.0]), label_noise=0.1)
    assert plain.item() == pytest.approx(60.0, rel=1e-3)
    assert noisy.item() == pytest.approx(-math.log(0.1), rel=1e-6)
    (grad,) = torch.autograd.grad(noisy, sure)
    assert abs(grad.item()) < 1e-12  # no pull towards the wrong label any more
    (grad,) = torch.autograd.grad(bradley_terry_loss(t([0.0]), sure, t([0.0])), sure)
    assert grad.item() == pytest.approx(1.0)  # the plain loss keeps pulling at full strength
    # a right label the model is sure of costs -ln(1 - e), not 0
    right = bradley_terry_loss(t([0.0]), t([60.0]), t([1.0]), label_noise=0.1)
    assert right.item() == pytest.approx(-math.log(0.9), rel=1e-6)
    with pytest.raises(ValueError, match="label_noise must be in"):
        RewardTrainConfig(label_noise=0.5)


def test_label_noise_beats_plain_training_on_planted_flips(one_thread) -> None:
    """20% of 400 labels flipped: assuming that rate orders held-out pairs better than ignoring it.

    Measured (planting seeds 7, 8, 9 of this setup, held-out accuracy against the true labels):
    plain 0.850, 0.836, 0.820; ``label_noise=0.2`` 0.880, 0.950, 0.914; ``0.1`` 0.878, 0.910,
    0.884. (RIME's filter reaches 0.944 on all three here; on HalfCheetah's stored labels it did
    not, see benchmarks/RESULTS.md.)
    """
    clean, held_out = _comparisons(0, 400), _comparisons(100, 500)

    def fit(noisy: list[Comparison], label_noise: float) -> float:
        torch.manual_seed(0)
        model = MLPRewardModel(2, 1, hidden_sizes=(32, 32), output_activation=None)
        config = RewardTrainConfig(
            lr=3e-3, batch_size=64, max_epochs=60, patience=60, val_fraction=0.0,
            label_noise=label_noise,
        )  # fmt: skip
        train_reward_model(model, noisy, config)
        return evaluate_reward_model(model, held_out)[1]

    plain, matched, low = [], [], []
    for seed in (7, 8, 9):
        noisy = _flip(clean, np.random.default_rng(seed).choice(len(clean), 80, replace=False))
        plain.append(fit(noisy, 0.0))
        matched.append(fit(noisy, 0.2))
        low.append(fit(noisy, 0.1))
    assert all(m >= p + 0.02 for m, p in zip(matched, plain, strict=True)), (plain, matched)
    assert np.mean(matched) >= np.mean(plain) + 0.05, (plain, matched)
    assert np.mean(low) >= np.mean(plain) + 0.03, (plain, low)


def test_train_spec_passes_label_noise_to_every_refit() -> None:
    from prefenv.app.spec import TrainSpec

    assert TrainSpec(label_noise=0.1).loop_config().reward_train.label_noise == 0.1
    assert TrainSpec().loop_config().reward_train.label_noise == 0.0
