"""True scores of the text tasks: plain functions of ``(prompt, completion)`` text.

A :class:`Scorer` is any callable ``(prompt, completion) -> float``. The env calls one for the
returned reward (pluggable: the true score by default, a learned text reward model in RLHF) and
one for the hidden true score in ``info["true_reward"]``. The three task scores:

- :class:`VaderSentiment`: VADER compound score of the completion, in [-1, 1] (Hutto & Gilbert
  2014, the human-rated lexicon of the ``vaderSentiment`` package).
- :class:`KeywordInclusion`: fraction of the target keywords the completion mentions, in [0, 1].
- :class:`Conciseness`: distinct content words (capped) minus a per-word length cost, so padding
  a completion with words lowers the score: the trap for a verbosity-biased annotator.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from envs.text.corpus import SENTIMENT_WORDS, TOPIC_WORDS

__all__ = ["Conciseness", "KeywordInclusion", "Scorer", "VaderSentiment", "words"]

_WORD = re.compile(r"[a-z']+")


def words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (runs of letters and apostrophes)."""
    return _WORD.findall(text.lower())


@runtime_checkable
class Scorer(Protocol):
    """Scores one finished episode from its text."""

    def __call__(self, prompt: str, completion: str) -> float:
        """Score of ``completion`` generated after ``prompt`` (higher is better)."""
        ...


@functools.lru_cache(maxsize=1)
def _vader():  # noqa: ANN202 - vaderSentiment is untyped
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


class VaderSentiment:
    """VADER compound sentiment of the completion only (the prompt is opinion-free), in [-1, 1]."""

    def __call__(self, prompt: str, completion: str) -> float:
        return float(_vader().polarity_scores(completion)["compound"])


class KeywordInclusion:
    """Fraction of ``keywords`` that appear as whole words in the completion, in [0, 1].

    Args:
        keywords: target words (case-insensitive); default a food topic, ``("dessert",
            "coffee")``.
    """

    def __init__(self, keywords: Iterable[str] = ("dessert", "coffee")) -> None:
        self.keywords = tuple(k.lower() for k in keywords)
        if not self.keywords:
            raise ValueError("KeywordInclusion needs at least one keyword")
        bad = [k for k in self.keywords if words(k) != [k]]
        if bad:
            raise ValueError(f"keywords must be single words (letters and '), got {bad}")

    def __call__(self, prompt: str, completion: str) -> float:
        present = set(words(completion))
        return sum(k in present for k in self.keywords) / len(self.keywords)


class Conciseness:
    """Content per word: ``min(distinct content words, cap) / cap - length_cost * n_words``.

    Content words are the corpus's topic nouns and opinion adjectives (``TOPIC_WORDS`` |
    ``SENTIMENT_WORDS``). "The pasta was delicious and the service friendly." scores about
    0.75 - 0.14 = 0.61; the same content padded to 40 words scores about 0. Range
    ``[-length_cost * max_words, 1]``.

    Args:
        content_cap: distinct content words that earn the full content score.
        length_cost: cost per completion word.
    """

    def __init__(self, content_cap: int = 4, length_cost: float = 0.02) -> None:
        if content_cap < 1 or length_cost < 0:
            raise ValueError(
                f"need content_cap >= 1 and length_cost >= 0, got {content_cap}, {length_cost}"
            )
        self.content_cap = content_cap
        self.length_cost = length_cost
        self.content_words = TOPIC_WORDS | SENTIMENT_WORDS

    def __call__(self, prompt: str, completion: str) -> float:
        ws = words(completion)
        content = len(self.content_words.intersection(ws))
        return min(content, self.content_cap) / self.content_cap - self.length_cost * len(ws)
