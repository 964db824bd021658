"""agents.ppo_kl.PPOKL end to end on tiny envs (hidden 16, tens of steps)."""

from __future__ import annotations

import csv
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from agents.policies import MLPActorCritic
from agents.ppo_kl import PPOKL, PPOKLConfig, ReturnScaler, trainer

TINY = {"n_steps": 16, "batch_size": 16, "n_epochs": 2, "hidden_sizes": (16,)}


class ToyEnv(gym.Env):
    """Fixed-horizon toy task.

    Observation: Box(3) uniform in [-1, 1] (or a flat Dict of Box(2) + Discrete(3), or a nested
    Dict). Action: Discrete(3), MultiDiscrete([2, 3]) or Box(2) in [-1, 1]. Reward: Box actions
    -||a - obs[:2] / 2||^2; discrete 1 when the (first) action is 0. Termination: never;
    truncation: after ``horizon`` steps. ``info["true_reward"]`` is twice the reward.
    """

    def __init__(self, obs_kind: str = "box", act_kind: str = "discrete", horizon: int = 5) -> None:
        self.obs_kind, self.act_kind, self.horizon = obs_kind, act_kind, horizon
        box = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.observation_space = {
            "box": spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32),
            "dict": spaces.Dict({"pos": box, "mode": spaces.Discrete(3)}),
            "nested": spaces.Dict({"inner": spaces.Dict({"pos": box})}),
        }[obs_kind]
        self.action_space = {
            "discrete": spaces.Discrete(3),
            "multidiscrete": spaces.MultiDiscrete([2, 3]),
            "box": spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32),
        }[act_kind]
        self.t = 0
        self._x = np.zeros(3, dtype=np.float32)

    def _obs(self) -> Any:
        self._x = self.np_random.uniform(-1, 1, size=3).astype(np.float32)
        if self.obs_kind == "box":
            return self._x
        return {"pos": self._x[:2], "mode": int(self.np_random.integers(3))}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        if self.act_kind == "box":
            reward = -float(np.sum((np.asarray(action) - self._x[:2] / 2) ** 2))
        else:
            reward = float(np.ravel(action)[0] == 0)
        self.t += 1
        return self._obs(), reward, False, self.t >= self.horizon, {"true_reward": 2 * reward}


def toy_vec(n: int = 2, **kwargs: Any) -> gym.vector.SyncVectorEnv:
    return gym.vector.SyncVectorEnv([lambda: ToyEnv(**kwargs) for _ in range(n)])


def cartpole_vec(n: int = 2) -> gym.vector.VectorEnv:
    return gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="sync")


def params(agent: PPOKL) -> list[torch.Tensor]:
    return [p.detach().clone() for p in agent.policy.parameters()]


