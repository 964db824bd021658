"""The multi-turn dialogue env: contract, roles, the scripted user, true scores, the text wrapper."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env, data_equivalence

import envs  # noqa: F401 (registers the ids)
from envs.text import TextTask, make_text_teacher, text_pair
from envs.text.default_model import default_tokenizer
from envs.text.dialogue import DialogueEnv, DialogueTextEnv
from envs.text.dialogue_user import (
    Goal,
    Scenario,
    UserRules,
    agent_turns,
    generate_scenarios,
)

RESTAURANT = "We tried this restaurant."
DESSERT = Scenario(RESTAURANT, Goal("topic", "restaurant", "dessert"))
UPBEAT = Scenario("I read this book.", Goal("tone", "book"))


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


def make(tok, scenario: Scenario, **kwargs) -> DialogueEnv:
    return DialogueEnv(tokenizer=tok, scenarios=[scenario], **kwargs)


def say(env: DialogueEnv, text: str) -> tuple[dict, list[float], bool, bool, dict]:
    """Feed one turn's tokens and an EOS; the last step's results and every step's reward."""
    rewards = []
    for token in [*env.encode([" " + text])[0], env.eos_token_id]:
        obs, reward, terminated, truncated, info = env.step(token)
        rewards.append(float(reward))
    return obs, rewards, terminated, truncated, info


def real(obs: dict, key: str) -> np.ndarray:
    return obs[key][obs["attention_mask"] > 0]


# ----------------------------------------------------------------------------- Gymnasium contract


@pytest.mark.parametrize("goals", [("tone",), ("topic",), ("tone", "topic")])
def test_check_env_and_seeded_determinism(tok, goals) -> None:
    env = DialogueEnv(goals, tokenizer=tok)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the raw env must pass without any checker warning
        check_env(env, skip_render_check=True)

    def rollout(seed: int) -> list:
        env.action_space.seed(seed)
        out: list = [env.reset(seed=seed)]
        for _ in range(60):
            step = env.step(env.action_space.sample())
            out.append(step)
            if step[2] or step[3]:
                out.append(env.reset())
        return out

    assert data_equivalence(rollout(5), rollout(5), exact=True)
    assert not data_equivalence(rollout(5), rollout(6))


def test_registered_id_fits_the_default_model(tok) -> None:
    env = gym.make("prefenv/TextDialogue-v0", tokenizer=tok)
    inner = env.unwrapped
    assert isinstance(inner, DialogueEnv)
    assert {s.goal.kind for s in inner.scenarios} == {"tone", "topic"}
    assert inner.window <= 128, "a whole dialogue must fit the default GPT-2's 128 positions"
    assert set(env.observation_space.spaces) == {"input_ids", "attention_mask", "prompt_length",
                                                 "role"}  # fmt: skip


def test_openings_are_unique_and_fix_the_goal() -> None:
    scenarios = generate_scenarios()
    assert len({s.opening for s in scenarios}) == len(scenarios) == 30
    assert {s.goal.kind for s in generate_scenarios(("tone",))} == {"tone"}


# ----------------------------------------------------------------------------- turns and roles


def test_roles_user_replies_and_per_turn_scores(tok) -> None:
    env = make(tok, DESSERT)
    obs, info = env.reset(seed=0)
    assert info["goal"] == "topic:dessert" and info["opening"] == RESTAURANT
    n_open = int(obs["prompt_length"][0])
    assert n_open == len(real(obs, "input_ids")) and not real(obs, "role").any()
    turns = ["the soup was okay", "the pasta was good", "the dessert was great"]
    scores, rewards, replies, policy_tokens = [], [], [], []
    for k, text in enumerate(turns):
        ids = [*env.encode([" " + text])[0], env.eos_token_id]
        policy_tokens += ids
        obs, step_rewards, terminated, truncated, info = say(env, text)
        assert step_rewards[:-1] == [0.0] * (len(ids) - 1), "only the turn's last step pays"
        assert info["true_reward"] == step_rewards[-1] and info["turn_text"] == text
        scores.append(info["turn_score"])
        rewards.append(step_rewards[-1])
        replies.append(info["user_reply"])
        # The user's reply is appended after the policy's EOS, with role 0.
        role, ids_now = real(obs, "role"), real(obs, "input_ids")
        reply_ids = env.encode([info["user_reply"]])[0]
        assert (
            ids_now[-len(reply_ids) :].tolist() == reply_ids and not role[-len(reply_ids) :].any()
        )
        assert ids_now[role == 1].tolist() == policy_tokens
        assert (terminated, truncated) == (k == 2, False)
    # soup: another aspect of a restaurant (progress); pasta: no progress, so the user asks
    # for the hidden target; dessert: the goal, met.
    assert scores == [0.25, 0.25, 1.0]
    np.testing.assert_allclose(rewards, [0.25 - 0.05, -0.05, 0.75 - 0.05])
    assert "dessert" in replies[1] and replies[2] in (" thanks, that is what i wanted.",
                                                      " great, thank you.")  # fmt: skip
    assert info["end"] == "goal" and info["turns"] == 3
    assert info["dialogue_score"] == pytest.approx(sum(rewards))
    assert env.dialogue_scorer()(RESTAURANT, info["dialogue"]) == pytest.approx(sum(rewards))
    assert agent_turns(info["dialogue"]) == turns
    context = "\n".join(env.dialogue_text().split("\n")[:3])  # opening, turn 1, reply 1
    assert env.turn_scorer()(context, turns[1]) == 0.25
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(0)


