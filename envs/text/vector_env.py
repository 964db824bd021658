"""The text tasks' native vector env: ``num_envs`` prompts stepped together in numpy.

A ``SyncVectorEnv`` of :class:`~envs.text.token_env.TextGenerationEnv` steps each sub-env in
Python and merges its info dict key by key. :class:`TextVectorEnv` shifts all windows in one
array operation and scores the episodes that ended together (one ``batch_decode``), with the same
observations, rewards, flags and info arrays as that ``SyncVectorEnv`` (tested step for step,
both autoreset modes): env-stepping rollouts of the tiny default LM run at 0.84x forced
``generate`` through it and 0.81x through the ``SyncVectorEnv`` (``bench_text_rollout.py``,
methods ``env`` and ``env_sync``; benchmarks/RESULTS.md). It is the text ids'
``vector_entry_point``: ``gym.make_vec(id, n, vectorization_mode="vector_entry_point")``, and
``prefenv.make_vec`` picks it by default.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.text.tasks import TextTask
from envs.text.token_env import TextGenerationEnv, decode_completions
from envs.vector_seeding import seed_rows

__all__ = ["TextVectorEnv", "text_task_vector_env"]


class TextVectorEnv(VectorEnv):
    """``num_envs`` copies of one :class:`~envs.text.token_env.TextGenerationEnv` in one batch.

    Same observation, action, reward, termination and truncation as the single env (see there).
    Sub-env ``i`` reset with ``seed=s`` draws the prompts a ``TextGenerationEnv`` reset with
    ``seed=s + i`` draws, as ``SyncVectorEnv`` seeds its sub-envs, so the two are interchangeable.

    ``infos``, as a ``SyncVectorEnv`` of the single env reports them (each key with its ``_key``
    mask): ``true_reward`` (float64) on every step; on a last step also ``prompt``,
    ``completion`` (object) and ``completion_tokens`` (int64); on a reset ``prompt`` and
    ``prompt_index``. ``reset(options=...)`` takes the single env's ``prompt`` or
    ``prompt_index`` (for every reset row) and Gymnasium's ``reset_mask``.

    Autoreset, as Gymnasium's ``SyncVectorEnv`` does it:

    - ``NEXT_STEP`` (default): the step after an episode ends resets that row, ignores its action
      and returns reward 0, ``terminated = truncated = False`` and the reset's info;
    - ``SAME_STEP``: a finished row is reset in the same step; its last observation is
      ``infos["final_obs"][i]`` and its step info ``infos["final_info"]``.

    Args:
        env: the single env whose prompts, tokenizer, scorer and window every row shares (its
            own state is never used).
        num_envs: rows stepped together.
        autoreset_mode: ``NEXT_STEP`` or ``SAME_STEP``.
    """

    metadata = {
        "render_modes": [],
        "autoreset_mode": AutoresetMode.NEXT_STEP,
        "prefenv_presenter": TextGenerationEnv.metadata["prefenv_presenter"],
    }

    def __init__(
        self,
        env: TextGenerationEnv,
        num_envs: int,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    ) -> None:
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        mode = AutoresetMode(autoreset_mode)
        if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise ValueError(
                f"TextVectorEnv supports autoreset_mode NEXT_STEP or SAME_STEP, got {mode}: use "
                "gym.make_vec(..., vectorization_mode='sync') for DISABLED"
            )
        self.env = env
        self.num_envs = n = int(num_envs)
        self.autoreset_mode = mode
        self.metadata = {**self.metadata, "autoreset_mode": mode}
        self.render_mode = None
        self.single_observation_space = env.observation_space
        self.single_action_space = env.action_space
        self.observation_space = batch_space(self.single_observation_space, n)
        self.action_space = batch_space(self.single_action_space, n)
        self.tokenizer, self.prompts = env.tokenizer, env.prompts
        width = env.window
        self._ids = np.full((n, width), env.pad_token_id, dtype=np.int64)
        self._mask = np.zeros((n, width), dtype=np.int8)
        self._prompt_length = np.ones((n, 1), dtype=np.int64)
        self._arrays = {"attention_mask": self._mask, "input_ids": self._ids,
                        "prompt_length": self._prompt_length}  # fmt: skip
        self._generated = np.zeros(n, dtype=np.int64)
        self._prompt_text = np.full(n, "", dtype=object)
        self._rngs: list[np.random.Generator | None] = [None] * n
        self._needs_reset = np.zeros(n, dtype=bool)
        self._started = False

    # ------------------------------------------------------------------ Gymnasium API

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        rows = seed_rows(self._rngs, seed, options)
        infos = self._reset_rows(rows, options or {})
        self._needs_reset[rows] = False
        self._started = True
        return self._obs(), infos

    def step(
        self, actions: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if not self._started:
            raise gym.error.ResetNeeded("call reset() before step() on a TextVectorEnv")
        n, env = self.num_envs, self.env
        tokens = np.asarray(actions)
        if tokens.size != n:
            raise ValueError(f"expected {n} actions (one token per row), got shape {tokens.shape}")
        tokens = tokens.reshape(n).astype(np.int64)
        resetting = self._needs_reset.copy()
        stepping = ~resetting
        bad = stepping & ((tokens < 0) | (tokens >= env.vocab_size))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"action {int(tokens[i])} of row {i} is not a token id in [0, {env.vocab_size})"
            )
        rows = np.flatnonzero(stepping)
        self._ids[rows, :-1] = self._ids[rows, 1:]
        self._mask[rows, :-1] = self._mask[rows, 1:]
        self._ids[rows, -1] = tokens[rows]
        self._mask[rows, -1] = 1
        self._generated[rows] += 1
        terminated = stepping & (tokens == env.eos_token_id)
        truncated = stepping & ~terminated & (self._generated >= env.max_new_tokens)
        done = terminated | truncated
        rewards = np.zeros(n)
        ended = np.flatnonzero(done)
        step_info = self._finish(ended, rewards) if len(ended) else {}
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            infos = _merge(_true_reward(stepping & ~done), step_info)
            infos = _merge(infos, self._reset_rows(np.flatnonzero(resetting), {}))
            self._needs_reset = done
            return self._obs(), rewards, terminated, truncated, infos
        infos = _true_reward(~done)  # SAME_STEP: every row stepped
        if len(ended):
            final_obs = np.full(n, None, dtype=object)
            for i, obs in zip(ended, self._row_obs(ended), strict=True):
                final_obs[i] = obs
            infos.update(final_obs=final_obs, _final_obs=done.copy())
            infos.update(final_info=step_info, _final_info=done.copy())
            infos = _merge(infos, self._reset_rows(ended, {}))
        return self._obs(), rewards, terminated, truncated, infos

    # ------------------------------------------------------------------ helpers

    def _reset_rows(self, rows: np.ndarray, options: dict[str, Any]) -> dict[str, Any]:
        """Start new episodes in ``rows``; their reset infos as masked arrays."""
        if len(rows) == 0:
            return {}
        env = self.env
        if "prompt" in options:
            text = str(options["prompt"])
            ids, index = env.encode_prompts([text])[0], np.full(len(rows), -1)
            texts, encoded = [text] * len(rows), [ids] * len(rows)
        else:
            if "prompt_index" in options:
                index = np.full(len(rows), env.pool_index(options["prompt_index"]))
            else:
                index = np.array([self._rngs[r].integers(len(self.prompts)) for r in rows])
            texts = [self.prompts[i] for i in index]
            encoded = [env.prompt_ids[i] for i in index]
        self._ids[rows] = env.pad_token_id
        self._mask[rows] = 0
        for r, ids in zip(rows, encoded, strict=True):
            self._ids[r, -len(ids) :] = ids
            self._mask[r, -len(ids) :] = 1
            self._prompt_length[r, 0] = len(ids)
        self._generated[rows] = 0
        self._prompt_text[rows] = texts
        reset = np.zeros(self.num_envs, dtype=bool)
        reset[rows] = True
        prompts = np.full(self.num_envs, None, dtype=object)
        prompts[rows] = texts
        indices = np.zeros(self.num_envs, dtype=np.int64)
        indices[rows] = index
        return {"prompt": prompts, "_prompt": reset, "prompt_index": indices,
                "_prompt_index": reset.copy()}  # fmt: skip

    def _finish(self, ended: np.ndarray, rewards: np.ndarray) -> dict[str, Any]:
        """Score the episodes of ``ended``: their rewards, and their last-step infos."""
        env, n, width = self.env, self.num_envs, self._ids.shape[1]
        generated = [self._ids[i, width - self._generated[i] :].tolist() for i in ended]
        texts = decode_completions(self.tokenizer, generated)
        prompts = self._prompt_text[ended]
        scores = [float(env.true_scorer(p, t)) for p, t in zip(prompts, texts, strict=True)]
        rewards[ended] = scores
        mask = np.zeros(n, dtype=bool)
        mask[ended] = True
        true_reward, tokens = np.zeros(n), np.zeros(n, dtype=np.int64)
        prompt, completion = np.full(n, None, dtype=object), np.full(n, None, dtype=object)
        true_reward[ended], tokens[ended] = scores, self._generated[ended]
        prompt[ended], completion[ended] = prompts, texts
        return {"true_reward": true_reward, "_true_reward": mask.copy(),
                "prompt": prompt, "_prompt": mask,
                "completion": completion, "_completion": mask.copy(),
                "completion_tokens": tokens, "_completion_tokens": mask.copy()}  # fmt: skip

    def _obs(self) -> dict[str, np.ndarray]:
        return {key: array.copy() for key, array in self._arrays.items()}

    def _row_obs(self, rows: np.ndarray) -> list[dict[str, np.ndarray]]:
        return [{key: array[i].copy() for key, array in self._arrays.items()} for i in rows]


def _true_reward(rows: np.ndarray) -> dict[str, Any]:
    """The ``true_reward`` info (0) of rows that stepped without ending; none if no row did."""
    return {"true_reward": np.zeros(len(rows)), "_true_reward": rows.copy()} if rows.any() else {}


def _merge(infos: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Masked info arrays of disjoint rows, merged key by key (as ``SyncVectorEnv._add_info``)."""
    out = dict(infos)
    for key, value in extra.items():
        if key not in out:
            out[key] = value
        elif key.startswith("_"):  # a mask: the rows of both
            out[key] = out[key] | value
        else:
            out[key] = np.where(extra[f"_{key}"], value, out[key]).astype(out[key].dtype)
    return out


def text_task_vector_env(
    num_envs: int, autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP, **kwargs: Any
) -> TextVectorEnv:
    """The registered text ids' ``vector_entry_point``: :class:`TextVectorEnv` of
    ``TextTask(**kwargs)`` (``task``, ``tokenizer``, ``prompts``, ``scorer_kwargs``,
    ``max_prompt_tokens``, ``max_new_tokens``)."""
    if kwargs.get("render_mode") is not None:
        raise ValueError(
            "the text tasks' native vector env does not render: build it with "
            "vectorization_mode='sync' to render each sub-env"
        )
    kwargs.pop("render_mode", None)
    return TextVectorEnv(TextTask(**kwargs), num_envs, autoreset_mode)
