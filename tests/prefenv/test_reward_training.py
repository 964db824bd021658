"""Bradley-Terry loss values, the trainer's contract, and learning a hidden reward from labels."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prefenv.predictors import RewardModelError
from prefenv.records import Comparison, Segment, Trajectory
from prefenv.reward_models import MLPRewardModel, RewardEnsemble, as_reward_model
from prefenv.reward_training import (
    RewardTrainConfig,
    RewardTrainMetrics,
    bradley_terry_loss,
    evaluate_reward_model,
    split_comparisons,
    train_reward_model,
)
from prefenv.sampling import sample_segment_pairs
from prefenv.spaces import FlatSpec
from prefenv.teachers import make_teacher

SEGMENT_LENGTH = 50


# ---------------------------------------------------------------- data helpers (test-local)


def _collect(seed: int, episodes: int) -> list[Trajectory]:
    """Random-policy Pendulum-v1 episodes; the env's reward is the hidden true reward."""
    env = gym.make("Pendulum-v1")
    spec = FlatSpec(env.observation_space, env.action_space)
    env.action_space.seed(seed)
    trajectories = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed * 1000 + episode)
        observations, actions, rewards = [obs], [], []
        done = False
        while not done:
            action = env.action_space.sample()
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            done = terminated or truncated
        trajectories.append(
            Trajectory(
                obs=spec.obs(np.stack(observations), len(observations)),
                acts=spec.acts(np.stack(actions), len(actions)),
                true_rewards=np.asarray(rewards),
                terminated=terminated,
            )
        )
    env.close()
    return trajectories


def _segments(trajectories: list[Trajectory], n: int, rng: np.random.Generator) -> list[Segment]:
    segments = []
    for i in rng.integers(0, len(trajectories), size=n):
        trajectory = trajectories[i]
        start = int(rng.integers(0, len(trajectory) - SEGMENT_LENGTH + 1))
        segments.append(trajectory.segment(start, SEGMENT_LENGTH))
    return segments


def _rational_label(segment0: Segment, segment1: Segment) -> float:
    """Perfectly rational teacher: 1[R1 > R0], 0.5 on exact ties."""
    r0, r1 = segment0.true_return, segment1.true_return
    return 0.5 if r0 == r1 else float(r1 > r0)


def _pairs(trajectories: list[Trajectory], n: int, seed: int) -> list[Comparison]:
    rng = np.random.default_rng(seed)
    segments = _segments(trajectories, 2 * n, rng)
    return [
        Comparison(s0, s1, _rational_label(s0, s1), teacher="rational")
        for s0, s1 in zip(segments[::2], segments[1::2], strict=True)
    ]


@pytest.fixture(scope="module")
def pendulum() -> tuple[list[Comparison], list[Comparison]]:
    """~500 training pairs and 300 held-out pairs from fresh trajectories."""
    train = _pairs(_collect(seed=1, episodes=30), 500, seed=0)
    held_out = _pairs(_collect(seed=2, episodes=15), 300, seed=1)
    return train, held_out


def _small_mlp(seed: int = 0, **kwargs: object) -> MLPRewardModel:
    torch.manual_seed(seed)
    return MLPRewardModel(3, 1, hidden_sizes=(64, 64), **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the loss


def test_bradley_terry_loss_matches_hand_computed_values() -> None:
    t = torch.tensor
    # hard labels: -log sigmoid(1) = log(1 + e^-1)
    hard = bradley_terry_loss(t([0.0, 1.0]), t([1.0, 0.0]), t([1.0, 0.0]))
    assert hard.item() == pytest.approx(math.log1p(math.exp(-1.0)), rel=1e-6)
    # tie (p = 0.5) at R1 - R0 = 2: 0.5 * (log(1 + e^-2) + log(1 + e^2))
    tie = bradley_terry_loss(t([0.0]), t([2.0]), t([0.5]))
    expected_tie = 0.5 * (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(2.0)))
    assert tie.item() == pytest.approx(expected_tie, rel=1e-6)
    # margin 0.5: -log sigmoid(1 - 0.5)
    margin = bradley_terry_loss(t([0.0]), t([1.0]), t([1.0]), margin=0.5)
    assert margin.item() == pytest.approx(math.log1p(math.exp(-0.5)), rel=1e-6)
    # centring c = 0.01 adds c * (R0 + R1)^2 = 0.01 * 9
    centred = bradley_terry_loss(t([1.0]), t([2.0]), t([1.0]), centering_coef=0.01)
    assert centred.item() == pytest.approx(math.log1p(math.exp(-1.0)) + 0.09, rel=1e-6)