def assert_same_params(a: PPOKL, b: PPOKL) -> None:
    for pa, pb in zip(params(a), params(b), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


class ExplodingRef(torch.nn.Module):
    """A reference policy that fails if the trainer ever asks it anything."""

    def act(self, obs: Any, deterministic: bool = False) -> Any:
        raise AssertionError("reference must not be used when kl_coef == 0")

    evaluate = log_prob = value = act


# ---------------------------------------------------------------- rollout semantics


def test_reset_step_is_masked_and_truncation_recorded() -> None:
    env = gym.vector.SyncVectorEnv([lambda: ToyEnv(horizon=3)])
    agent = PPOKL(env, PPOKLConfig(**{**TINY, "n_steps": 8, "batch_size": 4}))
    (m,) = agent.learn(8)
    # NEXT_STEP autoreset: steps 0-2 play the episode (truncated at 2), step 3 is the reset
    assert agent.buffer.valid[:, 0].tolist() == [1, 1, 1, 0, 1, 1, 1, 0]
    assert agent.buffer.truncated[:, 0].tolist() == [0, 0, 1, 0, 0, 0, 1, 0]
    assert not agent.buffer.terminated.any()
    assert (agent.buffer.rewards[~agent.buffer.valid] == 0).all()
    assert m.episodes == 2 and m.episode_length == 3
    assert m.episode_true_return == pytest.approx(2 * m.episode_reward)
    assert m.timesteps == 8 and m.iteration == 1


def test_beta_zero_is_plain_ppo_without_reference_forward() -> None:
    plain = PPOKL(cartpole_vec(), PPOKLConfig(**TINY))
    with_ref = PPOKL(cartpole_vec(), PPOKLConfig(**TINY, kl_coef=0.0), ref_policy=ExplodingRef())
    plain.learn(32)
    (m,) = with_ref.learn(32)
    assert_same_params(plain, with_ref)
    assert np.isnan(m.kl_to_ref) and m.kl_coef == 0.0


def test_positive_beta_changes_the_update() -> None:
    env = cartpole_vec()
    torch.manual_seed(123)
    ref = MLPActorCritic(env.single_observation_space, env.single_action_space, hidden_sizes=(16,))
    plain = PPOKL(cartpole_vec(), PPOKLConfig(**TINY))
    leashed = PPOKL(env, PPOKLConfig(**TINY, kl_coef=0.5), ref_policy=ref)
    plain.learn(32)
    (m,) = leashed.learn(32)
    assert np.isfinite(m.kl_to_ref) and m.kl_coef == 0.5
    assert any(not torch.equal(a, b) for a, b in zip(params(plain), params(leashed), strict=True))


class RecordSteps(gym.vector.VectorWrapper):
    """Keeps every step's raw rewards ``[N]`` and ends ``terminated | truncated`` ``[N]``."""

    def __init__(self, env: gym.vector.VectorEnv) -> None:
        super().__init__(env)
        self.rewards: list[np.ndarray] = []
        self.dones: list[np.ndarray] = []

    def step(self, actions: Any) -> Any:
        obs, rewards, terminated, truncated, infos = self.env.step(actions)
        self.rewards.append(np.asarray(rewards, dtype=np.float32))
        self.dones.append(terminated | truncated)
        return obs, rewards, terminated, truncated, infos


def _scaled(rewards: np.ndarray, dones: np.ndarray, valid: np.ndarray, cfg: PPOKLConfig) -> Any:
    """``[T, N]`` rewards through a fresh return scaler, reset steps zeroed, as the trainer does."""
    scaler = ReturnScaler(rewards.shape[1], cfg.gamma, cfg.clip_reward)
    out = np.stack([scaler(r, d, v) for r, d, v in zip(rewards, dones, valid, strict=True)])
    return np.where(valid, out, 0.0)


def test_kl_penalty_is_subtracted_after_return_scaling(monkeypatch: pytest.MonkeyPatch) -> None:
    # PPOKLConfig.kl_coef: the advantages see scale(r) - beta * KL, not scale(r - beta * KL)
    beta = 2.0
    cfg = PPOKLConfig(**{**TINY, "n_steps": 12}, norm_reward=True, kl_coef=beta, gamma=0.9)
    env = RecordSteps(toy_vec(2, horizon=5))
    torch.manual_seed(7)  # a reference unlike the initial policy: KL > 0 from the first step
    ref = MLPActorCritic(env.single_observation_space, env.single_action_space, hidden_sizes=(16,))
    agent = PPOKL(env, cfg, ref_policy=ref)
    seen: list[np.ndarray] = []
    gae = trainer.compute_gae

    def spy(rewards: np.ndarray, *args: Any) -> Any:
        seen.append(rewards.copy())
        return gae(rewards, *args)

    monkeypatch.setattr(trainer, "compute_gae", spy)
    agent.learn(24)
    buf = agent.buffer
    raw, dones, kl = np.stack(env.rewards), np.stack(env.dones), buf.kl
    assert np.abs(kl[buf.valid]).min() > 0  # nats, unscaled; reset steps carry none
    np.testing.assert_allclose(seen[0], _scaled(raw, dones, buf.valid, cfg) - beta * kl, rtol=1e-6)
    penalised_then_scaled = _scaled(raw - beta * kl, dones, buf.valid, cfg)
    assert not np.allclose(seen[0], penalised_then_scaled, rtol=0, atol=1e-3)


def test_default_reference_is_a_frozen_copy_of_the_initial_policy() -> None:
    agent = PPOKL(cartpole_vec(), PPOKLConfig(**TINY, kl_coef=0.1, kl_estimator="k3"))
    assert agent.ref_policy is not None and agent.ref_policy is not agent.policy
    initial = [p.clone() for p in agent.ref_policy.parameters()]
    (m1, m2) = agent.learn(64)
    assert m1.kl_to_ref == 0.0  # identical policies on the first rollout
    assert m2.kl_to_ref > 0.0  # k3 >= 0, and the policy has moved
    for before, after in zip(initial, agent.ref_policy.parameters(), strict=True):
        assert torch.equal(before, after) and not after.requires_grad


@pytest.mark.parametrize(("target", "direction"), [(1e-6, 1), (1e6, -1)])
def test_adaptive_beta_moves_toward_target(target: float, direction: int) -> None:
    env = toy_vec(act_kind="discrete")
    torch.manual_seed(7)
    ref = MLPActorCritic(env.single_observation_space, env.single_action_space, hidden_sizes=(16,))
    cfg = PPOKLConfig(
        **TINY, kl_coef=0.1, adaptive_kl=True, kl_target=target, kl_horizon=20, kl_estimator="k3"
    )
    metrics = PPOKL(env, cfg, ref_policy=ref).learn(3 * 32)
    betas = [m.kl_coef for m in metrics]
    assert all(m.episodes > 0 for m in metrics)
    # Ziegler: e = clip(KL / target - 1, -0.2, 0.2) is +-0.2 here; beta *= 1 + e * n / horizon
    for m, beta_next in zip(metrics, betas[1:], strict=False):
        assert beta_next == pytest.approx(m.kl_coef * (1 + direction * 0.2 * m.episodes / 20))


# ---------------------------------------------------------------- training


def test_every_parameter_changes_and_losses_are_finite() -> None:
    env = gym.make_vec("Pendulum-v1", num_envs=2, vectorization_mode="sync")
    agent = PPOKL(env, PPOKLConfig(n_steps=64, batch_size=32, n_epochs=2, hidden_sizes=(16,)))
    before = {n: p.detach().clone() for n, p in agent.policy.named_parameters()}
    (m,) = agent.learn(128)
    for name, p in agent.policy.named_parameters():
        assert not torch.equal(before[name], p), f"{name} did not change"
    for value in (m.policy_loss, m.value_loss, m.entropy, m.approx_kl, m.clip_fraction):
        assert np.isfinite(value)
    assert m.epochs == 2


def test_target_kl_stops_the_update_early() -> None:
    (m,) = PPOKL(cartpole_vec(), PPOKLConfig(**TINY, target_kl=1e-9)).learn(32)
    # minibatch 1 has KL exactly 0 and steps; minibatch 2 exceeds 1.5 * target and stops epoch 1
    assert m.epochs == 0 and m.approx_kl == 0.0


@pytest.mark.parametrize(
    ("obs_kind", "act_kind"),
    [
        ("box", "box"),
        ("box", "discrete"),
        ("box", "multidiscrete"),
        ("dict", "discrete"),
        ("dict", "box"),
    ],
)
def test_spaces_train_one_iteration(obs_kind: str, act_kind: str) -> None:
    cfg = PPOKLConfig(**TINY, norm_obs=True, norm_reward=True, kl_coef=0.05)
    (m,) = PPOKL(toy_vec(obs_kind=obs_kind, act_kind=act_kind), cfg).learn(32)
    assert np.isfinite(m.policy_loss) and np.isfinite(m.value_loss) and m.episodes > 0


def test_nested_dict_observation_is_rejected() -> None:
    with pytest.raises(TypeError, match="FlattenObservation"):
        PPOKL(toy_vec(obs_kind="nested"), PPOKLConfig(**TINY))


def test_sync_and_async_envs_give_identical_runs() -> None:
    fns = [lambda: gym.make("CartPole-v1") for _ in range(2)]
    sync = PPOKL(gym.vector.SyncVectorEnv(fns), PPOKLConfig(**TINY))
    async_env = gym.vector.AsyncVectorEnv(fns)
    try:
        agent = PPOKL(async_env, PPOKLConfig(**TINY))
        agent.learn(64)
    finally:
        async_env.close()
    sync.learn(64)
    assert_same_params(sync, agent)


def test_learn_in_chunks_continues_the_same_run() -> None:
    one = PPOKL(cartpole_vec(), PPOKLConfig(**TINY))
    chunks = PPOKL(cartpole_vec(), PPOKLConfig(**TINY))
    one.learn(96)
    for _ in range(3):
        chunks.learn(32)
    assert_same_params(one, chunks)
    assert chunks.num_timesteps == 96 and chunks.iterations == 3
    (m,) = chunks.learn(32, reset_num_timesteps=True)
    assert m.timesteps == 32 and m.iteration == 1


def test_callback_false_stops_and_logs_are_written(tmp_path) -> None:
    agent = PPOKL(toy_vec(), PPOKLConfig(**TINY), log_dir=tmp_path)
    metrics = agent.learn(10 * 32, callback=lambda m: m.iteration < 2)
    agent.close()
    assert len(metrics) == 2
    with (tmp_path / "progress.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [1, 2]
    assert float(rows[0]["episode_true_return"]) == pytest.approx(
        2 * float(rows[0]["episode_reward"])
    )
    pytest.importorskip("tensorboard")
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_predict_clips_to_bounds_and_is_deterministic() -> None:
    env = gym.make_vec("Pendulum-v1", num_envs=3, vectorization_mode="sync")
    agent = PPOKL(env, PPOKLConfig(**TINY, log_std_init=3.0))
    obs, _ = env.reset(seed=0)
    a1, a2 = agent.predict(obs), agent.predict(obs)
    assert a1.shape == (3, 1) and np.array_equal(a1, a2)
    sampled = agent.predict(np.repeat(obs, 50, axis=0), deterministic=False)
    assert (np.abs(sampled) <= 2.0).all() and (np.abs(sampled) == 2.0).any()


def test_bad_envs_are_rejected_with_the_fix() -> None:
    with pytest.raises(TypeError, match="make_vec"):
        PPOKL(gym.make("CartPole-v1"), PPOKLConfig(**TINY))  # type: ignore[arg-type]
    same_step = gym.make_vec(
        "CartPole-v1",
        num_envs=2,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
    )
    with pytest.raises(ValueError, match="NEXT_STEP"):
        PPOKL(same_step, PPOKLConfig(**TINY))


# ---------------------------------------------------------------- learning


class TrueReward(gym.Wrapper):
    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, "true_reward": reward}


def test_cartpole_true_return_rises() -> None:
    env = gym.vector.SyncVectorEnv([lambda: TrueReward(gym.make("CartPole-v1")) for _ in range(4)])
    cfg = PPOKLConfig(
        n_steps=128, batch_size=128, n_epochs=4, learning_rate=1e-3, hidden_sizes=(32, 32), seed=0
    )
    returns = [m.episode_true_return for m in PPOKL(env, cfg).learn(12 * 1024) if m.episodes]
    first, last = returns[0], float(np.mean(returns[-5:]))
    assert first < 40 and last > 100, returns


def test_continuous_toy_task_error_falls() -> None:
    env = toy_vec(n=4, act_kind="box")
    cfg = PPOKLConfig(
        n_steps=64, batch_size=64, n_epochs=4, learning_rate=3e-3, hidden_sizes=(32,), seed=0
    )
    metrics = PPOKL(env, cfg).learn(16 * 256)
    # episode reward = -sum of 5 squared errors ||a - x/2||^2: about -5.7 for the initial policy
    first, last = metrics[0].episode_reward, np.mean([m.episode_reward for m in metrics[-3:]])
    assert first < -5 and last > 0.6 * first, [m.episode_reward for m in metrics]
