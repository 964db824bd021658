"""Reward models: shapes, normalisation, ensembles, adapters, errors and checkpoints."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces
from safetensors.torch import save_file
from torch import nn

from prefenv.records import Segment
from prefenv.reward_models import (
    CheckpointError,
    MLPRewardModel,
    RewardEnsemble,
    RewardModel,
    RewardModelError,
    RewardPredictor,
    as_reward_model,
    load_reward_model,
)

OBS_DIM, ACT_DIM = 3, 2


def _batch(rng: np.random.Generator, n: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    obs = rng.normal(size=(n, OBS_DIM)).astype(np.float32)
    acts = rng.normal(size=(n, ACT_DIM)).astype(np.float32)
    next_obs = rng.normal(size=(n, OBS_DIM)).astype(np.float32)
    return obs, acts, next_obs


def _segment(rng: np.random.Generator, length: int) -> Segment:
    return Segment(
        obs=rng.normal(size=(length + 1, OBS_DIM)),
        acts=rng.normal(size=(length, ACT_DIM)),
        true_rewards=np.zeros(length),
    )


def _mlp(**kwargs: object) -> MLPRewardModel:
    torch.manual_seed(0)
    return MLPRewardModel(OBS_DIM, ACT_DIM, hidden_sizes=(16, 16), **kwargs)  # type: ignore[arg-type]


def _ensemble(k: int = 3) -> RewardEnsemble:
    torch.manual_seed(0)
    return RewardEnsemble(
        [MLPRewardModel(OBS_DIM, ACT_DIM, hidden_sizes=(16, 16)) for _ in range(k)]
    )


class _UserReward(nn.Module):
    """A plain user module with the reward signature."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * OBS_DIM + ACT_DIM, 1)

    def forward(
        self, obs: torch.Tensor, acts: torch.Tensor, next_obs: torch.Tensor
    ) -> torch.Tensor:
        return self.linear(torch.cat([obs, acts, next_obs], dim=-1)).squeeze(-1)


class _NaNReward(nn.Module):
    def forward(
        self, obs: torch.Tensor, acts: torch.Tensor, next_obs: torch.Tensor
    ) -> torch.Tensor:
        out = obs.sum(-1)
        return torch.where(torch.arange(len(out)) % 2 == 0, torch.nan, out)


def test_mlp_shapes_protocol_and_defaults() -> None:
    model = MLPRewardModel(OBS_DIM, ACT_DIM)
    assert isinstance(model, RewardModel)
    assert model.hidden_sizes == (256, 256, 256)  # B-Pref defaults
    obs, acts, next_obs = (torch.from_numpy(x) for x in _batch(np.random.default_rng(0)))
    rewards = model(obs, acts, next_obs)
    assert rewards.shape == (8,) and rewards.requires_grad
    assert torch.all(rewards.abs() <= 1.0)  # tanh output


def test_predictor_matches_forward_and_is_float32() -> None:
    model = _mlp(use_next_obs=True, output_activation=None)
    obs, acts, next_obs = _batch(np.random.default_rng(1))
    predictor = model.predictor()
    assert isinstance(predictor, RewardPredictor) and not predictor.episode_level
    predicted, std = predictor.predict(obs, acts, next_obs)
    expected = model(*(torch.from_numpy(x) for x in (obs, acts, next_obs))).detach().numpy()
    assert predicted.dtype == np.float32 and predicted.shape == (8,) and std is None
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-6)
    # float64 input is accepted and converted
    again = predictor.predict(obs.astype(np.float64), acts, next_obs).mean
    np.testing.assert_allclose(again, predicted)


def test_segment_returns_sum_steps_for_equal_and_ragged_lengths() -> None:
    rng = np.random.default_rng(2)
    model = _mlp(use_next_obs=True)
    segments = [_segment(rng, 5), _segment(rng, 3), _segment(rng, 5)]
    returns = model.segment_returns(segments)
    predictor = model.predictor()
    expected = [predictor.predict(s.obs[:-1], s.acts, s.next_obs).mean.sum() for s in segments]
    assert returns.shape == (3,)
    np.testing.assert_allclose(returns.detach().numpy(), expected, rtol=1e-5)
    returns.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    equal = model.segment_returns(segments[::2])
    np.testing.assert_allclose(equal.detach().numpy(), expected[::2], rtol=1e-5)