def test_bradley_terry_loss_equals_bce_with_logits_and_is_stable() -> None:
    gen = torch.Generator().manual_seed(0)
    r0, r1 = torch.randn(64, generator=gen), torch.randn(64, generator=gen)
    labels = torch.randint(0, 3, (64,), generator=gen).float() / 2
    expected = F.binary_cross_entropy_with_logits(r1 - r0, labels)
    torch.testing.assert_close(bradley_terry_loss(r0, r1, labels), expected)
    huge = bradley_terry_loss(torch.tensor([0.0]), torch.tensor([1000.0]), torch.tensor([0.0]))
    assert huge.item() == pytest.approx(1000.0)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="lr must be > 0"):
        RewardTrainConfig(lr=0.0)
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        RewardTrainConfig(val_fraction=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        RewardTrainConfig(batch_size=0)


# ---------------------------------------------------------------- the trainer's contract


def test_no_labelled_comparisons_is_an_error(pendulum) -> None:
    skipped = [Comparison(c.segment0, c.segment1, None) for c in pendulum[0][:5]]
    with pytest.raises(ValueError, match="no labelled comparisons"):
        train_reward_model(_small_mlp(), skipped)
    with pytest.raises(ValueError, match="no labelled comparisons"):
        evaluate_reward_model(_small_mlp(), skipped)


def test_few_steps_change_every_parameter_and_metrics_are_finite(pendulum) -> None:
    train = pendulum[0][:100]
    skipped = [Comparison(c.segment0, c.segment1, None) for c in pendulum[0][100:110]]
    model = _small_mlp()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    config = RewardTrainConfig(lr=1e-3, batch_size=32, max_epochs=2, val_fraction=0.2)
    metrics = train_reward_model(model, train + skipped, config)
    assert isinstance(metrics, RewardTrainMetrics)
    for name, p in model.named_parameters():
        assert not torch.equal(before[name], p), f"{name} did not change"
    assert (metrics.n_train, metrics.n_val) == (80, 20)  # skipped ones ignored
    assert metrics.epochs == 2 and len(metrics.members) == 1 and metrics.seconds > 0
    for value in (
        metrics.train_loss,
        metrics.val_loss,
        metrics.train_accuracy,
        metrics.val_accuracy,
    ):
        assert math.isfinite(value)
    assert float(model.input_std[0]) != 1.0  # normaliser fitted on the training segments


def test_training_is_deterministic_given_the_seed(pendulum) -> None:
    config = RewardTrainConfig(lr=1e-3, batch_size=32, max_epochs=3)
    weights = []
    for _ in range(2):
        model = _small_mlp()
        train_reward_model(model, pendulum[0][:100], config)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=0)


def test_validation_set_and_early_stopping_restore_best_weights(pendulum) -> None:
    train, held_out = pendulum[0][:100], pendulum[1][:50]
    model = _small_mlp()
    config = RewardTrainConfig(lr=3e-3, batch_size=16, max_epochs=30, patience=2)
    metrics = train_reward_model(model, train, config, val_comparisons=held_out)
    assert (metrics.n_train, metrics.n_val) == (100, 50)
    member = metrics.members[0]
    assert member.best_epoch <= member.epochs <= 30
    assert member.epochs < 30 or member.best_epoch == 30
    loss, accuracy = evaluate_reward_model(model, held_out)
    assert loss == pytest.approx(metrics.val_loss, rel=1e-5)
    assert accuracy == pytest.approx(metrics.val_accuracy)


def test_ragged_segments_train(pendulum) -> None:
    rng = np.random.default_rng(0)
    comparisons = []
    for c in pendulum[0][:60]:
        n0, n1 = rng.integers(10, SEGMENT_LENGTH + 1, size=2)
        s0, s1 = c.segment0, c.segment1
        s0 = Segment(s0.obs[: n0 + 1], s0.acts[:n0], s0.true_rewards[:n0])
        s1 = Segment(s1.obs[: n1 + 1], s1.acts[:n1], s1.true_rewards[:n1])
        comparisons.append(Comparison(s0, s1, _rational_label(s0, s1)))
    model = _small_mlp()
    config = RewardTrainConfig(lr=1e-3, batch_size=16, max_epochs=3, val_fraction=0.0)
    metrics = train_reward_model(model, comparisons, config)
    assert math.isfinite(metrics.train_loss) and math.isnan(metrics.val_loss)
    # the trainer's padded returns agree with segment_returns
    returns0 = model.segment_returns([c.segment0 for c in comparisons])
    returns1 = model.segment_returns([c.segment1 for c in comparisons])
    labels = torch.tensor([c.label for c in comparisons])
    expected = bradley_terry_loss(returns0, returns1, labels).item()
    assert metrics.train_loss == pytest.approx(expected, rel=1e-4)


