"""Token-level text generation as a Gymnasium 1.x environment.

One step = one generated token. The env holds only a tokenizer (no language model): the agent's
policy *is* the language model, so any local Hugging Face causal LM whose embedding covers the
tokenizer can act in it. The env's own reward is the task's true score; a learned text reward
model replaces it through the same wrapper as every other family
(:class:`prefenv.wrappers.VectorPreferenceReward` holding the model's
:mod:`~envs.text.reward_predictor`), scored in one batch per vector step.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.text.scorers import Scorer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["TextGenerationEnv", "decode_completions", "load_prompts", "resolve_tokenizer"]

ObsDict = dict[str, np.ndarray]


def load_prompts(
    source: str | os.PathLike[str] | Iterable[str] | Iterable[Mapping[str, Any]],
    prompt_key: str = "prompt",
) -> list[str]:
    """A prompt pool from a list, a text file or a dataset.

    A file holds one prompt per line; blank lines are skipped. An iterable may yield strings or
    mappings (rows of a Hugging Face ``datasets.Dataset`` or of a ``prompt``/``chosen``/
    ``rejected`` JSONL file), whose ``prompt_key`` entry is the prompt. Raises ``ValueError`` on
    an empty pool and ``FileNotFoundError`` on a string that is not an existing file.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(
                f"prompts={str(source)!r} is not an existing file: pass a list of prompt strings "
                "(prompts=['The pasta was', ...]) or the path of a file with one prompt per line"
            )
        prompts = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()]
        prompts = [p for p in prompts if p.strip()]
        where = f"file {str(path)!r} (blank lines are skipped)"
    else:
        prompts = [_prompt_of(item, prompt_key) for item in source]
        where = "the given prompt list"
    if not prompts:
        raise ValueError(
            f"the prompt pool is empty: {where} holds no prompts; give at least one prompt"
        )
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompts must be strings; item {bad[0]} is {type(prompts[bad[0]])!r}")
    return prompts


def _prompt_of(item: Any, key: str) -> Any:
    if isinstance(item, Mapping):
        if key not in item:
            raise KeyError(
                f"a prompt row has no {key!r} field (fields: {sorted(item)}); pass prompt_key="
            )
        return item[key]
    return item


def decode_completions(
    tokenizer: PreTrainedTokenizerBase, completions: Sequence[Sequence[int]]
) -> list[str]:
    """Completion texts of generated token ids: a final EOS dropped, special tokens removed,
    surrounding spaces stripped (how the env reports ``info["completion"]``)."""
    eos = tokenizer.eos_token_id
    trimmed = [list(ids[:-1]) if len(ids) and ids[-1] == eos else list(ids) for ids in completions]
    return [text.strip() for text in tokenizer.batch_decode(trimmed, skip_special_tokens=True)]


def resolve_tokenizer(
    tokenizer: PreTrainedTokenizerBase | str | os.PathLike[str] | None,
) -> PreTrainedTokenizerBase:
    """``None`` -> the default tokenizer; a local directory -> ``AutoTokenizer`` from it."""
    if tokenizer is None:
        from envs.text.default_model import default_tokenizer

        return default_tokenizer()
    if isinstance(tokenizer, (str, os.PathLike)):
        path = Path(tokenizer)
        if not path.is_dir():
            raise FileNotFoundError(
                f"tokenizer={str(tokenizer)!r} is not a local directory; prefenv never downloads: "
                "pass a directory written by tokenizer.save_pretrained(dir) or a tokenizer object"
            )
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    return tokenizer