def test_the_user_leaves_after_turns_without_progress(tok) -> None:
    env = make(tok, UPBEAT)
    env.reset(seed=1)
    _, _, terminated, _, info = say(env, "the plot was boring")
    assert not terminated and info["user_reply"] in (" that sounds bad. was anything good?",
                                                     " hmm, anything nice?")  # fmt: skip
    obs, _, terminated, truncated, info = say(env, "the plot was awful")
    assert terminated and not truncated and info["end"] == "left"
    assert info["user_reply"] == " never mind, bye."
    assert info["dialogue_score"] == pytest.approx(-0.1)


def test_truncated_at_max_turns_without_a_reply(tok) -> None:
    env = make(tok, UPBEAT)
    env.reset(seed=2)
    for text in ("the plot was okay", "the plot was boring"):
        assert say(env, text)[2:4] == (False, False)
    obs, _, terminated, truncated, info = say(env, "the acting was good")
    assert truncated and not terminated and info["end"] == "cap" and info["user_reply"] is None
    assert real(obs, "role")[-1] == 1, "no reply after the last turn"
    assert info["dialogue_score"] == pytest.approx(0.4404 - 3 * 0.05)
    assert env.dialogue_scorer()(UPBEAT.opening, info["dialogue"]) == info["dialogue_score"]


def test_a_turn_ends_at_max_turn_tokens(tok) -> None:
    env = make(tok, DESSERT, max_turn_tokens=4)
    env.reset(seed=0)
    word = env.encode([" the"])[0][0]
    for _ in range(3):
        assert "turn_score" not in env.step(word)[4]
    obs, _, _, _, info = env.step(word)
    assert "turn_score" in info and info["turn_text"] == "the the the the"
    assert real(obs, "role")[-1] == 0, "the user replied"


def test_rules_change_the_user(tok) -> None:
    env = make(tok, UPBEAT, rules=UserRules(max_turns=1, turn_cost=0.0))
    env.reset(seed=0)
    _, _, terminated, truncated, info = say(env, "the plot was okay")
    assert truncated and info["dialogue_score"] == pytest.approx(0.2263)


# ----------------------------------------------------------------------------- text wrapper


def test_text_wrapper_contract_and_turns(tok) -> None:
    env = DialogueTextEnv(DialogueEnv(tokenizer=tok, scenarios=[DESSERT]))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*different from the unwrapped version.*")
        check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert obs == f"user: {RESTAURANT}" and obs in env.observation_space
    obs, reward, terminated, truncated, info = env.step("the dessert was great")
    assert terminated and not truncated and reward == pytest.approx(0.95)
    assert obs.split("\n") == [f"user: {RESTAURANT}", "agent: the dessert was great",
                               f"user: {info['user_reply'].strip()}"]  # fmt: skip
    assert obs in env.observation_space


def test_bad_input_gets_clear_errors(tok) -> None:
    with pytest.raises(ValueError, match="pick one or more of \\['tone', 'topic'\\]"):
        DialogueEnv(("sarcasm",), tokenizer=tok)
    with pytest.raises(ValueError, match="unique openings"):
        DialogueEnv(tokenizer=tok, scenarios=[DESSERT, DESSERT])
    with pytest.raises(ValueError, match="not an aspect of a restaurant"):
        Goal("topic", "restaurant", "plot")
    env = DialogueTextEnv(DialogueEnv(tokenizer=tok, scenarios=[DESSERT], max_turn_tokens=6))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="longer than a turn's max_turn_tokens=6: shorten it"):
        env.step("the dessert was great and the coffee was fresh")
    with pytest.raises(ValueError, match="outside the action space's charset"):
        env.step("caf\u00e9 <|eos|>")
    with pytest.raises(ValueError, match="not one of the env's 1 scenarios"):
        env.reset(options={"opening": "Hello."})
    with pytest.raises(ValueError, match="not one of the 1 scenarios"):
        env.unwrapped.dialogue_scorer()("Hello.", "agent: hi")
    with pytest.raises(TypeError, match="wraps a DialogueEnv"):
        DialogueTextEnv(TextTask("sentiment", tok))


# ----------------------------------------------------------------------------- teachers


def test_teachers_compare_whole_dialogues_and_single_turns(tok) -> None:
    env = make(tok, DESSERT)
    dialogues = []
    for turns in (["the pasta was good", "the dessert was great"], ["hello", "hello"]):
        env.reset(seed=0)
        for text in turns:
            *_, info = say(env, text)
        dialogues.append(info["dialogue"])
    teacher = make_text_teacher("oracle", env.dialogue_scorer(), np.random.default_rng(0))
    [comparison] = teacher.label_texts([RESTAURANT], [dialogues[1]], [dialogues[0]])
    assert comparison.label == 1.0, "the dialogue that met the goal wins"
    context = f"user: {RESTAURANT}\nagent: the pasta was good\nuser: and what about the dessert?"
    pair = text_pair(context, "the coffee was fine", "the dessert was fine", env.turn_scorer())
    assert [s.true_return for s in pair] == [0.25, 1.0]
    assert teacher.label([pair])[0].label == 1.0
