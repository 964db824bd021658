"""ClippedAdam (flat-buffer Adam + global-norm clipping) equals the stock torch sequence."""

from __future__ import annotations

import copy

import torch
from torch import nn

from agents.ppo_kl.optim import ClippedAdam


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))


def test_matches_clip_grad_norm_plus_adam() -> None:
    ours_net, ref_net = _net(), _net()
    ref_net.load_state_dict(copy.deepcopy(ours_net.state_dict()))
    ours = ClippedAdam(list(ours_net.parameters()), lr=1e-2, eps=1e-5, max_grad_norm=0.1)
    assert ours.flat is not None
    ref = torch.optim.Adam(ref_net.parameters(), lr=1e-2, eps=1e-5)
    x = torch.randn(16, 3)
    for _ in range(5):
        ours.zero_grad()
        ours_net(x).square().sum().backward()
        ours.step()
        ref.zero_grad()
        ref_net(x).square().sum().backward()
        nn.utils.clip_grad_norm_(ref_net.parameters(), 0.1)
        ref.step()
    for a, b in zip(ours_net.parameters(), ref_net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_mixed_dtypes_fall_back_to_per_tensor_path() -> None:
    params = [nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2, dtype=torch.float64))]
    opt = ClippedAdam(params, lr=0.1, eps=1e-5, max_grad_norm=1.0)
    assert opt.flat is None
    (params[0].sum() + params[1].sum()).backward()
    opt.step()
    assert (params[0] < 1).all() and (params[1] < 1).all()
