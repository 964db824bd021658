"""The text ids' native vector env: registration, step-for-step equality with SyncVectorEnv,
clear errors."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import data_equivalence
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import envs  # noqa: F401  (registers the ids)
import prefenv
from envs.text import TextTask
from envs.text.vector_env import TextVectorEnv

TEXT_IDS = ("prefenv/TextSentiment-v0", "prefenv/TextKeyword-v0", "prefenv/TextConcise-v0")
MODES = (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP)


def _pair(env_id: str, mode: AutoresetMode, n: int = 4) -> tuple[gym.vector.VectorEnv, ...]:
    kwargs = {"vector_kwargs": {"autoreset_mode": mode}, "max_new_tokens": 5}
    native = prefenv.make_vec(env_id, n, **kwargs)
    sync = prefenv.make_vec(env_id, n, vectorization_mode="sync", **kwargs)
    assert isinstance(native, TextVectorEnv) and isinstance(sync, SyncVectorEnv)
    return native, sync


def _tokens(venv: TextVectorEnv, rng: np.random.Generator) -> np.ndarray:
    """Random tokens, EOS one time in five (so episodes end by EOS and by truncation)."""
    n, eos = venv.num_envs, venv.env.eos_token_id
    return np.where(rng.random(n) < 0.2, eos, rng.integers(0, venv.single_action_space.n, n))


@pytest.mark.parametrize("env_id", TEXT_IDS)
def test_registered_with_a_lazy_vector_entry_point(env_id: str) -> None:
    assert gym.spec(env_id).vector_entry_point.endswith(":text_task_vector_env")
    venv = gym.make_vec(env_id, num_envs=3, vectorization_mode="vector_entry_point")
    assert isinstance(venv, TextVectorEnv) and venv.num_envs == 3
    single = gym.make(env_id)
    assert venv.single_action_space == single.action_space
    assert venv.single_observation_space == single.observation_space
    assert venv.env.task == gym.spec(env_id).kwargs["task"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("env_id", TEXT_IDS)
def test_native_equals_sync_step_for_step(env_id: str, mode: AutoresetMode) -> None:
    native, sync = _pair(env_id, mode)
    assert native.metadata["autoreset_mode"] == sync.metadata["autoreset_mode"] == mode
    assert data_equivalence(native.reset(seed=5), sync.reset(seed=5))
    rng = np.random.default_rng(0)
    ended = {"terminated": 0, "truncated": 0}
    for _ in range(60):
        actions = _tokens(native, rng)
        a, b = native.step(actions), sync.step(actions)
        assert data_equivalence(a, b)  # observations, rewards, flags, every info array and dtype
        ended["terminated"] += int(a[2].sum())
        ended["truncated"] += int(a[3].sum())
    assert min(ended.values()) > 5  # both ways of ending, and the autoresets, were exercised
    if mode == AutoresetMode.SAME_STEP:
        assert "final_obs" in a[4] or "final_obs" in native.step(_tokens(native, rng))[4]


def test_partial_resets_and_reset_options_match_sync() -> None:
    native, sync = _pair("prefenv/TextSentiment-v0", AutoresetMode.NEXT_STEP)
    rng = np.random.default_rng(1)
    native.reset(seed=3), sync.reset(seed=3)
    for _ in range(3):
        actions = _tokens(native, rng)
        assert data_equivalence(native.step(actions), sync.step(actions))
    for options in (
        {"reset_mask": np.array([True, False, True, False])},
        {"prompt": "The ending was"},
        {"prompt_index": 7, "reset_mask": np.array([False, True, False, False])},
    ):
        a, b = native.reset(options=dict(options)), sync.reset(options=dict(options))
        assert data_equivalence(a, b), options
        actions = _tokens(native, rng)
        assert data_equivalence(native.step(actions), sync.step(actions))
    obs, info = native.reset(options={"prompt": "The ending was"})
    assert set(info["prompt"]) == {"The ending was"} and (info["prompt_index"] == -1).all()


def test_completion_info_is_the_decoded_window_tail() -> None:
    venv = TextVectorEnv(TextTask("keyword", max_new_tokens=3), 2)
    obs, _ = venv.reset(seed=0)
    tok = venv.tokenizer
    word = tok(" coffee", add_special_tokens=False)["input_ids"]
    steps = [word[0], *word[1:], tok.eos_token_id][:3]
    for token in steps:
        obs, rewards, terminated, truncated, info = venv.step(np.array([token, token]))
    assert (terminated | truncated).all()
    assert list(info["completion"]) == ["coffee", "coffee"]
    assert (info["completion_tokens"] == len(steps)).all()
    np.testing.assert_allclose(rewards, 0.5)  # one of the two default keywords
    np.testing.assert_allclose(info["true_reward"], rewards)


def test_clear_errors() -> None:
    venv = TextVectorEnv(TextTask("sentiment"), 2)
    with pytest.raises(gym.error.ResetNeeded, match="call reset"):
        venv.step(np.zeros(2, dtype=np.int64))
    venv.reset(seed=0)
    with pytest.raises(ValueError, match="expected 2 actions"):
        venv.step(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match=r"action 100000 of row 1 is not a token id in \[0, "):
        venv.step(np.array([0, 100_000]))
    with pytest.raises(ValueError, match="NEXT_STEP or SAME_STEP"):
        TextVectorEnv(TextTask("sentiment"), 2, autoreset_mode=AutoresetMode.DISABLED)
    with pytest.raises(ValueError, match="num_envs must be >= 1"):
        TextVectorEnv(TextTask("sentiment"), 0)
    with pytest.raises(ValueError, match="vectorization_mode='sync'"):
        gym.make_vec(
            "prefenv/TextSentiment-v0", 2, vectorization_mode="vector_entry_point",
            render_mode="ansi",
        )  # fmt: skip
    with pytest.raises(IndexError, match="outside the pool"):
        venv.reset(options={"prompt_index": 10_000})