def test_user_module_trains_through_as_reward_model(pendulum) -> None:
    class UserReward(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1))

        def forward(self, obs: torch.Tensor, acts: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
            return self.net(torch.cat([obs, acts], dim=-1)).squeeze(-1)

    torch.manual_seed(0)
    user = UserReward()
    model = as_reward_model(user, obs_dim=3, act_dim=1)
    train, held_out = pendulum
    loss_before, _ = evaluate_reward_model(model, held_out)
    config = RewardTrainConfig(lr=3e-3, batch_size=64, max_epochs=20)
    train_reward_model(model, train, config)
    loss_after, accuracy = evaluate_reward_model(user_model := model, held_out)
    assert user_model.module is user  # trained in place
    assert loss_after < 0.5 * loss_before
    assert accuracy > 0.85


# ---------------------------------------------------------------- learning


class _ContextScores(nn.Module):
    """A pair source that is no per-step model: one learnt score per ``context["id"]``."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.scores = nn.Parameter(torch.zeros(n))

    def segment_returns(self, segments) -> torch.Tensor:
        return self.scores[torch.tensor([s.context["id"] for s in segments])]


class _ContextEnsemble(nn.Module):
    def __init__(self, members: list[_ContextScores]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def member_segment_returns(self, segments) -> torch.Tensor:
        return torch.stack([m.segment_returns(segments) for m in self.members])

    def segment_returns(self, segments) -> torch.Tensor:
        return self.member_segment_returns(segments).mean(0)


def _ranked_comparisons(n_items: int, n_pairs: int, seed: int) -> list[Comparison]:
    """Oracle comparisons of featureless segments whose true value is their ``context["id"]``."""
    rng = np.random.default_rng(seed)
    segments = [
        Segment(np.zeros((2, 0)), np.zeros((1, 0)), np.array([float(i)]), context={"id": i})
        for i in range(n_items)
    ]
    pairs = [tuple(rng.choice(n_items, 2, replace=False)) for _ in range(n_pairs)]
    return [Comparison(segments[a], segments[b], float(b > a)) for a, b in pairs]


def test_any_pair_source_trains_through_the_one_trainer() -> None:
    """The trainer only needs segment_returns: a model scoring contexts learns their order."""
    comparisons = _ranked_comparisons(8, 300, seed=0)
    model = _ContextScores(8)
    config = RewardTrainConfig(lr=0.1, batch_size=32, max_epochs=30, val_fraction=0.2)
    metrics = train_reward_model(model, comparisons, config)
    assert metrics.val_accuracy == 1.0 and metrics.n_val == 60
    assert (model.scores.diff() > 0).all(), model.scores
    # An ensemble of pair sources trains member by member, on bootstrap resamples.
    ensemble = _ContextEnsemble([_ContextScores(8) for _ in range(3)])
    metrics = train_reward_model(ensemble, comparisons, config)
    assert len(metrics.members) == 3
    assert not torch.equal(ensemble.members[0].scores, ensemble.members[1].scores)
    assert all((m.scores.diff() > 0).all() for m in ensemble.members)
    with pytest.raises(TypeError, match="PairSource"):
        train_reward_model(nn.Linear(2, 1), comparisons)


def test_nan_returns_raise_the_reward_model_error() -> None:
    model = _ContextScores(8)
    with torch.no_grad():
        model.scores[3] = float("nan")
    with pytest.raises(RewardModelError, match="NaN"):
        train_reward_model(model, _ranked_comparisons(8, 40, seed=1))


def test_mlp_learns_pendulum_reward_from_rational_labels(pendulum) -> None:
    train, held_out = pendulum
    assert len(held_out) >= 200
    model = _small_mlp()
    # all 500 labels for training: early stopping on a 50-pair split mostly picks noise here
    config = RewardTrainConfig(lr=1e-3, batch_size=64, max_epochs=60, val_fraction=0.0)
    metrics = train_reward_model(model, train, config)
    _, accuracy = evaluate_reward_model(model, held_out)
    assert accuracy >= 0.95, (accuracy, metrics)


def test_ensemble_is_more_uncertain_out_of_distribution(pendulum) -> None:
    train, held_out = pendulum
    torch.manual_seed(0)
    # no tanh output here: saturated members would agree on far-away inputs and hide the spread
    ensemble = RewardEnsemble(
        [MLPRewardModel(3, 1, hidden_sizes=(64, 64), output_activation=None) for _ in range(3)]
    )
    config = RewardTrainConfig(lr=1e-3, batch_size=64, max_epochs=40, patience=5)
    metrics = train_reward_model(ensemble, train, config)
    assert len(metrics.members) == 3
    segments = [c.segment0 for c in held_out]
    obs = np.concatenate([s.obs[:-1] for s in segments])
    acts = np.concatenate([s.acts for s in segments])
    next_obs = np.concatenate([s.next_obs for s in segments])
    predictor = ensemble.predictor()
    std_in = predictor.predict(obs, acts, next_obs).std
    std_out = predictor.predict(10 * obs, acts, 10 * next_obs).std
    assert std_in is not None and std_out is not None
    assert std_out.mean() > 3 * std_in.mean(), (std_in.mean(), std_out.mean())
    # bootstrap + independent init: members disagree
    members = ensemble.member_rewards(*(torch.from_numpy(x) for x in (obs, acts, next_obs)))
    assert float((members[0] - members[1]).abs().mean().detach()) > 1e-3


def _falling_episodes(seed: int, episodes: int) -> list[Trajectory]:
    """Episodes that end in a fall after 10-120 steps; each live step pays 1 + 0.2 * obs[0]."""
    rng = np.random.default_rng(seed)
    trajectories = []
    for _ in range(episodes):
        steps = int(rng.integers(10, 120))
        obs = rng.normal(size=(steps + 1, 3))
        rewards = 1.0 + 0.2 * obs[:-1, 0]
        trajectories.append(Trajectory(obs, rng.normal(size=(steps, 1)), rewards, terminated=True))
    return trajectories


def test_windows_cut_at_the_fall_teach_what_staying_alive_is_worth() -> None:
    """Between two full windows a survival bonus cancels out; windows that end at the fall carry it."""
    teacher = make_teacher("oracle", np.random.default_rng(0))
    pairs = sample_segment_pairs(
        _falling_episodes(0, 80), 600, 30, rng=np.random.default_rng(1), cut_at_termination=True
    )
    model = _small_mlp()
    config = RewardTrainConfig(lr=1e-3, batch_size=64, max_epochs=40, val_fraction=0.0)
    train_reward_model(model, teacher.label(pairs), config)
    held_out = _falling_episodes(2, 40)
    live = np.concatenate([t.obs[:-1] for t in held_out])
    acts = np.concatenate([t.acts for t in held_out])
    nxt = np.concatenate([t.obs[1:] for t in held_out])
    per_step = model.predictor().predict(live, acts, nxt).mean
    # Every live step must be worth more than the absorbing state after a fall (0): the learned
    # reward is positive on at least 95% of held-out live steps, and a 30-step window beats the
    # 5-step window that ends in a fall with near certainty.
    assert (per_step > 0).mean() >= 0.95, np.quantile(per_step, [0.05, 0.5])
    full = model.segment_returns([t.segment(0, 30) for t in held_out if len(t) >= 30])
    tail = model.segment_returns([t.segment(len(t) - 5, 5) for t in held_out if len(t) >= 30])
    assert torch.sigmoid(full - tail).min().item() > 0.95


def test_a_hold_out_under_min_val_pairs_is_not_taken():
    """Early stopping on two held-out pairs halts on their luck: below ``min_val`` none are held."""
    rng = np.random.default_rng(0)

    def comparisons(n: int) -> list[Comparison]:
        def segment() -> Segment:
            return Segment(rng.normal(size=(4, 2)).astype(np.float32),
                           rng.normal(size=(3, 1)).astype(np.float32), np.zeros(3, np.float32))  # fmt: skip

        return [Comparison(segment(), segment(), 1.0) for _ in range(n)]

    config = RewardTrainConfig()  # val_fraction 0.1, min_val 10
    train, val = split_comparisons(comparisons(99), config, np.random.default_rng(0))
    assert (len(train), len(val)) == (99, 0)
    train, val = split_comparisons(comparisons(100), config, np.random.default_rng(0))
    assert (len(train), len(val)) == (90, 10)
    with pytest.raises(ValueError, match="min_val"):
        RewardTrainConfig(min_val=-1)