def test_fit_normalizer_standardises_inputs_and_keeps_constant_features() -> None:
    rng = np.random.default_rng(3)
    model = _mlp()
    obs = rng.normal(5.0, 3.0, size=(1000, OBS_DIM)).astype(np.float32)
    acts = np.ones((1000, ACT_DIM), dtype=np.float32)  # constant: std must stay 1
    model.fit_normalizer(obs, acts, obs)
    np.testing.assert_allclose(model.input_mean[:OBS_DIM].numpy(), obs.mean(0), rtol=1e-5)
    np.testing.assert_allclose(model.input_std[:OBS_DIM].numpy(), obs.std(0), rtol=1e-5)
    np.testing.assert_allclose(model.input_std[OBS_DIM:].numpy(), 1.0)
    assert "input_mean" in model.state_dict()


def test_for_spaces_flattens_and_remembers_spaces() -> None:
    obs_space = spaces.Box(-1.0, 1.0, shape=(2, 2))
    act_space = spaces.Discrete(3)
    model = MLPRewardModel.for_spaces(obs_space, act_space, hidden_sizes=(8,))
    assert (model.obs_dim, model.act_dim) == (4, 3)
    assert model.spaces == {
        "observation_space": {"type": "Box", "shape": [2, 2]},
        "action_space": {"type": "Discrete", "n": 3, "start": 0},
    }
    ensemble = RewardEnsemble.for_spaces(obs_space, act_space, n_members=2, hidden_sizes=(8,))
    assert len(ensemble) == 2 and ensemble.spaces == model.spaces
    assert ensemble.members[0].hidden_sizes == (8,)


def test_shape_mismatch_names_expected_shape_and_training_env() -> None:
    model = MLPRewardModel.for_spaces(
        spaces.Box(-1.0, 1.0, shape=(OBS_DIM,)), spaces.Box(-1.0, 1.0, shape=(ACT_DIM,))
    )
    obs, acts, next_obs = _batch(np.random.default_rng(4))
    wide = np.zeros((8, 5), dtype=np.float32)
    predictor = model.predictor()
    with pytest.raises(ValueError, match=r"expects obs of shape \(3,\), got \(5,\).*trained for"):
        predictor.predict(wide, acts, next_obs)
    with pytest.raises(ValueError, match=r"expects acts of shape \(2,\), got \(5,\)"):
        model(torch.from_numpy(obs), torch.from_numpy(wide), torch.from_numpy(next_obs))
    with pytest.raises(ValueError, match=r"batch of shape \[N, 3\].*x\[None\]"):
        predictor.predict(obs[0], acts, next_obs)
    with pytest.raises(ValueError, match="same number of steps"):
        predictor.predict(obs, acts[:3], next_obs)
    with pytest.raises(ValueError, match=r"expects next_obs of shape \(3,\), got \(5,\)"):
        model(torch.from_numpy(obs), torch.from_numpy(acts), torch.from_numpy(wide))


def test_nan_output_raises_reward_model_error() -> None:
    model = as_reward_model(_NaNReward(), OBS_DIM, ACT_DIM)
    obs, acts, next_obs = _batch(np.random.default_rng(5))
    with pytest.raises(RewardModelError, match=r"NaN/inf for 4 of 8 inputs.*normalisation"):
        model.predictor().predict(obs, acts, next_obs)
    with pytest.raises(RewardModelError, match="last good checkpoint"):
        model.segment_returns([_segment(np.random.default_rng(0), 4)])


