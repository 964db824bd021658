"""The token-level text env, its registered tasks and their true scores."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.text import (
    Conciseness,
    KeywordInclusion,
    TextGenerationEnv,
    TextTask,
    VaderSentiment,
    default_tokenizer,
    load_prompts,
)

# The single-turn text tasks (prefenv/TextDialogue-v0 is tested in test_dialogue.py).
TEXT_IDS = [
    i for i in envs.registered_ids() if gym.spec(i).entry_point == "envs.text.tasks:TextTask"
]


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


def _env(tok, prompts=("The pasta was",), **kwargs) -> TextGenerationEnv:
    kwargs.setdefault("max_prompt_tokens", 8)
    kwargs.setdefault("max_new_tokens", 4)
    return TextGenerationEnv(list(prompts), VaderSentiment(), tokenizer=tok, **kwargs)


def test_three_text_tasks_are_registered() -> None:
    assert set(TEXT_IDS) == {
        "prefenv/TextSentiment-v0",
        "prefenv/TextKeyword-v0",
        "prefenv/TextConcise-v0",
    }


def test_text_envs_need_no_language_model() -> None:
    # The env holds only a tokenizer: making and stepping one imports neither torch nor a model.
    code = (
        "import sys, gymnasium, envs\n"
        "env = gymnasium.make('prefenv/TextSentiment-v0')\n"
        "env.reset(seed=0)\n"
        "env.step(env.unwrapped.eos_token_id)\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("env_id", TEXT_IDS)
def test_check_env_unwrapped(env_id: str) -> None:
    env = gym.make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the raw env must pass without any checker warning
        check_env(env.unwrapped, skip_render_check=True)
    assert env.observation_space["input_ids"].shape == (16 + 48,)
    assert env.action_space.n == len(env.unwrapped.tokenizer)


def test_observation_is_left_padded_and_shifts_one_token_per_step(tok) -> None:
    env = _env(tok)
    obs, info = env.reset(seed=0)
    prompt_ids = [tok.bos_token_id, *tok("The pasta was")["input_ids"]]
    n = len(prompt_ids)
    assert info == {"prompt": "The pasta was", "prompt_index": 0}
    assert obs["input_ids"].dtype == np.int64 and obs["attention_mask"].dtype == np.int8
    assert obs["input_ids"][-n:].tolist() == prompt_ids
    assert obs["attention_mask"].tolist() == [0] * (env.window - n) + [1] * n
    assert obs["prompt_length"].tolist() == [n]
    assert (obs["input_ids"][:-n] == tok.pad_token_id).all()
    token = tok.convert_tokens_to_ids("Ġgreat")
    obs, reward, terminated, truncated, info = env.step(token)
    assert obs["input_ids"][-n - 1 :].tolist() == [*prompt_ids, token]
    assert obs["attention_mask"].sum() == n + 1 and obs["prompt_length"].tolist() == [n]
    assert (reward, terminated, truncated, info) == (0.0, False, False, {"true_reward": 0.0})


def test_eos_terminates_and_scores_the_completion(tok) -> None:
    env = _env(tok)
    env.reset(seed=0)
    for word in ("Ġwonderful", "."):
        env.step(tok.convert_tokens_to_ids(word))
    _, reward, terminated, truncated, info = env.step(tok.eos_token_id)
    assert terminated and not truncated
    expected = VaderSentiment()("The pasta was", "wonderful.")
    assert info["completion"] == "wonderful."
    assert info["completion_tokens"] == 3
    assert reward == pytest.approx(expected) and info["true_reward"] == pytest.approx(expected)
    assert expected > 0.5
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


def test_max_new_tokens_truncates(tok) -> None:
    env = _env(tok, max_new_tokens=3)
    env.reset(seed=0)
    token = tok.convert_tokens_to_ids("Ġawful")
    results = [env.step(token) for _ in range(3)]
    assert [r[2:4] for r in results] == [(False, False), (False, False), (False, True)]
    assert results[-1][4]["completion"] == "awful awful awful"
    assert results[-1][1] < 0


def test_the_env_pays_the_true_score_and_takes_no_learned_scorer(tok) -> None:
    # A learned text reward reaches the env only through the learned-reward wrapper.
    with pytest.raises(TypeError, match="reward_fn"):
        _env(tok, reward_fn=lambda prompt, completion: 42.0)
    env = _env(tok)
    env.reset(seed=0)
    _, reward, _, _, info = env.step(tok.eos_token_id)
    assert reward == info["true_reward"] == 0.0  # VADER of the empty completion


def test_seeded_prompt_sampler_and_options(tok) -> None:
    prompts = [f"The {w}" for w in ("pasta", "soup", "plot", "cast", "menu", "story")]
    env = _env(tok, prompts)
    draws = [env.reset(seed=s)[1]["prompt_index"] for s in range(20)]
    assert draws == [env.reset(seed=s)[1]["prompt_index"] for s in range(20)]
    assert len(set(draws)) > 1
    assert env.reset(options={"prompt_index": 3})[1]["prompt"] == "The cast"
    obs, info = env.reset(options={"prompt": "The soundtrack was"})
    assert info == {"prompt": "The soundtrack was", "prompt_index": -1}
    with pytest.raises(IndexError, match="outside the pool of 6"):
        env.reset(options={"prompt_index": 6})


def test_prompts_from_a_file(tok, tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("The pasta was\n\nThis movie\n", encoding="utf-8")
    assert load_prompts(path) == ["The pasta was", "This movie"]
    env = TextGenerationEnv(path, VaderSentiment(), tokenizer=tok, max_prompt_tokens=8)
    assert env.prompts == ["The pasta was", "This movie"]


def test_prompts_from_dataset_rows() -> None:
    rows = [{"prompt": "The pasta was", "chosen": "great", "rejected": "bad"}, {"prompt": "I"}]
    assert load_prompts(rows) == ["The pasta was", "I"]
    assert load_prompts(iter([{"text": "This movie"}]), prompt_key="text") == ["This movie"]
    with pytest.raises(KeyError, match="no 'prompt' field"):
        load_prompts([{"text": "This movie"}])


def test_empty_prompt_pool_is_a_clear_error(tok, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="prompt pool is empty"):
        _env(tok, [])
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="prompt pool is empty.*blank lines"):
        load_prompts(blank)
    with pytest.raises(FileNotFoundError, match="not an existing file"):
        load_prompts(str(tmp_path / "missing.txt"))


def test_over_long_prompt_is_a_clear_error(tok) -> None:
    long_prompt = "The pasta was great and the soup was bland and the service was slow"
    with pytest.raises(
        ValueError, match=r"1 of 2 prompts are longer than max_prompt_tokens=8"
    ) as err:
        _env(tok, ["The pasta", long_prompt])
    assert "raise max_prompt_tokens to at least" in str(err.value)
    env = _env(tok)
    with pytest.raises(ValueError, match="longer than max_prompt_tokens"):
        env.reset(options={"prompt": long_prompt})


def test_tokenizer_without_eos_is_a_clear_error(tok) -> None:
    import copy

    no_eos = copy.deepcopy(tok)
    no_eos.eos_token = None
    with pytest.raises(ValueError, match="no EOS token"):
        _env(no_eos)


def test_tokenizer_from_a_local_directory(tok, tmp_path: Path) -> None:
    tok.save_pretrained(tmp_path)
    env = TextTask("keyword", tokenizer=tmp_path, prompts=["The pasta"])
    assert env.action_space.n == len(tok)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        TextTask("keyword", tokenizer="gpt2")


def test_scorers() -> None:
    vader = VaderSentiment()
    assert vader("", "was delicious and great") > 0.5 > -0.5 > vader("", "was awful and boring")
    keyword = KeywordInclusion(["dessert", "coffee"])
    assert keyword("", "The Dessert was fine.") == 0.5
    assert keyword("", "dessert and coffee") == 1.0
    assert keyword("", "desserts") == 0.0
    with pytest.raises(ValueError, match="single words"):
        KeywordInclusion(["ice cream"])
    concise = Conciseness()
    short = concise("", "was delicious and the service friendly.")
    padded = concise("", "was delicious and the service friendly " + "and so on " * 10)
    assert short == pytest.approx(3 / 4 - 0.02 * 6)
    assert padded < short
    with pytest.raises(ValueError, match="unknown text task"):
        TextTask("poetry")
