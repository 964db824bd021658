"""A multi-turn dialogue with a scripted user, as a token-level Gymnasium env and a turn-level one.

:class:`DialogueEnv` (``prefenv/TextDialogue-v0``): the policy speaks one token per step; EOS (or
``max_turn_tokens`` tokens) ends its *turn*, not the episode; the scripted user
(:mod:`envs.text.dialogue_user`: rules, templates, a hidden goal) judges the turn and the env
appends the user's reply. The policy's tokens are marked in the observation's ``role`` array, so
a sequence-level trainer sees the whole dialogue as one token sequence and masks the user's
tokens out of its loss (``agents.text.dialogue``). :class:`DialogueTextEnv` wraps it for
turn-level agents and people: one step = one turn's text.

Vocabulary: the user's templates are written in the default corpus's words and encoded by the
env's tokenizer (byte-level BPE encodes any text), so the task shares the default tokenizer and
model: the base LM, SFT, reward models and every trainer run on it unchanged, with no second
tokenizer to build and cache. Words outside the corpus cost a few more tokens, nothing else.
"""

from __future__ import annotations

import os
import string
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.text.dialogue_user import (
    AGENT,
    GOALS,
    USER,
    DialogueScore,
    DialogueState,
    Scenario,
    ScriptedUser,
    TurnScore,
    UserRules,
    check_goals,
    dialogue_line,
    generate_scenarios,
)
from envs.text.token_env import decode_completions, resolve_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["DialogueEnv", "DialogueTextEnv"]

ObsDict = dict[str, np.ndarray]


