"""The numpy predictor must equal the torch one, and every predictor is a frozen snapshot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prefenv.predictors import RewardModelError
from prefenv.reward_models import MLPRewardModel, RewardEnsemble, as_reward_model
from prefenv.step_predictors import NumpyMLPPredictor, TorchPredictor


def _inputs(n: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n, 5)).astype(np.float32),
        rng.normal(size=(n, 2)).astype(np.float32),
        rng.normal(size=(n, 5)).astype(np.float32),
    )


def _torch_reference(model: torch.nn.Module, ensemble: bool) -> TorchPredictor:
    """The same model through the torch fallback (the validated forward / member_rewards)."""
    return TorchPredictor(
        model.member_rewards if ensemble else model,
        obs_dim=5,
        act_dim=2,
        members=len(model) if ensemble else 1,
        ensemble=ensemble,
        device=torch.device("cpu"),
    )


@pytest.mark.parametrize("activation", ["leaky_relu", "relu", "tanh"])
@pytest.mark.parametrize("output", ["tanh", "sigmoid", None])
def test_numpy_predictor_matches_torch(activation, output):
    torch.manual_seed(0)
    kw = dict(hidden_sizes=(16, 16), activation=activation, output_activation=output)
    ensemble = RewardEnsemble([MLPRewardModel(5, 2, use_next_obs=True, **kw) for _ in range(3)])
    obs, acts, nxt = _inputs()
    ensemble.fit_normalizer(obs, acts, nxt)
    fast = ensemble.predictor()
    assert isinstance(fast, NumpyMLPPredictor) and fast.ensemble
    mean, std = fast.predict(obs, acts, nxt)
    ref_mean, ref_std = _torch_reference(ensemble, ensemble=True).predict(obs, acts, nxt)
    assert mean.dtype == std.dtype == np.float32 and mean.shape == std.shape == (8,)
    np.testing.assert_allclose(mean, ref_mean, atol=1e-5)
    np.testing.assert_allclose(std, ref_std, atol=1e-5)
    single = MLPRewardModel(5, 2, **kw)
    prediction = single.predictor().predict(obs, acts, nxt)
    assert isinstance(single.predictor(), NumpyMLPPredictor) and prediction.std is None
    expected = _torch_reference(single, ensemble=False).predict(obs, acts, nxt)
    np.testing.assert_allclose(prediction.mean, expected.mean, atol=1e-5)
    assert expected.std is None


@pytest.mark.parametrize("rows", [8, 300])  # 8 x 256 x 256 runs on one BLAS thread; 300 does not
def test_numpy_predictor_matches_torch_with_separate_normalisers_and_wide_layers(rows):
    torch.manual_seed(1)
    members = [MLPRewardModel(5, 2, hidden_sizes=(256, 256)) for _ in range(2)]
    for k, member in enumerate(members):  # each member normalised on different data
        member.fit_normalizer(*(x * (k + 1) + k for x in _inputs(50, seed=k)))
    ensemble = RewardEnsemble(members)
    obs, acts, nxt = _inputs(rows)
    mean, std = ensemble.predictor().predict(obs, acts, nxt)
    ref_mean, ref_std = _torch_reference(ensemble, ensemble=True).predict(obs, acts, nxt)
    np.testing.assert_allclose(mean, ref_mean, atol=1e-5)
    np.testing.assert_allclose(std, ref_std, atol=1e-5)


def test_models_numpy_cannot_run_fall_back_to_torch():
    torch.manual_seed(0)
    obs, acts, nxt = _inputs()
    gelu = MLPRewardModel(5, 2, hidden_sizes=(8,), activation="gelu")
    assert isinstance(gelu.predictor(), TorchPredictor)
    mixed = RewardEnsemble([gelu, MLPRewardModel(5, 2, hidden_sizes=(8,))])
    predictor = mixed.predictor()
    assert isinstance(predictor, TorchPredictor) and predictor.ensemble
    with torch.no_grad():
        members = mixed.member_rewards(*(torch.from_numpy(x) for x in (obs, acts, nxt)))
    np.testing.assert_allclose(predictor.predict(obs, acts, nxt).mean, members.mean(0), atol=1e-6)

    class UserReward(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(12, 1)

        def forward(self, obs, acts, next_obs):
            return self.linear(torch.cat([obs, acts, next_obs], dim=-1))  # [N, 1] is accepted

    user = UserReward()
    user_predictor = as_reward_model(user, 5, 2).predictor()
    assert isinstance(user_predictor, TorchPredictor) and not user_predictor.ensemble
    with torch.no_grad():
        expected = user(*(torch.from_numpy(x) for x in (obs, acts, nxt)))[:, 0]
    np.testing.assert_allclose(user_predictor.predict(obs, acts, nxt).mean, expected, atol=1e-6)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_a_snapshot_ignores_later_training_until_a_new_one_is_taken(kind):
    torch.manual_seed(0)
    activation = "leaky_relu" if kind == "numpy" else "elu"
    model = MLPRewardModel(5, 2, hidden_sizes=(16,), activation=activation)
    obs, acts, nxt = _inputs()
    snapshot = model.predictor()
    before = snapshot.predict(obs, acts, nxt).mean
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.from_numpy(obs), torch.from_numpy(acts), torch.from_numpy(nxt)).sum().backward()
    optimizer.step()  # an in-place update of the live weights
    model.fit_normalizer(*_inputs(20, seed=3))  # and of the normaliser buffers
    np.testing.assert_array_equal(snapshot.predict(obs, acts, nxt).mean, before)
    fresh = model.predictor().predict(obs, acts, nxt).mean
    assert not np.allclose(fresh, before)
    with torch.no_grad():
        expected = model(torch.from_numpy(obs), torch.from_numpy(acts), torch.from_numpy(nxt))
    np.testing.assert_allclose(fresh, expected.numpy(), atol=1e-5)


def test_predictors_validate_shapes_and_finiteness():
    model = MLPRewardModel(5, 2, hidden_sizes=(8,))
    obs, acts, nxt = _inputs()
    for predictor in (model.predictor(), _torch_reference(model, ensemble=False)):
        with pytest.raises(ValueError, match=r"expects obs of shape \(5,\), got \(4,\)"):
            predictor.predict(obs[:, :4], acts, nxt)
    with torch.no_grad():
        model.layers[0].weight[0, 0] = float("nan")
    for predictor in (model.predictor(), _torch_reference(model, ensemble=False)):
        with pytest.raises(RewardModelError, match="NaN/inf for 8 of 8 inputs"):
            predictor.predict(obs, acts, nxt)
