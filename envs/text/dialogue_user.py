"""The scripted user of the dialogue task: hidden goals, scenarios, reply templates, true scores.

A *scenario* is a user's opening message and the hidden :class:`Goal` that comes with it. Two
kinds of goal, both within reach of a tiny LM trained on CPU:

- ``"tone"``: the user wants an upbeat answer. A turn's *closeness* is ``max(0, VADER
  compound)`` of the turn; the goal is met by a turn whose compound is ``>= tone_threshold``.
- ``"topic"``: the user wants to hear about one aspect (``target``) of the opening's domain
  ("the dessert" of a restaurant). Closeness is 1 when the turn names the target,
  ``on_topic_credit`` when it names another aspect of the domain, else 0; naming the target
  meets the goal. After a miss the user asks for the target, so the goal is hidden only until
  the policy's first turn misses it.

**The rules** (:class:`UserRules`, applied by :meth:`ScriptedUser.judge`, the one place they
live): after each policy turn the user ends the dialogue when the goal is met (thanks) or after
``patience`` turns in a row that brought no progress (leaves); else, after ``max_turns`` policy
turns, the dialogue is cut (no reply); otherwise the user replies with a template that depends on
whether the turn moved toward the goal (closeness above the best so far).

**The true score.** A turn's reward is its progress (the rise of the best closeness so far) minus
``turn_cost``, so a dialogue's return, its *dialogue score*, is ``best closeness - turn_cost *
turns``: how close the policy got, less a cost per turn that makes an early success worth more.
The user's replies never enter it, so the score is a function of the opening (which fixes the
goal) and the policy's turns: :class:`DialogueScore` computes it from text, as a
:class:`~envs.text.scorers.Scorer` of ``(opening, dialogue)``, and :class:`TurnScore` scores a
single turn in its context. Both equal what the env pays (tested).

**Text form** of a dialogue (what the turn-level wrapper shows, what teachers and text reward
models read): one line per message, ``"user: ..."`` or ``"agent: ..."``. As a ``(prompt,
completion)`` pair the prompt is the opening's text and the completion the lines after it.

Templates use the default corpus's words (:mod:`envs.text.corpus`), so the project's tokenizer
and default model serve the task unchanged (see the module docstring of :mod:`envs.text.dialogue`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from envs.text.corpus import ASPECTS, NOUN, VERB_NEU
from envs.text.scorers import VaderSentiment, words

__all__ = [
    "AGENT",
    "GOALS",
    "USER",
    "DialogueScore",
    "DialogueState",
    "Goal",
    "Scenario",
    "ScriptedUser",
    "TurnOutcome",
    "TurnScore",
    "UserRules",
    "agent_turns",
    "dialogue_line",
    "generate_scenarios",
]

GOALS: tuple[str, ...] = ("tone", "topic")
"""The goal kinds a scenario can hide."""

USER, AGENT = "user: ", "agent: "
"""Line prefixes of the text form."""

_OPENINGS: tuple[str, ...] = ("We {verb} this {noun}{when}.", "I {verb} this {noun}{when}.")
_WHEN: tuple[str, ...] = ("", " today", " last week", " with my family", " with my friends")
_PROGRESS: tuple[str, ...] = (" okay, and what else?", " i see, go on.", " good, tell me more.")
_TONE_MISS: tuple[str, ...] = (" that sounds bad. was anything good?", " hmm, anything nice?")
_TOPIC_MISS: tuple[str, ...] = (
    " and what about the {target}?",
    " i want to hear about the {target}.",
)
_THANKS: tuple[str, ...] = (" thanks, that is what i wanted.", " great, thank you.")
_LEAVE: tuple[str, ...] = (" never mind, bye.",)


@dataclass(frozen=True)
class Goal:
    """A user's hidden goal.

    Attributes:
        kind: ``"tone"`` or ``"topic"``.
        domain: ``"movie"``, ``"restaurant"`` or ``"book"`` (the opening's subject).
        target: the aspect the user wants to hear about (``"topic"``), None for ``"tone"``.
    """

    kind: Literal["tone", "topic"]
    domain: str
    target: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in GOALS:
            raise ValueError(f"unknown goal {self.kind!r}: choose one of {list(GOALS)}")
        if self.domain not in ASPECTS:
            raise ValueError(f"unknown domain {self.domain!r}: choose one of {sorted(ASPECTS)}")
        if (self.kind == "topic") != (self.target is not None):
            raise ValueError("a 'topic' goal needs a target aspect and a 'tone' goal has none")
        if self.target is not None and self.target not in ASPECTS[self.domain]:
            raise ValueError(
                f"target {self.target!r} is not an aspect of a {self.domain}: choose one of "
                f"{list(ASPECTS[self.domain])}"
            )

    def __str__(self) -> str:
        return self.kind if self.target is None else f"{self.kind}:{self.target}"


@dataclass(frozen=True)
class Scenario:
    """A user's opening message and the hidden goal behind it."""

    opening: str
    goal: Goal


def check_goals(goals: Iterable[str]) -> tuple[str, ...]:
    """The goal kinds as a tuple; raises ``ValueError`` naming the choices on an unknown one."""
    goals = tuple(goals)
    unknown = [g for g in goals if g not in GOALS]
    if unknown or not goals:
        raise ValueError(
            f"unknown or no goals {unknown or list(goals)}: pick one or more of {list(GOALS)}, "
            "e.g. goals=('tone',)"
        )
    return goals


def generate_scenarios(goals: Sequence[str] = GOALS, seed: int = 3) -> list[Scenario]:
    """Every distinct opening of the templates (30), each with a seeded hidden goal.

    Openings are unique, so the opening text fixes the goal: a true score is a function of
    ``(opening, dialogue)`` text, and ``G`` dialogues of one opening share their goal.
    """
    goals = check_goals(goals)
    rng = np.random.default_rng(seed)
    scenarios = []
    for domain, template, when in itertools.product(ASPECTS, _OPENINGS, _WHEN):
        verb = VERB_NEU[domain][int(rng.integers(len(VERB_NEU[domain])))]
        opening = template.format(verb=verb, noun=NOUN[domain], when=when)
        kind = goals[int(rng.integers(len(goals)))]
        aspects = ASPECTS[domain]
        target = aspects[int(rng.integers(len(aspects)))] if kind == "topic" else None
        scenarios.append(Scenario(opening, Goal(kind, domain, target)))  # type: ignore[arg-type]
    return scenarios


@dataclass(frozen=True)
class UserRules:
    """How the scripted user judges a turn and when it ends the dialogue.

    Attributes:
        max_turns: policy turns before the dialogue is cut (``truncated``).
        patience: turns in a row without progress after which the user leaves.
        tone_threshold: VADER compound a turn needs to meet a ``"tone"`` goal.
        on_topic_credit: closeness of a turn that names another aspect of the domain.
        turn_cost: subtracted from every turn's reward.
    """

    max_turns: int = 3
    patience: int = 2
    tone_threshold: float = 0.5
    on_topic_credit: float = 0.25
    turn_cost: float = 0.05

    def __post_init__(self) -> None:
        if self.max_turns < 1 or self.patience < 1:
            raise ValueError(
                f"max_turns and patience must be >= 1, got {self.max_turns} and {self.patience}"
            )
        if not (0 < self.tone_threshold <= 1 and 0 <= self.on_topic_credit < 1):
            raise ValueError(
                f"need 0 < tone_threshold <= 1 and 0 <= on_topic_credit < 1, got "
                f"{self.tone_threshold} and {self.on_topic_credit}"
            )
        if self.turn_cost < 0:
            raise ValueError(f"turn_cost must be >= 0, got {self.turn_cost}")


@dataclass
class DialogueState:
    """What the user remembers: policy turns so far, best closeness, turns without progress."""

    turns: int = 0
    best: float = 0.0
    misses: int = 0


@dataclass(frozen=True)
class TurnOutcome:
    """The user's judgement of one policy turn.

    Attributes:
        closeness: how close this turn alone came to the goal, in ``[0, 1]`` (the turn score).
        reward: the turn's true reward, ``best closeness rise - turn_cost``.
        progress: the turn raised the best closeness.
        end: ``"goal"`` (met: terminated), ``"left"`` (out of patience: terminated), ``"cap"``
            (``max_turns`` reached: truncated) or None (the dialogue goes on).
    """

    closeness: float
    reward: float
    progress: bool
    end: Literal["goal", "left", "cap"] | None


@dataclass
class ScriptedUser:
    """The rules and templates of the simulated user (no state of its own: see
    :class:`DialogueState`)."""

    rules: UserRules = field(default_factory=UserRules)

    def closeness(self, goal: Goal, turn: str) -> tuple[float, bool]:
        """``(closeness in [0, 1], goal met)`` of one policy turn's text."""
        if goal.kind == "tone":
            compound = VaderSentiment()("", turn)
            return max(0.0, compound), compound >= self.rules.tone_threshold
        said = set(words(turn))
        if goal.target in said:
            return 1.0, True
        on_topic = any(a in said for a in ASPECTS[goal.domain])
        return (self.rules.on_topic_credit if on_topic else 0.0), False

    def judge(self, goal: Goal, state: DialogueState, turn: str) -> TurnOutcome:
        """Score one policy turn and update ``state`` (the rules of the module docstring)."""
        closeness, met = self.closeness(goal, turn)
        progress = closeness > state.best
        reward = max(closeness - state.best, 0.0) - self.rules.turn_cost
        state.best = max(state.best, closeness)
        state.misses = 0 if progress else state.misses + 1
        state.turns += 1
        end: Literal["goal", "left", "cap"] | None = None
        if met:
            end = "goal"
        elif state.misses >= self.rules.patience:
            end = "left"
        elif state.turns >= self.rules.max_turns:
            end = "cap"
        return TurnOutcome(closeness, reward, progress, end)

    def reply(self, goal: Goal, outcome: TurnOutcome, rng: np.random.Generator) -> str | None:
        """The user's next message (leading space, lower case), None when the dialogue is cut."""
        if outcome.end == "cap":
            return None
        if outcome.end == "goal":
            options = _THANKS
        elif outcome.end == "left":
            options = _LEAVE
        elif outcome.progress:
            options = _PROGRESS
        else:
            options = _TONE_MISS if goal.kind == "tone" else _TOPIC_MISS
        return options[int(rng.integers(len(options)))].format(target=goal.target)

    @staticmethod
    def all_replies(goals: Iterable[Goal]) -> list[str]:
        """Every message the user can send after a turn for these goals (sizes the window)."""
        targets = {g.target for g in goals if g.target is not None}
        fixed = _PROGRESS + _TONE_MISS + _THANKS + _LEAVE
        return list(fixed) + [t.format(target=x) for t in _TOPIC_MISS for x in sorted(targets)]

    def dialogue_score(self, goal: Goal, turns: Sequence[str]) -> float:
        """The dialogue's true score from its policy turns (turns after the end are ignored)."""
        state = DialogueState()
        score = 0.0
        for turn in turns:
            outcome = self.judge(goal, state, turn)
            score += outcome.reward
            if outcome.end is not None:
                break
        return score


def dialogue_line(prefix: str, text: str) -> str:
    """One line of the text form: ``prefix + text`` with line breaks in ``text`` made spaces."""
    return prefix + " ".join(text.split("\n")).replace("\r", " ").strip()


def agent_turns(completion: str) -> list[str]:
    """The policy's turns in a dialogue's text form (lines that start with ``"agent:"``)."""
    prefix = AGENT.strip()
    return [
        line[len(prefix) :].strip() for line in completion.split("\n") if line.startswith(prefix)
    ]


class _ByOpening:
    """Scenarios looked up by opening text (shared by the two scorers)."""

    def __init__(self, scenarios: Sequence[Scenario], rules: UserRules | None = None) -> None:
        self.goals = {s.opening: s.goal for s in scenarios}
        if len(self.goals) != len(scenarios):
            raise ValueError("scenario openings must be unique: the opening fixes the goal")
        self.user = ScriptedUser(rules or UserRules())

    def goal(self, opening: str) -> Goal:
        opening = opening.removeprefix(USER).strip()
        if opening not in self.goals:
            raise ValueError(
                f"opening {opening[:60]!r} is not one of the {len(self.goals)} scenarios: score "
                "dialogues with the scenarios of the env that produced them (env.scenarios)"
            )
        return self.goals[opening]


class DialogueScore(_ByOpening):
    """True dialogue score of ``(opening, dialogue)`` text: the env's episode return.

    ``prompt`` is the opening (with or without the ``"user: "`` prefix), ``completion`` the text
    form of the rest of the dialogue; only its ``"agent:"`` lines count.

    Args:
        scenarios: the env's scenarios (``env.scenarios``).
        rules: the env's rules (default :class:`UserRules`).
    """

    def __call__(self, prompt: str, completion: str) -> float:
        return self.user.dialogue_score(self.goal(prompt), agent_turns(completion))


class TurnScore(_ByOpening):
    """Closeness of one policy turn to the goal, given the dialogue so far: ``(context, turn)``.

    ``prompt`` is the dialogue so far in text form, its first line the opening; ``completion``
    is the turn. Equals the env's ``info["turn_score"]`` for that turn.
    """

    def __call__(self, prompt: str, completion: str) -> float:
        return self.user.closeness(self.goal(prompt.split("\n", 1)[0]), completion)[0]