class TextGenerationEnv(gym.Env[ObsDict, np.int64]):
    """Generate a completion for a prompt, one token per step; scored when it ends.

    Observation (``Dict``), a fixed window of ``L = max_prompt_tokens + max_new_tokens``
    positions, *left-padded* so the newest token is always the last entry:

    - ``"input_ids"``: ``Box(0, vocab - 1, (L,), int64)``: ``[pad ... pad, prompt, generated]``
      (the prompt starts with the BOS token when the tokenizer has one and ``add_bos``).
    - ``"attention_mask"``: ``MultiBinary(L)`` (int8): 1 on real tokens, 0 on padding.
    - ``"prompt_length"``: ``Box(1, L, (1,), int64)``: how many of the real tokens are the
      prompt (BOS included; at most ``max_prompt_tokens``), so the observation alone splits
      ``(prompt, completion)`` (what a learned text reward reads). Its bound is the window, so
      sub-envs with equal windows share one observation space.

    Action: ``Discrete(vocab)``, the next token id (``vocab = len(tokenizer)``).

    Reward: 0 on every step but the last; on the last step the true score
    ``true_scorer(prompt, completion)``. Under RLHF a learned-reward wrapper replaces it with a
    text reward model's score. ``info["true_reward"]`` holds the true score on the last step and
    0 before, so a segment's summed true reward is the episode's true score. The
    last step's info also has ``"prompt"``, ``"completion"`` (decoded, EOS and special tokens
    removed) and ``"completion_tokens"``; reset's info has ``"prompt"`` and ``"prompt_index"``.

    Termination (``terminated``): the action is the EOS token (the EOS is part of the episode).

    Truncation (``truncated``): ``max_new_tokens`` tokens were generated without EOS.

    Prompts come from ``prompts`` (list, iterable or file) and are drawn uniformly with the env's
    seeded ``np_random``; ``reset(options={"prompt": text})`` or ``{"prompt_index": i}`` picks one.

    Args:
        prompts: the prompt pool (see :func:`load_prompts`).
        true_scorer: the hidden true score of ``(prompt, completion)``.
        tokenizer: a Hugging Face tokenizer, a local tokenizer directory, or None for the
            project's default tokenizer. It needs an EOS token.
        max_prompt_tokens: longest prompt (in tokens, BOS included); longer prompts are an error.
        max_new_tokens: generated tokens before truncation.
        add_bos: prepend the tokenizer's BOS token to every prompt (if it has one).
        render_mode: None or ``"ansi"`` (``render()`` returns prompt + completion so far).
    """

    metadata = {
        "render_modes": ["ansi"],
        "render_fps": 4,
        "prefenv_presenter": "envs.text.presenter:TextPresenter",
    }
    """``prefenv_presenter``: a human labeller sees a query as its prompt and two completions."""

    def __init__(
        self,
        prompts: str | os.PathLike[str] | Iterable[str] | Iterable[Mapping[str, Any]],
        true_scorer: Scorer,
        tokenizer: PreTrainedTokenizerBase | str | os.PathLike[str] | None = None,
        max_prompt_tokens: int = 16,
        max_new_tokens: int = 48,
        add_bos: bool = True,
        render_mode: str | None = None,
    ) -> None:
        if max_prompt_tokens < 1 or max_new_tokens < 1:
            raise ValueError(
                f"max_prompt_tokens and max_new_tokens must be >= 1, got {max_prompt_tokens} and "
                f"{max_new_tokens}"
            )
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.tokenizer = resolve_tokenizer(tokenizer)
        if self.tokenizer.eos_token_id is None:
            raise ValueError(
                "the tokenizer has no EOS token, so episodes could never terminate: set one with "
                "tokenizer.add_special_tokens({'eos_token': '<|eos|>'}) (and resize the model)"
            )
        self.true_scorer = true_scorer
        self.max_prompt_tokens = max_prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.add_bos = add_bos
        self.render_mode = render_mode
        self.eos_token_id = int(self.tokenizer.eos_token_id)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else self.eos_token_id
        self.vocab_size = len(self.tokenizer)
        self.window = max_prompt_tokens + max_new_tokens
        self.prompts = load_prompts(prompts)
        self.prompt_ids = self.encode_prompts(self.prompts)
        self.observation_space = spaces.Dict(
            {
                "input_ids": spaces.Box(0, self.vocab_size - 1, (self.window,), np.int64),
                "attention_mask": spaces.MultiBinary(self.window),
                "prompt_length": spaces.Box(1, self.window, (1,), np.int64),
            }
        )
        self.action_space = spaces.Discrete(self.vocab_size)
        self._ids = np.full(self.window, self.pad_token_id, dtype=np.int64)
        self._mask = np.zeros(self.window, dtype=np.int8)
        self._prompt_length = np.ones(1, dtype=np.int64)
        self._prompt = ""
        self._completion: list[int] = []
        self._done = True

    # ------------------------------------------------------------------ prompts

    def encode_prompts(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of every prompt (BOS first when enabled); checks they fit the window."""
        encoded = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        if self.add_bos and bos is not None:
            encoded = [[int(bos), *ids] for ids in encoded]
        lengths = np.array([len(ids) for ids in encoded])
        empty = np.flatnonzero(lengths == 0)
        if empty.size:
            raise ValueError(
                f"prompt {int(empty[0])} encodes to no tokens ({empty.size} such prompts) and the "
                "tokenizer has no BOS token to start from: drop empty prompts or use add_bos=True "
                "with a tokenizer that has a BOS token"
            )
        too_long = np.flatnonzero(lengths > self.max_prompt_tokens)
        if too_long.size:
            i = int(too_long[0])
            raise ValueError(
                f"{too_long.size} of {len(prompts)} prompts are longer than max_prompt_tokens="
                f"{self.max_prompt_tokens} (the observation window holds max_prompt_tokens + "
                f"max_new_tokens = {self.window} tokens); the first is prompt {i} "
                f"({prompts[i][:60]!r}...) with {int(lengths[i])} tokens, the longest has "
                f"{int(lengths.max())}: raise max_prompt_tokens to at least {int(lengths.max())} "
                "or shorten/drop those prompts"
            )
        return [list(map(int, ids)) for ids in encoded]

    def pool_index(self, index: Any) -> int:
        """``index`` as a position in the prompt pool (``reset(options={"prompt_index": i})``)."""
        index = int(index)
        if not 0 <= index < len(self.prompts):
            raise IndexError(
                f"prompt_index {index} is outside the pool of {len(self.prompts)} prompts"
            )
        return index

    # ------------------------------------------------------------------ Gymnasium API

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[ObsDict, dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        if "prompt" in options:
            index = -1
            self._prompt = str(options["prompt"])
            ids = self.encode_prompts([self._prompt])[0]
        else:
            if "prompt_index" in options:
                index = self.pool_index(options["prompt_index"])
            else:
                index = int(self.np_random.integers(len(self.prompts)))
            self._prompt = self.prompts[index]
            ids = self.prompt_ids[index]
        self._ids.fill(self.pad_token_id)
        self._mask.fill(0)
        self._ids[-len(ids) :] = ids
        self._mask[-len(ids) :] = 1
        self._prompt_length[0] = len(ids)
        self._completion = []
        self._done = False
        return self._obs(), {"prompt": self._prompt, "prompt_index": index}

    def step(self, action: Any) -> tuple[ObsDict, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("the episode has ended (EOS or max_new_tokens): call reset()")
        token = int(action)
        if not 0 <= token < self.vocab_size:
            raise ValueError(f"action {token} is not a token id in [0, {self.vocab_size})")
        self._ids[:-1] = self._ids[1:]
        self._mask[:-1] = self._mask[1:]
        self._ids[-1] = token
        self._mask[-1] = 1
        self._completion.append(token)
        terminated = token == self.eos_token_id
        truncated = not terminated and len(self._completion) >= self.max_new_tokens
        if not (terminated or truncated):
            return self._obs(), 0.0, False, False, {"true_reward": 0.0}
        self._done = True
        completion = self.completion_text()
        true_score = float(self.true_scorer(self._prompt, completion))
        info = {
            "true_reward": true_score,
            "prompt": self._prompt,
            "completion": completion,
            "completion_tokens": len(self._completion),
        }
        return self._obs(), true_score, terminated, truncated, info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return self._prompt + self.tokenizer.decode(self._completion)

    # ------------------------------------------------------------------ helpers

    def completion_text(self) -> str:
        """The completion so far, decoded without special tokens and surrounding spaces."""
        return decode_completions(self.tokenizer, [self._completion])[0]

    def _obs(self) -> ObsDict:
        return {
            "input_ids": self._ids.copy(),
            "attention_mask": self._mask.copy(),
            "prompt_length": self._prompt_length.copy(),
        }