class DialogueEnv(gym.Env[ObsDict, np.int64]):
    """A dialogue with a scripted user who hides a goal; the policy writes one token per step.

    Observation (``Dict``), a window of ``L`` positions (sized at construction so a whole
    dialogue fits: the longest opening + ``max_turns * (max_turn_tokens + longest reply)``),
    *left-padded* so the newest token is last, as :class:`~envs.text.TextGenerationEnv`:

    - ``"input_ids"``: ``Box(0, vocab - 1, (L,), int64)``: ``[pad..., BOS, opening, turn 1, EOS,
      reply 1, turn 2, ...]``.
    - ``"attention_mask"``: ``MultiBinary(L)`` (int8), 1 on real tokens.
    - ``"prompt_length"``: ``Box(1, L, (1,), int64)``: tokens of the opening (BOS included).
    - ``"role"``: ``MultiBinary(L)`` (int8): 1 on tokens the policy generated (its turns, each
      EOS included), 0 on the opening, the user's replies and padding.

    Action: ``Discrete(vocab)``, the next token of the policy's turn. The user's tokens are
    appended by the env, never actions.

    Reward: 0 except on the step that ends a turn (EOS or ``max_turn_tokens``), which pays the
    turn's true reward (its progress toward the goal minus ``turn_cost``); the episode's return is
    the dialogue score (:class:`~envs.text.dialogue_user.DialogueScore`). ``info["true_reward"]``
    equals the reward. A turn-ending step's info adds ``"turn_score"`` (the turn's closeness to
    the goal), ``"turn_text"`` and ``"user_reply"`` (None when cut); the last step adds
    ``"opening"``, ``"dialogue"`` (the text form after the opening), ``"dialogue_score"``,
    ``"turns"`` and ``"end"`` (``"goal"``, ``"left"`` or ``"cap"``). Reset's info has
    ``"opening"``, ``"scenario_index"`` and ``"goal"`` (hidden from the policy: for teachers).

    Termination (``terminated``): a turn met the goal, or the user left (``patience`` turns in a
    row without progress). Truncation (``truncated``): ``max_turns`` turns without either.

    Scenarios are drawn uniformly with the env's seeded ``np_random``; ``reset(options=
    {"opening": text})`` or ``{"scenario_index": i}`` picks one. Reply templates are drawn from
    ``np_random`` too, so a seeded episode is deterministic in the policy's tokens.

    Args:
        goals: goal kinds of the generated scenarios (``"tone"``, ``"topic"``).
        tokenizer: a tokenizer, a local tokenizer directory, or None for the default one.
        scenarios: the scenario pool; None = :func:`~envs.text.dialogue_user.generate_scenarios`
            for ``goals`` and ``scenario_seed``.
        rules: the user's rules (turn cap, patience, thresholds, turn cost).
        max_turn_tokens: tokens of one policy turn (EOS included) before the env ends it.
        scenario_seed: seed of the generated pool's goals.
        render_mode: None or ``"ansi"`` (the dialogue's text form).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        goals: Sequence[str] = GOALS,
        tokenizer: PreTrainedTokenizerBase | str | os.PathLike[str] | None = None,
        scenarios: Sequence[Scenario] | None = None,
        rules: UserRules | None = None,
        max_turn_tokens: int = 16,
        scenario_seed: int = 3,
        render_mode: str | None = None,
    ) -> None:
        goals = check_goals(goals)
        if max_turn_tokens < 1:
            raise ValueError(f"max_turn_tokens must be >= 1, got {max_turn_tokens}")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.scenarios = list(
            scenarios if scenarios is not None else generate_scenarios(goals, scenario_seed)
        )
        self._index = {s.opening: i for i, s in enumerate(self.scenarios)}
        if not self.scenarios or len(self._index) != len(self.scenarios):
            raise ValueError(
                f"need at least one scenario and unique openings (the opening fixes the hidden "
                f"goal), got {len(self.scenarios)} scenarios with {len(self._index)} openings"
            )
        self.user = ScriptedUser(rules or UserRules())
        self.max_turn_tokens = max_turn_tokens
        self.render_mode = render_mode
        self.tokenizer = resolve_tokenizer(tokenizer)
        if self.tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token, which ends the policy's turns")
        self.eos_token_id = int(self.tokenizer.eos_token_id)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else self.eos_token_id
        self.vocab_size = len(self.tokenizer)
        bos = [] if self.tokenizer.bos_token_id is None else [int(self.tokenizer.bos_token_id)]
        self._opening_ids = [bos + ids for ids in self.encode([s.opening for s in self.scenarios])]
        replies = ScriptedUser.all_replies(s.goal for s in self.scenarios)
        self._reply_ids = dict(zip(replies, self.encode(replies), strict=True))
        self.window = L = self._window()
        self.observation_space = spaces.Dict(
            {
                "input_ids": spaces.Box(0, self.vocab_size - 1, (L,), np.int64),
                "attention_mask": spaces.MultiBinary(L),
                "prompt_length": spaces.Box(1, L, (1,), np.int64),
                "role": spaces.MultiBinary(L),
            }
        )
        self.action_space = spaces.Discrete(self.vocab_size)
        self._ids = np.full(L, self.pad_token_id, dtype=np.int64)
        self._mask = np.zeros(L, dtype=np.int8)
        self._role = np.zeros(L, dtype=np.int8)
        self._prompt_length = np.ones(1, dtype=np.int64)
        self._scenario = self.scenarios[0]
        self._state = DialogueState()
        self._lines: list[str] = []
        self._turn: list[int] = []
        self._done = True

    def _window(self) -> int:
        """Positions a whole dialogue needs: the longest opening, then ``max_turns`` times a
        full turn and the longest reply."""
        longest_reply = max(len(ids) for ids in self._reply_ids.values())
        turn = self.max_turn_tokens + longest_reply
        return max(map(len, self._opening_ids)) + self.user.rules.max_turns * turn

    @property
    def replies(self) -> list[str]:
        """Every message the user can send after a turn in this env's scenarios."""
        return list(self._reply_ids)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of ``texts`` (no special tokens), as the env appends them."""
        return [
            list(map(int, ids))
            for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        ]

    # ------------------------------------------------------------------ Gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[ObsDict, dict[str, Any]]:
        super().reset(seed=seed)
        index = self._scenario_index(options or {})
        self._scenario = self.scenarios[index]
        self._ids.fill(self.pad_token_id)
        self._mask.fill(0)
        self._role.fill(0)
        ids = self._opening_ids[index]
        self._append(ids, role=0)
        self._prompt_length[0] = len(ids)
        self._state = DialogueState()
        self._lines = [dialogue_line(USER, self._scenario.opening)]
        self._turn = []
        self._done = False
        info = {"opening": self._scenario.opening, "scenario_index": index,
                "goal": str(self._scenario.goal)}  # fmt: skip
        return self._obs(), info

    def _scenario_index(self, options: dict[str, Any]) -> int:
        if "opening" in options:
            opening = str(options["opening"])
            if opening not in self._index:
                raise ValueError(
                    f"opening {opening[:60]!r} is not one of the env's {len(self.scenarios)} "
                    "scenarios (env.scenarios): pick one of their openings or pass scenarios="
                )
            return self._index[opening]
        if "scenario_index" in options:
            index = int(options["scenario_index"])
            if not 0 <= index < len(self.scenarios):
                raise IndexError(
                    f"scenario_index {index} is outside the {len(self.scenarios)} scenarios"
                )
            return index
        return int(self.np_random.integers(len(self.scenarios)))

    def step(self, action: Any) -> tuple[ObsDict, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError(
                "the dialogue has ended (goal met, user left or max_turns): call reset()"
            )
        token = int(action)
        if not 0 <= token < self.vocab_size:
            raise ValueError(f"action {token} is not a token id in [0, {self.vocab_size})")
        self._append([token], role=1)
        self._turn.append(token)
        if token != self.eos_token_id and len(self._turn) < self.max_turn_tokens:
            return self._obs(), 0.0, False, False, {"true_reward": 0.0}
        return self._end_turn()

    def _end_turn(self) -> tuple[ObsDict, float, bool, bool, dict[str, Any]]:
        """The user judges the finished turn and replies (or ends the dialogue)."""
        text = dialogue_line("", decode_completions(self.tokenizer, [self._turn])[0])
        self._turn = []
        goal = self._scenario.goal
        outcome = self.user.judge(goal, self._state, text)
        reply = self.user.reply(goal, outcome, self.np_random)
        self._lines.append(dialogue_line(AGENT, text))
        if reply is not None:
            self._append(self._reply_ids[reply], role=0)
            self._lines.append(dialogue_line(USER, reply))
        info: dict[str, Any] = {"true_reward": outcome.reward, "turn_score": outcome.closeness,
                                "turn_text": text, "user_reply": reply}  # fmt: skip
        if outcome.end is not None:
            self._done = True
            info.update(opening=self._scenario.opening, dialogue="\n".join(self._lines[1:]),
                        dialogue_score=self.user.dialogue_score(goal, self.turn_texts()),
                        turns=self._state.turns, end=outcome.end)  # fmt: skip
        terminated = outcome.end in ("goal", "left")
        return self._obs(), outcome.reward, terminated, outcome.end == "cap", info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return self.dialogue_text()

    # ------------------------------------------------------------------ helpers

    def dialogue_scorer(self) -> DialogueScore:
        """The true score of ``(opening, dialogue)`` texts under this env's scenarios and rules."""
        return DialogueScore(self.scenarios, self.user.rules)

    def turn_scorer(self) -> TurnScore:
        """The true score of ``(dialogue so far, turn)`` texts (``info["turn_score"]``)."""
        return TurnScore(self.scenarios, self.user.rules)

    def dialogue_text(self) -> str:
        """The dialogue so far in text form (a turn in progress is not shown)."""
        return "\n".join(self._lines)

    def turn_texts(self) -> list[str]:
        """The policy's finished turns so far."""
        prefix = len(AGENT)
        return [line[prefix:] for line in self._lines if line.startswith(AGENT)]

    def _append(self, ids: Sequence[int], role: int) -> None:
        n = len(ids)
        if n == 0:
            return
        for array, values in ((self._ids, ids), (self._mask, [1] * n), (self._role, [role] * n)):
            array[:-n] = array[n:]
            array[-n:] = values

    def _obs(self) -> ObsDict:
        return {
            "input_ids": self._ids.copy(),
            "attention_mask": self._mask.copy(),
            "prompt_length": self._prompt_length.copy(),
            "role": self._role.copy(),
        }


