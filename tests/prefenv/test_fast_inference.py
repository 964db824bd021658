"""The numpy per-step path must equal the torch path and follow every weight update."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prefenv.reward_models import MLPRewardModel, RewardEnsemble


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(8, 5)).astype(np.float32),
        rng.normal(size=(8, 2)).astype(np.float32),
        rng.normal(size=(8, 5)).astype(np.float32),
    )


def _torch_only(model):
    model.__dict__["_numpy_cache"] = False  # disable the fast path for the reference value
    return model


@pytest.mark.parametrize("activation", ["leaky_relu", "relu", "tanh"])
@pytest.mark.parametrize("output", ["tanh", "sigmoid", None])
def test_numpy_path_matches_torch(activation, output):
    torch.manual_seed(0)
    kw = dict(hidden_sizes=(16, 16), activation=activation, output_activation=output)
    members = [MLPRewardModel(5, 2, use_next_obs=True, **kw) for _ in range(3)]
    fast, slow = RewardEnsemble(members), _torch_only(RewardEnsemble(members))
    obs, acts, nxt = _inputs()
    fast.fit_normalizer(obs, acts, nxt)
    np.testing.assert_allclose(
        fast.predict(obs, acts, nxt), slow.predict(obs, acts, nxt), atol=1e-5
    )
    np.testing.assert_allclose(
        fast.predict(obs, acts, nxt, shaping=-1.5),
        slow.predict(obs, acts, nxt, shaping=-1.5),
        atol=1e-5,
    )
    for a, b in zip(
        fast.predict_mean_std(obs, acts, nxt), slow.predict_mean_std(obs, acts, nxt), strict=True
    ):
        np.testing.assert_allclose(a, b, atol=1e-5)
    single = MLPRewardModel(5, 2, **kw)
    expected = _torch_only(MLPRewardModel(5, 2, **kw))
    expected.load_state_dict(single.state_dict())
    np.testing.assert_allclose(
        single.predict(obs, acts, nxt), expected.predict(obs, acts, nxt), atol=1e-5
    )


def test_snapshot_follows_in_place_updates():
    torch.manual_seed(0)
    model = MLPRewardModel(5, 2, hidden_sizes=(16,))
    obs, acts, nxt = _inputs()
    before = model.predict(obs, acts, nxt)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    loss = model(torch.from_numpy(obs), torch.from_numpy(acts), torch.from_numpy(nxt)).sum()
    loss.backward()
    optimizer.step()  # in-place update: the cached numpy weights must be refreshed
    after = model.predict(obs, acts, nxt)
    assert not np.allclose(before, after)
    with torch.no_grad():
        expected = model(torch.from_numpy(obs), torch.from_numpy(acts), torch.from_numpy(nxt))
    np.testing.assert_allclose(after, expected.numpy(), atol=1e-5)
    other = MLPRewardModel(5, 2, hidden_sizes=(16,))
    model.load_state_dict(other.state_dict())
    np.testing.assert_allclose(
        model.predict(obs, acts, nxt), _torch_only(other).predict(obs, acts, nxt), atol=1e-5
    )


def test_fast_path_still_validates_shapes_and_finiteness():
    model = MLPRewardModel(5, 2, hidden_sizes=(8,))
    obs, acts, nxt = _inputs()
    with pytest.raises(ValueError, match=r"expects obs of shape \(5,\), got \(4,\)"):
        model.predict(obs[:, :4], acts, nxt)
    with torch.no_grad():
        model.layers[0].weight.fill_(float("nan"))
    with pytest.raises(Exception, match="NaN/inf"):
        model.predict(obs, acts, nxt)