def test_as_reward_model_adapts_user_modules() -> None:
    user = _UserReward()
    model = as_reward_model(user, OBS_DIM, ACT_DIM)
    assert isinstance(model, RewardModel) and isinstance(model, nn.Module)
    assert set(map(id, model.parameters())) == set(map(id, user.parameters()))
    obs, acts, next_obs = _batch(np.random.default_rng(6))
    tensors = [torch.from_numpy(x) for x in (obs, acts, next_obs)]
    np.testing.assert_allclose(
        model.predictor().predict(obs, acts, next_obs).mean,
        user(*tensors).detach().numpy(),
        rtol=1e-6,
    )
    assert model.segment_returns([_segment(np.random.default_rng(0), 4)]).shape == (1,)
    mlp = _mlp()
    assert as_reward_model(mlp, OBS_DIM, ACT_DIM) is mlp
    with pytest.raises(ValueError, match="obs_dim=3"):
        as_reward_model(mlp, OBS_DIM + 1, ACT_DIM)

    class Wrong(nn.Module):
        def forward(self, obs: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
            return obs

    with pytest.raises(ValueError, match=r"must return rewards of shape \(8,\)"):
        as_reward_model(Wrong(), OBS_DIM, ACT_DIM).predictor().predict(obs, acts, next_obs)


def test_ensemble_members_mean_and_predictor() -> None:
    ensemble = _ensemble(3)
    assert isinstance(ensemble, RewardModel) and len(ensemble) == 3
    obs, acts, next_obs = _batch(np.random.default_rng(7))
    tensors = [torch.from_numpy(x) for x in (obs, acts, next_obs)]
    members = ensemble.member_rewards(*tensors)
    assert members.shape == (3, 8) and members.requires_grad
    for k, member in enumerate(ensemble.members):
        torch.testing.assert_close(members[k], member(*tensors))
    torch.testing.assert_close(ensemble(*tensors), members.mean(0))
    mean, std = ensemble.predictor().predict(obs, acts, next_obs)
    assert std is not None and float(std.min()) > 0
    # the numpy path: float32 rounding differs from torch's
    np.testing.assert_allclose(mean, members.mean(0).detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        std, members.std(0, correction=0).detach().numpy(), rtol=1e-5, atol=1e-6
    )
    segments = [_segment(np.random.default_rng(0), n) for n in (4, 6)]
    per_member = ensemble.member_segment_returns(segments)
    assert per_member.shape == (3, 2)
    torch.testing.assert_close(ensemble.segment_returns(segments), per_member.mean(0))


def test_ensemble_rejects_members_of_different_sizes_and_plain_modules() -> None:
    with pytest.raises(ValueError, match="share obs/act sizes"):
        RewardEnsemble([MLPRewardModel(3, 2, hidden_sizes=(4,)), MLPRewardModel(4, 2)])
    with pytest.raises(TypeError, match="as_reward_model"):
        RewardEnsemble([_UserReward()])


@pytest.mark.parametrize("kind", ["mlp", "ensemble"])
def test_save_load_round_trip_gives_identical_predictions(tmp_path, kind: str) -> None:
    obs_space = spaces.Box(-1.0, 1.0, shape=(OBS_DIM,))
    act_space = spaces.Box(-1.0, 1.0, shape=(ACT_DIM,))
    torch.manual_seed(0)
    if kind == "mlp":
        model = MLPRewardModel.for_spaces(obs_space, act_space, hidden_sizes=(8, 8))
    else:
        members = [MLPRewardModel.for_spaces(obs_space, act_space, hidden_sizes=(8,)) for _ in "ab"]
        model = RewardEnsemble(members)
    rng = np.random.default_rng(8)
    model.fit_normalizer(*_batch(rng, 100))
    batch = _batch(rng)
    target = tmp_path / "ckpt"
    model.save_pretrained(target)
    model.save_pretrained(target)  # overwriting an existing checkpoint works too
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temp leftovers
    config = json.loads((target / "config.json").read_text())
    assert config["schema"] == "prefenv.reward_model/1"
    assert config["class"] == type(model).__name__
    assert config["obs_dim"] == OBS_DIM and config["spaces"]["action_space"]["type"] == "Box"
    loaded = load_reward_model(target, obs_space, act_space)
    assert type(loaded) is type(model)
    for got, expected in zip(
        loaded.predictor().predict(*batch), model.predictor().predict(*batch), strict=True
    ):
        np.testing.assert_array_equal(got, expected)


def test_checkpoint_errors_name_the_problem(tmp_path) -> None:
    model = _mlp()
    with pytest.raises(CheckpointError, match="no reward model checkpoint"):
        load_reward_model(tmp_path / "missing")
    good = model.save_pretrained(tmp_path / "good")
    config = json.loads((good / "config.json").read_text())

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({**config, "schema": "other/9"}))
    with pytest.raises(CheckpointError, match=r"schema 'other/9'.*save_pretrained"):
        load_reward_model(foreign)

    torn = model.save_pretrained(tmp_path / "torn")
    (torn / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="does not match the hash"):
        load_reward_model(torn)

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    without_hash = {k: v for k, v in config.items() if k != "weights_sha256"}
    (corrupt / "config.json").write_text(json.dumps(without_hash))
    (corrupt / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_reward_model(corrupt)
    save_file({"unrelated": torch.zeros(2)}, str(corrupt / "model.safetensors"))
    with pytest.raises(CheckpointError, match="another config"):
        load_reward_model(corrupt)

    (corrupt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_reward_model(corrupt)


def test_load_checks_spaces(tmp_path) -> None:
    torch.manual_seed(0)
    obs_space = spaces.Box(-1.0, 1.0, shape=(OBS_DIM,))
    act_space = spaces.Discrete(ACT_DIM)
    path = MLPRewardModel.for_spaces(obs_space, act_space, hidden_sizes=(4,)).save_pretrained(
        tmp_path / "m"
    )
    load_reward_model(path, obs_space, act_space)
    with pytest.raises(ValueError, match=r"trained for observation_space.*Box.*\[3\].*\[11\]"):
        load_reward_model(path, observation_space=spaces.Box(-1.0, 1.0, shape=(11,)))
    with pytest.raises(ValueError, match="was it trained on this environment"):
        load_reward_model(path, action_space=spaces.Box(-1.0, 1.0, shape=(ACT_DIM,)))
    # a checkpoint saved without space descriptions is checked by flat size
    bare = _mlp().save_pretrained(tmp_path / "bare")
    load_reward_model(bare, spaces.Box(-1.0, 1.0, shape=(OBS_DIM,)))
    with pytest.raises(ValueError, match="flat size of 3"):
        load_reward_model(bare, spaces.Box(-1.0, 1.0, shape=(4,)))


def test_saving_ensemble_with_custom_member_names_the_fix(tmp_path) -> None:
    ensemble = RewardEnsemble([as_reward_model(_UserReward(), OBS_DIM, ACT_DIM), _mlp()])
    with pytest.raises(TypeError, match="only MLPRewardModel members"):
        ensemble.save_pretrained(tmp_path / "e")
    assert not (tmp_path / "e").exists()


# The reward stack, bottom to top: each module may import only modules listed before it.
REWARD_STACK = (
    "prefenv.errors",
    "prefenv.records",
    "prefenv.spaces",
    "prefenv.episodes",
    "prefenv.predictors",
    "prefenv.step_predictors",
    "prefenv.segment_batch",
    "prefenv.reward_checkpoints",
    "prefenv.reward_networks",
    "prefenv.reward_models",
    "prefenv.exploration",
    "prefenv.wrappers",
)


def _prefenv_imports(module: str) -> set[str]:
    """The ``prefenv`` modules ``module`` imports anywhere (lazy imports inside functions too)."""
    origin = importlib.util.find_spec(module).origin
    found = set()
    for node in ast.walk(ast.parse(Path(origin).read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return {name for name in found if name.startswith("prefenv.")}


def test_reward_stack_imports_point_down_only_so_it_has_no_cycle() -> None:
    wrong = [
        f"{module} imports {imported}"
        for i, module in enumerate(REWARD_STACK)
        for imported in sorted(_prefenv_imports(module))
        if imported not in REWARD_STACK[:i]
    ]
    assert not wrong, "imports against the reward stack's order (a cycle risk): " + "; ".join(wrong)
    assert "prefenv.predictors" in _prefenv_imports("prefenv.reward_networks")  # the reader works