TURN_CHARSET = frozenset(string.ascii_letters + string.digits + " .,!?'-")
"""Characters of a turn-level action: ASCII, one byte each, so a turn of ``n`` characters is at
most ``n`` tokens of a byte-level tokenizer."""


class DialogueTextEnv(gym.Wrapper[str, str, ObsDict, np.int64]):
    """Turn-level view of a :class:`DialogueEnv`: one step = one policy turn, as text.

    Observation: ``Text``: the dialogue so far in text form (``"user: ..."`` / ``"agent: ..."``
    lines). Action: ``Text(max_length=max_turn_tokens - 1)`` over :data:`TURN_CHARSET`: the
    turn's text; the wrapper feeds its tokens and an EOS to the token-level env, so every action
    of the space fits a turn. Reward: the turn's true reward; terminated/truncated as the
    token-level env; info: the token-level env's turn-ending info.

    Raises (on step): ``ValueError`` for a turn that does not fit ``max_turn_tokens`` (e.g.
    non-ASCII text) or is not a string.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        inner = env.unwrapped
        if not isinstance(inner, DialogueEnv):
            raise TypeError(f"DialogueTextEnv wraps a DialogueEnv, got {type(inner).__name__}")
        self.dialogue = inner
        self.action_space = spaces.Text(
            inner.max_turn_tokens - 1, min_length=0, charset=TURN_CHARSET
        )
        replies = max(map(len, inner.replies)) + len(USER) + 1
        longest = max(len(s.opening) for s in inner.scenarios) + len(USER)
        token_chars = max(
            len(t) for t in inner.tokenizer.batch_decode([[i] for i in range(inner.vocab_size)])
        )
        turn_chars = (inner.max_turn_tokens - 1) * token_chars
        turns = inner.user.rules.max_turns * (len(AGENT) + 1 + turn_chars + replies)
        charset = (
            TURN_CHARSET
            | set("\n:")
            | {c for s in inner.replies for c in s}
            | {c for s in inner.scenarios for c in s.opening}
        )
        self.observation_space = spaces.Text(
            longest + turns, min_length=1, charset=frozenset(charset)
        )

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        _, info = self.env.reset(seed=seed, options=options)
        return self.dialogue.dialogue_text(), info

    def step(self, action: str) -> tuple[str, SupportsFloat, bool, bool, dict[str, Any]]:
        if not isinstance(action, str):
            raise ValueError(f"a turn is a string of text, got {type(action).__name__}")
        outside = sorted(set(action) - TURN_CHARSET)
        if outside:
            raise ValueError(
                f"the turn {action[:40]!r} has characters {outside} outside the action space's "
                f"charset (ASCII letters, digits and {' .,!?-'!r} plus the apostrophe): rewrite it"
            )
        ids = self.dialogue.encode([action])[0] if action else []
        cap = self.dialogue.max_turn_tokens
        if len(ids) + 1 > cap:
            raise ValueError(
                f"the turn {action[:40]!r}... is {len(ids)} tokens + EOS, longer than a turn's "
                f"max_turn_tokens={cap}: shorten it or make the env with a larger max_turn_tokens"
            )
        for token in [*ids, self.dialogue.eos_token_id]:
            _, reward, terminated, truncated, info = self.env.step(token)
        return self.dialogue.dialogue_text(), reward, terminated, truncated, info
