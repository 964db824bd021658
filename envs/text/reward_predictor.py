"""The episode-level predictor of text reward models: finished episodes scored in one batch.

A text reward model scores a whole ``(prompt, completion)``; in an env that score is the
episode's terminal reward. The learned-reward wrapper
(:class:`prefenv.wrappers.VectorPreferenceReward`) holds a :class:`TextRewardPredictor` made by
``TextRewardModel.predictor(...)`` (or ``TextRewardEnsemble.predictor(...)``) and calls
``predict(obs, acts, next_obs, done)`` once per vector step: the predictor decodes the flat
``next_obs`` of the rows where ``done`` is True back to ``(prompt, completion)`` (token ids,
attention mask and prompt length of :class:`~envs.text.token_env.TextGenerationEnv`'s
observation, flattened as :class:`prefenv.spaces.FlatSpec` does: Dict entries in key order),
scores all of them in one batch, and returns 0 for the other rows.

**Whitening is part of the predictor.** Bradley-Terry fixes only score differences, so a raw
score has an arbitrary offset and scale. The predictor returns
``clip((score - mean) / std, -clip, clip)`` (:class:`Whitening`; the text pipeline measures
``mean`` and ``std`` on the SFT policy's own samples), so PPO's reward, and the KL penalty
subtracted from it, live on a known scale. For an ensemble every member's score is whitened;
the prediction is the clipped member mean and the (unclipped) member std, and uncertainty
shaping (``mean + k * std``) is left to the wrapper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
from gymnasium import spaces

from envs.text.token_env import decode_completions
from prefenv.predictors import Prediction
from prefenv.spaces import flat_dim

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["TextRewardPredictor", "TextScorer", "Whitening"]

_OBS_KEYS = ("attention_mask", "input_ids", "prompt_length")


@dataclass(frozen=True)
class Whitening:
    """``clip((score - mean) / std, -clip, clip)``: how a text score becomes the PPO reward.

    Attributes:
        mean: subtracted from every score.
        std: divides every centred score (> 0).
        clip: bound of the whitened member mean (> 0; ``inf``: no clipping).
    """

    mean: float = 0.0
    std: float = 1.0
    clip: float = math.inf

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise ValueError(
                f"Whitening needs a finite mean and a finite std > 0, got mean={self.mean}, "
                f"std={self.std}: measure them on scores that vary (Whitening.fit)"
            )
        if not self.clip > 0:
            raise ValueError(f"Whitening.clip must be > 0 (inf: no clipping), got {self.clip}")

    @classmethod
    def fit(cls, scores: np.ndarray, clip: float = math.inf) -> Whitening:
        """Mean and std (plus 1e-8) of ``[N]`` raw scores, e.g. on the SFT policy's samples."""
        scores = np.asarray(scores, dtype=np.float64)
        return cls(float(scores.mean()), float(scores.std() + 1e-8), clip)


