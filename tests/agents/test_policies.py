"""agents.policies: the Policy protocol and MLPActorCritic heads against torch.distributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch.distributions import Categorical, Normal

from agents.policies import MLPActorCritic, Policy, preprocess_obs

BOX_OBS = spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)


def _obs(n: int = 5) -> torch.Tensor:
    return torch.randn(n, 3)


def test_is_a_policy() -> None:
    assert isinstance(MLPActorCritic(BOX_OBS, spaces.Discrete(2)), Policy)


def test_gaussian_log_prob_and_entropy_match_torch() -> None:
    torch.manual_seed(0)
    pi = MLPActorCritic(
        BOX_OBS, spaces.Box(-1, 1, shape=(2,)), hidden_sizes=(8,), log_std_init=-0.5
    )
    obs = _obs()
    actions, logp, values = pi.act(obs)
    assert actions.shape == (5, 2) and logp.shape == (5,) and values.shape == (5,)
    mean = pi.action_params(obs)
    dist = Normal(mean, pi.log_std.exp())
    lp, ent, v = pi.evaluate(obs, actions)
    torch.testing.assert_close(lp, dist.log_prob(actions).sum(-1))
    torch.testing.assert_close(ent, dist.entropy().sum(-1))
    torch.testing.assert_close(lp, logp)
    torch.testing.assert_close(v, values)
    torch.testing.assert_close(pi.log_prob(obs, actions), lp)
    torch.testing.assert_close(pi.value(obs), v)
    det, _, _ = pi.act(obs, deterministic=True)
    torch.testing.assert_close(det, mean.detach())


def test_categorical_matches_torch() -> None:
    pi = MLPActorCritic(BOX_OBS, spaces.Discrete(4), hidden_sizes=(8,))
    obs = _obs()
    actions, logp, _ = pi.act(obs)
    assert actions.dtype == torch.int64 and actions.shape == (5,)
    dist = Categorical(logits=pi.action_params(obs))
    lp, ent, _ = pi.evaluate(obs, actions)
    torch.testing.assert_close(lp, dist.log_prob(actions))
    torch.testing.assert_close(ent, dist.entropy())
    torch.testing.assert_close(logp, lp)


def test_multidiscrete_sums_independent_categoricals() -> None:
    pi = MLPActorCritic(BOX_OBS, spaces.MultiDiscrete([2, 3]), hidden_sizes=(8,))
    obs = _obs()
    actions, _, _ = pi.act(obs)
    assert actions.shape == (5, 2)
    assert (actions[:, 0] < 2).all() and (actions[:, 1] < 3).all()
    logits = pi.action_params(obs)
    d0, d1 = Categorical(logits=logits[:, :2]), Categorical(logits=logits[:, 2:])
    lp, ent, _ = pi.evaluate(obs, actions)
    torch.testing.assert_close(lp, d0.log_prob(actions[:, 0]) + d1.log_prob(actions[:, 1]))
    torch.testing.assert_close(ent, d0.entropy() + d1.entropy())


def test_flat_dict_observations_are_concatenated() -> None:
    space = spaces.Dict(
        {
            "pos": spaces.Box(-1, 1, shape=(2,)),
            "mode": spaces.Discrete(3),
            "mask": spaces.MultiBinary(2),
        }
    )
    obs = {
        "pos": torch.tensor([[0.5, -0.5]]),
        "mode": torch.tensor([2]),
        "mask": torch.tensor([[1.0, 0.0]]),
    }
    feats = preprocess_obs(obs, space)
    # keys in the space's order: mask, mode, pos (gymnasium sorts dict keys)
    assert list(space.spaces) == ["mask", "mode", "pos"]
    torch.testing.assert_close(feats, torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0, 0.5, -0.5]]))
    pi = MLPActorCritic(space, spaces.Discrete(2), hidden_sizes=(8,))
    actions, _, _ = pi.act(obs)
    assert actions.shape == (1,)


def test_nested_dict_is_rejected_with_the_fix() -> None:
    nested = spaces.Dict({"inner": spaces.Dict({"x": spaces.Box(-1, 1, shape=(2,))})})
    with pytest.raises(TypeError, match="FlattenObservation"):
        MLPActorCritic(nested, spaces.Discrete(2))


def test_unsupported_action_space_is_rejected() -> None:
    with pytest.raises(TypeError, match="action space"):
        MLPActorCritic(BOX_OBS, spaces.MultiBinary(3))


def test_ortho_init_gains() -> None:
    pi = MLPActorCritic(BOX_OBS, spaces.Discrete(2), hidden_sizes=(16,))
    # orthogonal with gain g: rows (fan_out <= fan_in) have norm g
    norms = pi.policy_head.weight.norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, 0.01))
    assert (pi.value_head.bias == 0).all()
