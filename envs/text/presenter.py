"""The prompt and two completions of a text query, for a human labeller (a :class:`PairPresenter`).

Two kinds of text segments reach a labeller:

- **text segments** of the text pipeline (:func:`prefenv.text_records.text_segment`, JSONL
  imports): no features, the texts are in ``context`` and read with
  :func:`~prefenv.text_records.segment_texts`;
- **token segments** recorded on :class:`~envs.text.token_env.TextGenerationEnv`: flat
  observations ``[H + 1, D]`` of its ``Dict`` observation. The last row holds the whole window
  (prompt and every token generated so far), decoded with the env's tokenizer exactly as the env
  reports ``info["completion"]`` (:func:`~envs.text.token_env.decode_completions`). A segment
  that ends before the episode does shows the completion up to its last token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from envs.text.token_env import TextGenerationEnv, decode_completions
from prefenv.presenters import check_stem
from prefenv.records import Segment
from prefenv.spaces import flat_dim
from prefenv.text_records import segment_texts

__all__ = ["TextPresenter"]


class TextPresenter:
    """Show a query as its prompt and the two completions side by side.

    Args:
        env: a text env (``gymnasium.make("prefenv/TextSentiment-v0", ...)`` with the run's env
            kwargs: its tokenizer decodes token segments).

    Raises:
        TypeError: ``env`` is not a :class:`~envs.text.token_env.TextGenerationEnv`.
    """

    def __init__(self, env: gym.Env) -> None:
        base = env.unwrapped
        if not isinstance(base, TextGenerationEnv):
            raise TypeError(
                f"TextPresenter shows TextGenerationEnv text, got {type(base).__name__}"
            )
        self.tokenizer = base.tokenizer
        # flat observation = the Dict entries concatenated in the space's key order (FlatSpec)
        self._slices: dict[str, slice] = {}
        start = 0
        for key, space in base.observation_space.spaces.items():
            self._slices[key] = slice(start, start + flat_dim(space))
            start += flat_dim(space)
        self.obs_dim = start

    def present(
        self, segment0: Segment, segment1: Segment, folder: Path, stem: str
    ) -> dict[str, Any]:
        """The ``"text"`` media dict (nothing is written to ``folder``).

        ``"prompt"`` is the shared prompt; when the two segments have different prompts it is
        ``""`` and ``"left_prompt"`` / ``"right_prompt"`` hold each one.
        """
        check_stem(stem)
        prompt0, left = self.texts(segment0, "the left segment")
        prompt1, right = self.texts(segment1, "the right segment")
        media: dict[str, Any] = {"kind": "text", "prompt": prompt0, "left": left, "right": right}
        if prompt0 != prompt1:
            media.update(prompt="", left_prompt=prompt0, right_prompt=prompt1)
        return media

    def texts(self, segment: Segment, where: str) -> tuple[str, str]:
        """``(prompt, completion)`` of a text segment or a token segment.

        Raises:
            ValueError: a featureless segment without context texts, or features that are not
                this env's flat observation.
        """
        width = segment.obs.shape[1]
        if width == 0:
            return segment_texts(segment, where)
        if width != self.obs_dim:
            raise ValueError(
                f"{where} has observations of size {width}, but this text env's flat "
                f"observation has {self.obs_dim}: was it recorded with another max_prompt_tokens "
                "or max_new_tokens?"
            )
        last = segment.obs[-1]
        ids = last[self._slices["input_ids"]].astype(np.int64)
        real = ids[last[self._slices["attention_mask"]] > 0.5]
        n_prompt = int(last[self._slices["prompt_length"]][0])
        prompt = self.tokenizer.decode(real[:n_prompt].tolist(), skip_special_tokens=True)
        completion = decode_completions(self.tokenizer, [real[n_prompt:].tolist()])[0]
        return prompt.strip(), completion