class TextScorer(Protocol):
    """One member of a text reward predictor: batched no-grad scores of texts."""

    def predict(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """``[B]`` float32 scores of ``B`` (prompt, completion) texts."""
        ...


def _slices(observation_space: spaces.Space) -> dict[str, slice]:
    """Where each entry of the text env's Dict observation lies in the flat feature vector."""
    if not isinstance(observation_space, spaces.Dict) or set(observation_space.spaces) != set(
        _OBS_KEYS
    ):
        raise ValueError(
            f"a text reward predictor reads the observation of envs.text.TextGenerationEnv (a "
            f"Dict with {list(_OBS_KEYS)}), got {observation_space}: build it from the text env's "
            "single_observation_space"
        )
    sizes = [flat_dim(sub) for sub in observation_space.spaces.values()]
    ends = np.cumsum(sizes).tolist()
    return {
        key: slice(end - size, end)
        for key, size, end in zip(observation_space.spaces, sizes, ends, strict=True)
    }


class TextRewardPredictor:
    """Scores the finished episodes of a text env (an episode-level ``RewardPredictor``).

    Args:
        members: frozen text reward models (one, or an ensemble's members).
        observation_space: the text env's single observation space.
        action_space: the text env's single action space.
        tokenizer: the env's tokenizer, which decodes the observation's token ids.
        whitening: turns raw scores into rewards (see the module docstring).
        ensemble: report the member std (``Prediction.std``); False gives ``std=None``.

    Attributes:
        obs_dim: flat observation size the wrapper must pass.
        act_dim: flat action size.
        episode_level: True: only rows with ``done`` are scored.
    """

    episode_level = True

    def __init__(
        self,
        members: Sequence[TextScorer],
        observation_space: spaces.Space,
        action_space: spaces.Space,
        tokenizer: PreTrainedTokenizerBase,
        whitening: Whitening = Whitening(),  # noqa: B008 (frozen)
        ensemble: bool = False,
    ) -> None:
        if not members:
            raise ValueError("a text reward predictor needs at least one member model")
        self.members = list(members)
        self._slices = _slices(observation_space)
        self.obs_dim = flat_dim(observation_space)
        self.act_dim = flat_dim(action_space)
        self.tokenizer = tokenizer
        self.whitening = whitening
        self.ensemble = ensemble

    def decode(self, flat_obs: np.ndarray) -> tuple[list[str], list[str]]:
        """``(prompts, completions)`` of ``[n, D_o]`` flat observations of finished episodes.

        Completions are decoded as the env decodes them (EOS and special tokens removed, stripped);
        prompts exactly as tokenized (special tokens such as BOS removed).
        """
        ids = np.rint(flat_obs[:, self._slices["input_ids"]]).astype(np.int64)
        mask = flat_obs[:, self._slices["attention_mask"]] > 0.5
        prompt_lengths = np.rint(flat_obs[:, self._slices["prompt_length"]][:, 0]).astype(int)
        rows = [row[keep] for row, keep in zip(ids, mask, strict=True)]
        prompts = self.tokenizer.batch_decode(
            [row[:n].tolist() for row, n in zip(rows, prompt_lengths, strict=True)],
            skip_special_tokens=True,
            clean_up_tokenization_spaces=False,
        )
        completions = decode_completions(
            self.tokenizer, [row[n:].tolist() for row, n in zip(rows, prompt_lengths, strict=True)]
        )
        return prompts, completions

    def score_texts(self, prompts: Sequence[str], completions: Sequence[str]) -> Prediction:
        """Whitened ``[B]`` rewards of texts: clipped member mean, member std (ensembles)."""
        raw = np.stack([member.predict(prompts, completions) for member in self.members])
        w = self.whitening
        whitened = (raw.astype(np.float64) - w.mean) / w.std
        mean = np.clip(whitened.mean(0), -w.clip, w.clip).astype(np.float32)
        return Prediction(mean, whitened.std(0).astype(np.float32) if self.ensemble else None)

    def predict(
        self,
        obs: np.ndarray,
        acts: np.ndarray,
        next_obs: np.ndarray,
        done: np.ndarray | None = None,
    ) -> Prediction:
        """Rewards of ``N`` flat transitions: the whitened score where ``done``, else 0.

        Args:
            obs: ``[N, D_o]`` (unused: the last observation holds the whole text).
            acts: ``[N, D_a]`` (unused).
            next_obs: ``[N, D_o]`` flat observations after the step.
            done: ``[N]`` bool, ``terminated | truncated``.

        Raises:
            ValueError: ``done`` missing, or ``next_obs`` of the wrong shape.
        """
        if done is None:
            raise ValueError(
                "a text reward predictor scores whole episodes (episode_level=True): pass "
                "done = terminated | truncated"
            )
        next_obs = np.asarray(next_obs, dtype=np.float32)
        done = np.asarray(done, dtype=bool).reshape(-1)
        if next_obs.ndim != 2 or next_obs.shape[1] != self.obs_dim or len(done) != len(next_obs):
            raise ValueError(
                f"expected next_obs [N, {self.obs_dim}] and done [N], got {next_obs.shape} and "
                f"{done.shape}: was the predictor built for another text env (window, vocab)?"
            )
        mean = np.zeros(len(done), dtype=np.float32)
        std = np.zeros(len(done), dtype=np.float32) if self.ensemble else None
        rows = np.flatnonzero(done)
        if rows.size:
            scored = self.score_texts(*self.decode(next_obs[rows]))
            mean[rows] = scored.mean
            if std is not None and scored.std is not None:
                std[rows] = scored.std
        return Prediction(mean, std)
