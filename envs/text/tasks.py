"""The registered text tasks: :class:`TextGenerationEnv` with a named true score.

=========================== =========== ==========================================================
id                          ``task``    true score of (prompt, completion)
=========================== =========== ==========================================================
prefenv/TextSentiment-v0    sentiment   VADER compound of the completion, [-1, 1]
prefenv/TextKeyword-v0      keyword     fraction of the keywords mentioned, [0, 1]
prefenv/TextConcise-v0      concise     capped distinct content words - 0.02 per word
=========================== =========== ==========================================================
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from envs.text.corpus import generate_prompts
from envs.text.scorers import Conciseness, KeywordInclusion, Scorer, VaderSentiment
from envs.text.token_env import TextGenerationEnv

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["TASKS", "TextTask"]

TASKS: dict[str, Callable[..., Scorer]] = {
    "sentiment": VaderSentiment,
    "keyword": KeywordInclusion,
    "concise": Conciseness,
}
"""Task name -> the scorer class of its true score."""


class TextTask(TextGenerationEnv):
    """A registered text task (see the module table); everything else is
    :class:`~envs.text.token_env.TextGenerationEnv` (observation, action, reward, termination and
    truncation are documented there).

    Args:
        task: ``"sentiment"``, ``"keyword"`` or ``"concise"``.
        tokenizer: tokenizer object or local directory; None = the project's default tokenizer
            (the one :func:`envs.text.build_default_lm` saves with the default model).
        prompts: prompt pool; None = 200 generated opinion-free review openings.
        scorer_kwargs: constructor arguments of the task's scorer, e.g.
            ``{"keywords": ["soundtrack"]}`` or ``{"length_cost": 0.05}``.
        max_prompt_tokens: longest prompt in tokens.
        max_new_tokens: tokens before truncation.
        render_mode: None or ``"ansi"``.
    """

    def __init__(
        self,
        task: str,
        tokenizer: PreTrainedTokenizerBase | str | os.PathLike[str] | None = None,
        prompts: str | os.PathLike[str] | Iterable[str] | None = None,
        scorer_kwargs: Mapping[str, Any] | None = None,
        max_prompt_tokens: int = 16,
        max_new_tokens: int = 48,
        render_mode: str | None = None,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown text task {task!r}: choose one of {sorted(TASKS)}")
        self.task = task
        super().__init__(
            prompts=generate_prompts() if prompts is None else prompts,
            true_scorer=TASKS[task](**(scorer_kwargs or {})),
            tokenizer=tokenizer,
            max_prompt_tokens=max_prompt_tokens,
            max_new_tokens=max_new_tokens,
            render_mode=render_mode,
        )
