"""The SB3 bridge (Gymnasium 1.x VectorEnv -> SB3 VecEnv), ready configs and the agent adapter."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

import envs
from agents.sb3 import (
    SB3_ALGOS,
    SB3Agent,
    SB3VecEnvBridge,
    make_sb3_agent,
    make_sb3_vec_env,
)
from agents.sb3.bridge import _split_infos

TINY = {"policy_kwargs": {"net_arch": [16]}}
MUJOCO_IDS = [
    env_id
    for env_id in envs.registered_ids()
    if gym.spec(env_id).entry_point == "envs.mujoco.tasks:MujocoTask"
]


def cartpole(max_steps: int) -> gym.Env:
    return gym.make("CartPole-v1", max_episode_steps=max_steps)


class DictObsEnv(gym.Env):
    """Tiny env with a (flat or nested) Dict observation; episodes last 3 steps."""

    def __init__(self, nested: bool = False) -> None:
        inner: spaces.Space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        if nested:
            inner = spaces.Dict({"deep": inner})
        self.observation_space = spaces.Dict({"pos": inner, "flag": spaces.Discrete(3)})
        self.action_space = spaces.Discrete(2)
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self._t = 0
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self._t += 1
        reward = float(action)
        obs = self.observation_space.sample()
        return obs, reward, self._t >= 3, False, {"true_reward": 2 * reward}


# -- the VecEnv contract ---------------------------------------------------------------------


@pytest.mark.parametrize("env_id", MUJOCO_IDS)
def test_sb3_check_env_passes_on_mujoco_ids(env_id: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SB3 has no complaint about our envs, not even a warning
        sb3_check_env(gym.make(env_id), warn=True)


def test_split_infos_follows_key_masks_recursively() -> None:
    infos = {
        "a": np.array([1.0, 2.0]),
        "_a": np.array([True, False]),
        "final_info": {"x": np.array([0, 5]), "_x": np.array([False, True])},
        "_final_info": np.array([False, True]),
        "shared": "tag",
    }
    assert _split_infos(infos, 2) == [
        {"a": 1.0, "shared": "tag"},
        {"final_info": {"x": 5}, "shared": "tag"},
    ]


def _vector(kind: str, mode: AutoresetMode) -> gym.vector.VectorEnv:
    # env 0 truncates after 8 steps; env 1 (always pushed right) terminates by falling.
    fns = [functools.partial(cartpole, 8), functools.partial(cartpole, 100)]
    cls = SyncVectorEnv if kind == "sync" else AsyncVectorEnv
    return cls(fns, autoreset_mode=mode)


@pytest.mark.parametrize(
    ("kind", "mode"),
    [
        ("sync", AutoresetMode.SAME_STEP),
        ("sync", AutoresetMode.DISABLED),
        ("async", AutoresetMode.SAME_STEP),
        ("async", AutoresetMode.DISABLED),
    ],
)
def test_bridge_matches_single_env_semantics(kind: str, mode: AutoresetMode) -> None:
    """Step for step equal to two plain envs handled the SB3 way (DummyVecEnv semantics)."""
    bridge = SB3VecEnvBridge(_vector(kind, mode))
    refs = [cartpole(8), cartpole(100)]
    bridge.seed(0)
    obs = bridge.reset()
    ref_obs = [ref.reset(seed=i)[0] for i, ref in enumerate(refs)]
    np.testing.assert_array_equal(obs, np.stack(ref_obs))
    events = {"terminated": 0, "truncated": 0}
    for t in range(20):
        actions = np.array([t % 2, 1])
        obs, rewards, dones, infos = bridge.step(actions)
        assert isinstance(infos, list) and len(infos) == 2
        assert rewards.dtype == np.float32 and dones.dtype == bool
        for i, ref in enumerate(refs):
            ref_obs[i], reward, term, trunc, _ = ref.step(actions[i])
            assert rewards[i] == reward
            assert dones[i] == (term or trunc)
            assert infos[i]["TimeLimit.truncated"] == (trunc and not term)
            if term or trunc:
                np.testing.assert_array_equal(infos[i]["terminal_observation"], ref_obs[i])
                assert infos[i]["episode"]["l"] == ref.get_wrapper_attr("_elapsed_steps")
                ref_obs[i], _ = ref.reset()
                events["terminated" if term else "truncated"] += 1
            else:
                assert "terminal_observation" not in infos[i]
            np.testing.assert_array_equal(obs[i], ref_obs[i])  # a done env: its reset obs
    assert events["terminated"] >= 1 and events["truncated"] >= 2
    bridge.close()


class TagStep(gym.vector.VectorWrapper):
    """A vector wrapper adding a step-level info key for every env (as a reward wrapper does)."""

    def step(self, actions: Any) -> tuple:
        obs, rewards, terminated, truncated, infos = self.env.step(actions)
        n = self.num_envs
        infos = {**infos, "tag": np.arange(n) + 10, "_tag": np.ones(n, dtype=bool)}
        return obs, rewards, terminated, truncated, infos


@pytest.mark.parametrize("mode", [AutoresetMode.SAME_STEP, AutoresetMode.DISABLED])
def test_vector_wrapper_infos_survive_a_done_step(mode: AutoresetMode) -> None:
    bridge = SB3VecEnvBridge(TagStep(_vector("sync", mode)))
    bridge.reset()
    for _ in range(8):
        _, _, dones, infos = bridge.step(np.array([0, 1]))
    assert dones[0], "env 0 truncates at 8 steps"
    assert infos[0]["tag"] == 10 and infos[1]["tag"] == 11
    if mode == AutoresetMode.DISABLED:
        assert "tag" not in bridge.reset_infos[0], "DISABLED keeps reset infos apart"


def test_next_step_autoreset_is_refused_with_the_fix() -> None:
    venv = gym.make_vec("CartPole-v1", num_envs=2)  # Gymnasium's default: NEXT_STEP
    with pytest.raises(ValueError, match="SAME_STEP"):
        SB3VecEnvBridge(venv)
    venv.close()


def test_true_reward_reaches_infos_and_episode_records() -> None:
    bridge = make_sb3_vec_env("prefenv/Reacher-v0", n_envs=2, seed=0)
    bridge.reset()
    rewards, true_rewards = np.zeros(2), np.zeros(2)
    for _ in range(50):  # Reacher's horizon
        _, r, dones, infos = bridge.step(np.zeros((2, 2), dtype=np.float32) + 0.3)
        rewards += r
        true_rewards += [info["true_reward"] for info in infos]
    assert dones.all() and all(info["TimeLimit.truncated"] for info in infos)
    for i, info in enumerate(infos):
        assert info["episode"]["l"] == 50
        assert info["episode"]["r"] == pytest.approx(rewards[i], rel=1e-5)
        assert info["episode"]["true_r"] == pytest.approx(true_rewards[i])
        assert "reward_dist" in info and info["terminal_observation"].shape == (10,)
    bridge.close()


def test_seed_makes_the_next_reset_reproducible() -> None:
    bridge = make_sb3_vec_env("CartPole-v1", n_envs=2, seed=3)
    first = bridge.reset()
    bridge.seed(3)
    np.testing.assert_array_equal(bridge.reset(), first)
    assert not np.array_equal(bridge.reset(), first), "seeds are used once"
    bridge.set_options([{"a": 1}, {"a": 2}])
    with pytest.raises(ValueError, match="one options dict"):
        bridge.reset()
    bridge.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_attributes_methods_and_wrappers(mode: str) -> None:
    bridge = make_sb3_vec_env(
        "CartPole-v1", n_envs=2, seed=0, vectorization_mode=mode, wrappers=[Monitor]
    )
    assert [spec.id for spec in bridge.get_attr("spec")] == ["CartPole-v1"] * 2
    assert bridge.env_is_wrapped(Monitor) == [True, True]
    assert bridge.env_is_wrapped(gym.wrappers.TimeLimit, indices=[1]) == [True]
    assert bridge.env_is_wrapped(gym.wrappers.ClipReward) == [False, False]
    bridge.set_attr("label", 1)
    bridge.set_attr("label", 2, indices=[1])
    assert bridge.get_attr("label") == [1, 2]
    assert bridge.env_method("get_wrapper_attr", "label") == [1, 2]
    if mode == "sync":
        assert bridge.env_method("get_wrapper_attr", "label", indices=1) == [2]
    else:
        with pytest.raises(NotImplementedError, match="vectorization_mode='sync'"):
            bridge.env_method("get_wrapper_attr", "label", indices=1)
    bridge.close()


def test_get_images_and_render() -> None:
    kwargs = {"render_mode": "rgb_array", "width": 16, "height": 16}
    bridge = make_sb3_vec_env("prefenv/Reacher-v0", n_envs=2, seed=0, env_kwargs=kwargs)
    bridge.reset()
    images = bridge.get_images()
    assert len(images) == 2 and images[0].shape == (16, 16, 3)
    assert bridge.render(mode="rgb_array").shape == (32, 16, 3)  # SB3 tiles the frames
    bridge.close()


def test_sb3_vec_wrappers_run_over_the_bridge() -> None:
    venv = VecNormalize(VecMonitor(make_sb3_vec_env("CartPole-v1", n_envs=2, seed=0)))
    obs = venv.reset()
    episodes = []
    for _ in range(30):
        obs, _, dones, infos = venv.step(np.array([0, 1]))
        episodes += [info["episode"] for done, info in zip(dones, infos, strict=True) if done]
    assert obs.shape == (2, 4) and np.isfinite(obs).all()
    assert episodes and all(ep["l"] > 0 for ep in episodes)
    venv.close()


def test_dict_observations_flat_ok_nested_refused() -> None:
    bridge = make_sb3_vec_env(DictObsEnv, n_envs=2, seed=0)
    obs = bridge.reset()
    assert set(obs) == {"pos", "flag"} and obs["pos"].shape == (2, 2)
    for _ in range(3):
        obs, _, dones, infos = bridge.step(np.array([1, 0]))
    assert dones.all() and set(infos[0]["terminal_observation"]) == {"pos", "flag"}
    assert [info["episode"]["true_r"] for info in infos] == [6.0, 0.0]
    model = make_sb3_agent("sb3-ppo", bridge, seed=0, n_steps=16, batch_size=16, n_epochs=1, **TINY)
    assert type(model.policy).__name__.startswith("MultiInput")
    model.learn(32)
    bridge.close()
    with pytest.raises(ValueError, match="flat Dict"):
        make_sb3_vec_env(functools.partial(DictObsEnv, nested=True), n_envs=1)


# -- algorithms and the adapter --------------------------------------------------------------


def _params(model: Any) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.policy.parameters()]


def test_ppo_learns_in_chunks_through_the_bridge_on_cartpole() -> None:
    bridge = make_sb3_vec_env("CartPole-v1", n_envs=2, seed=0)
    agent = SB3Agent.from_name(
        "sb3-ppo", bridge, seed=0, n_steps=32, batch_size=32, n_epochs=2, **TINY
    )
    before = _params(agent.model)
    agent.learn(128)
    assert agent.num_timesteps == 128
    last_obs = agent.model._last_obs.copy()
    agent.learn(128)
    assert agent.num_timesteps == 256, "learn continues (reset_num_timesteps=False)"
    assert not np.array_equal(agent.model._last_obs, last_obs)
    assert all(not torch.equal(a, b) for a, b in zip(before, _params(agent.model), strict=True))
    assert len(agent.model.ep_info_buffer) > 0, "the bridge's episode records reach SB3's logger"
    assert agent.predict(bridge.reset()).shape == (2,)
    bridge.close()


def test_ppo_through_the_bridge_is_seeded() -> None:
    def run() -> list[torch.Tensor]:
        bridge = make_sb3_vec_env("CartPole-v1", n_envs=2, seed=0)
        model = make_sb3_agent(
            "sb3-ppo", bridge, seed=0, n_steps=32, batch_size=32, n_epochs=1, **TINY
        )
        model.learn(64)
        bridge.close()
        return _params(model)

    assert all(torch.equal(a, b) for a, b in zip(run(), run(), strict=True))


def test_ppo_and_a2c_on_reacher() -> None:
    bridge = make_sb3_vec_env("prefenv/Reacher-v0", n_envs=2, seed=0)
    SB3Agent.from_name(
        "sb3-ppo", bridge, seed=0, n_steps=32, batch_size=32, n_epochs=1, **TINY
    ).learn(128)
    a2c = SB3Agent.from_name("sb3-a2c", bridge, seed=0, n_steps=8, **TINY).learn(64)
    assert a2c.num_timesteps == 64
    bridge.close()


def test_sac_on_box_actions() -> None:
    bridge = make_sb3_vec_env("prefenv/Reacher-v0", n_envs=1, seed=0)
    agent = SB3Agent.from_name(
        "sb3-sac", bridge, seed=0, learning_starts=32, buffer_size=500, batch_size=16, **TINY
    )
    agent.learn(64)
    assert agent.model._n_updates > 0
    assert agent.predict(bridge.reset()).shape == (1, 2)
    bridge.close()


def test_bad_agent_requests_are_clear_errors() -> None:
    bridge = make_sb3_vec_env("CartPole-v1", n_envs=1, seed=0)
    with pytest.raises(ValueError, match="needs continuous Box actions.*sb3-ppo"):
        make_sb3_agent("sb3-sac", bridge, seed=0)
    with pytest.raises(ValueError, match="choose one of"):
        make_sb3_agent("sb3-dqn", bridge)
    with pytest.raises(ValueError, match="'sync' or 'async'"):
        make_sb3_vec_env("CartPole-v1", n_envs=1, vectorization_mode="ray")
    assert set(SB3_ALGOS) == {"sb3-ppo", "sb3-sac", "sb3-a2c"}
    bridge.close()


# -- PEBBLE relabelling of an off-policy replay buffer ---------------------------------------


class WideActions(gym.Env):
    """Box(3) observation drifting with a Box([0, 4]^2) action (not SAC's [-1, 1]); 5-step episodes."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-10.0, 10.0, (3,), np.float32)
        self.action_space = spaces.Box(0.0, 4.0, (2,), np.float32)
        self._obs = np.zeros(3, dtype=np.float32)
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self._obs = self.np_random.uniform(-1, 1, 3).astype(np.float32)
        self._t = 0
        return self._obs.copy(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self._t += 1
        drift = np.array([action[0] - 2.0, action[1] - 2.0, 0.1], dtype=np.float32)
        self._obs = np.clip(self._obs + 0.1 * drift, -10, 10).astype(np.float32)
        return self._obs.copy(), 0.0, False, self._t >= 5, {}


def test_relabel_rescores_the_sac_buffer_exactly() -> None:
    from prefenv.reward_models import RewardEnsemble
    from prefenv.wrappers import VectorPreferenceReward

    venv = SyncVectorEnv([WideActions, WideActions], autoreset_mode=AutoresetMode.SAME_STEP)
    model = RewardEnsemble.for_spaces(
        venv.single_observation_space, venv.single_action_space, n_members=2,
        hidden_sizes=(8,), use_next_obs=True,
    )  # fmt: skip
    reward_env = VectorPreferenceReward(venv, model)
    bridge = SB3VecEnvBridge(reward_env)
    bridge.seed(0)
    agent = SB3Agent.from_name(
        "sb3-sac", bridge, seed=0, learning_starts=16, buffer_size=40, batch_size=8,
        policy_kwargs={"net_arch": [16]},
    )  # fmt: skip
    agent.learn(30)  # 15 vector steps x 2 envs, episode ends (final obs) included
    buffer = agent.model.replay_buffer
    stored = buffer.rewards[: buffer.pos].copy()
    assert np.abs(stored).sum() > 0
    # the unchanged model reproduces what the env paid: actions unscaled, next obs aligned
    assert agent.relabel_rewards(reward_env.learned_rewards, chunk=7) == buffer.pos * 2
    np.testing.assert_allclose(buffer.rewards[: buffer.pos], stored, rtol=1e-5, atol=1e-6)
    # a refit (here: new weights) rescores every stored transition, wrap-around included
    agent.learn(30)
    assert buffer.full
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.5)
    reward_env.refresh()  # the wrapper scores with the new snapshot, as the loop hands it over
    n = agent.relabel_rewards(reward_env.learned_rewards)
    assert n == buffer.buffer_size * 2 == 40  # SB3 splits buffer_size over the envs
    obs = buffer.observations.reshape(-1, 3)
    acts = agent.model.policy.unscale_action(buffer.actions.reshape(-1, 2))
    assert acts.min() >= 0.0 and acts.max() > 1.0  # env units, not SAC's [-1, 1]
    expected = model.predictor().predict(obs, acts, buffer.next_observations.reshape(-1, 3)).mean
    np.testing.assert_allclose(buffer.rewards.reshape(-1), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(buffer.rewards[: len(stored)], stored)
    bridge.close()


def test_relabel_is_a_no_op_for_on_policy_agents() -> None:
    bridge = make_sb3_vec_env("CartPole-v1", n_envs=1, seed=0)
    agent = SB3Agent.from_name(
        "sb3-ppo", bridge, seed=0, n_steps=16, batch_size=16, policy_kwargs={"net_arch": [16]}
    )
    assert agent.relabel_rewards(lambda *args: np.zeros(1)) == 0
    bridge.close()


def test_sac_checkpoint_keeps_its_replay_buffer(tmp_path) -> None:
    bridge = make_sb3_vec_env("prefenv/Reacher-v0", n_envs=1, seed=0)
    kwargs = {"learning_starts": 16, "buffer_size": 100, "batch_size": 8}
    agent = SB3Agent.from_name(
        "sb3-sac", bridge, seed=0, policy_kwargs={"net_arch": [16]}, **kwargs
    )
    agent.learn(40)
    agent.save(tmp_path)
    assert (tmp_path / "sb3_replay_buffer.pkl").exists()
    restored = SB3Agent.load(tmp_path, "sb3-sac", bridge)
    before, after = agent.model.replay_buffer, restored.model.replay_buffer
    assert after.pos == before.pos == 40
    np.testing.assert_array_equal(after.observations, before.observations)
    np.testing.assert_array_equal(after.rewards, before.rewards)
    bridge.close()


@pytest.mark.parametrize("name", ["sb3-ppo", "sb3-sac"])
def test_a_loaded_agent_continues_exactly_as_the_saved_one(tmp_path, name: str) -> None:
    kwargs = {"n_steps": 16, "batch_size": 16, "n_epochs": 1} if name == "sb3-ppo" else {
        "learning_starts": 16, "buffer_size": 200, "batch_size": 8}  # fmt: skip

    def make(seed: int) -> SB3Agent:
        bridge = make_sb3_vec_env("Pendulum-v1", n_envs=2, seed=seed)
        venv = VecNormalize(bridge, norm_obs=False, norm_reward=True)
        net = {"net_arch": [16]}  # a fresh dict: SB3 adds keys to the policy_kwargs it is given
        return SB3Agent.from_name(name, venv, seed=seed, env_seed=seed + 1, policy_kwargs=net,
                                  **kwargs)  # fmt: skip

    live = make(0)
    live.learn(64)
    live.save(tmp_path)
    live.learn(64)  # restarted env, the process-wide RNG as saved
    other = make(7)  # another process would rebuild the env and agent, then load
    resumed = SB3Agent.load(tmp_path, name, other.model.get_env().venv)
    resumed.learn(64)
    assert resumed.num_timesteps == live.num_timesteps == 128
    pairs = zip(_params(live.model), _params(resumed.model), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert resumed.model.get_vec_normalize_env().ret_rms.count == (
        live.model.get_vec_normalize_env().ret_rms.count
    )
