"""An ensemble of text reward models: member mean as the score, member std as disagreement.

:class:`TextRewardEnsemble` is a torch ``nn.Module`` holding ``K``
:class:`~envs.text.reward_model.TextRewardModel` members. It is the trainer's
:class:`~prefenv.reward_training.EnsemblePairSource` (each member is fitted separately, on its
own bootstrap resample), and its :meth:`~TextRewardEnsemble.predictor` reports the member mean
and std to the learned-reward wrapper, which alone applies uncertainty shaping.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Self

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from envs.text.default_model import default_tokenizer
from envs.text.reward_config import TextRewardModelConfig
from envs.text.reward_model import (
    ENSEMBLE_FORMAT,
    META_FILE,
    PREDICT_BATCH,
    TextRewardModel,
    frozen_copy,
    read_meta,
    segment_batch_texts,
)
from envs.text.reward_predictor import TextRewardPredictor, Whitening
from prefenv.predictors import check_finite
from prefenv.records import Segment

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["TextRewardEnsemble", "load_text_reward_model"]


class TextRewardEnsemble(nn.Module):
    """``K`` text reward models; scores are the member mean, disagreement the member std.

    Args:
        members: at least one :class:`TextRewardModel`.
    """

    def __init__(self, members: Sequence[TextRewardModel]) -> None:
        super().__init__()
        members = list(members)
        if not members or not all(isinstance(m, TextRewardModel) for m in members):
            raise ValueError("TextRewardEnsemble needs a non-empty list of TextRewardModel members")
        self.members = nn.ModuleList(members)
        self.train(any(m.training for m in members))  # eval unless a member is training

    @classmethod
    def build(
        cls,
        k: int = 3,
        config: TextRewardModelConfig = TextRewardModelConfig(),  # noqa: B008 (frozen)
        tokenizer: PreTrainedTokenizerBase | None = None,
        seed: int = 0,
    ) -> TextRewardEnsemble:
        """``k`` tiny models initialised from the ``k`` children of ``SeedSequence(seed)``."""
        if k < 1:
            raise ValueError(f"an ensemble needs k >= 1 members, got {k}")
        tokenizer = default_tokenizer() if tokenizer is None else tokenizer
        seeds = [int(c.generate_state(1)[0]) for c in np.random.SeedSequence(seed).spawn(k)]
        return cls([TextRewardModel.build(config, tokenizer, s) for s in seeds])

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike[str], device: str | torch.device = "cpu"
    ) -> TextRewardEnsemble:
        """Load an ensemble saved by :meth:`save_pretrained` (``member_<i>/`` subfolders)."""
        path = Path(directory)
        meta = read_meta(path)
        if meta.get("format") != ENSEMBLE_FORMAT:
            raise ValueError(
                f"{path} has no {META_FILE} of a TextRewardEnsemble: save one with "
                "TextRewardEnsemble.save_pretrained, or load a single model with "
                "TextRewardModel.from_pretrained"
            )
        return cls(
            [
                TextRewardModel.from_pretrained(path / f"member_{i}", device=device)
                for i in range(int(meta["members"]))
            ]
        )

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write each member to ``member_<i>/`` and the ensemble's ``prefenv_text_reward.json``."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for i, member in enumerate(self.members):
            member.save_pretrained(path / f"member_{i}")
        meta = {"format": ENSEMBLE_FORMAT, "members": len(self.members)}
        (path / META_FILE).write_text(json.dumps(meta, indent=2))
        return path

    def place(self, device: str | torch.device, dtype: torch.dtype = torch.float32) -> Self:
        """:meth:`TextRewardModel.place` on every member; returns ``self``."""
        for member in self.members:
            member.place(device, dtype)
        return self

    def __len__(self) -> int:
        return len(self.members)

    def forward(self, prompts: Sequence[str], completions: Sequence[str]) -> Tensor:
        """``[B]`` differentiable member-mean scores."""
        return torch.stack([m(prompts, completions) for m in self.members]).mean(0)

    def member_segment_returns(self, segments: Sequence[Segment]) -> Tensor:
        """``[K, B]`` each member's differentiable scores of ``B`` text segments."""
        prompts, completions = segment_batch_texts(segments)
        returns = torch.stack([m(prompts, completions) for m in self.members])
        check_finite(returns)
        return returns

    def segment_returns(self, segments: Sequence[Segment]) -> Tensor:
        """``[B]`` member-mean scores of ``B`` text segments."""
        return self.member_segment_returns(segments).mean(0)

    def member_predictions(
        self, prompts: Sequence[str], completions: Sequence[str], batch_size: int = PREDICT_BATCH
    ) -> np.ndarray:
        """``[K, B]`` float32 scores of every member, without gradients."""
        return np.stack([m.predict(prompts, completions, batch_size) for m in self.members])

    def predict(
        self, prompts: Sequence[str], completions: Sequence[str], batch_size: int = PREDICT_BATCH
    ) -> np.ndarray:
        """``[B]`` float32 member-mean scores, without gradients."""
        return self.member_predictions(prompts, completions, batch_size).mean(0)

    def predictor(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        tokenizer: PreTrainedTokenizerBase,
        whitening: Whitening = Whitening(),  # noqa: B008 (frozen)
    ) -> TextRewardPredictor:
        """A frozen snapshot of every member; its predictions carry the member std.

        Arguments as :meth:`TextRewardModel.predictor`.
        """
        return TextRewardPredictor(
            [frozen_copy(m) for m in self.members],  # type: ignore[arg-type]
            observation_space, action_space, tokenizer, whitening, ensemble=True,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"TextRewardEnsemble({len(self.members)} x {self.members[0]!r})"


def load_text_reward_model(
    directory: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> TextRewardModel | TextRewardEnsemble:
    """Load whichever of :class:`TextRewardModel` / :class:`TextRewardEnsemble` was saved there."""
    if read_meta(Path(directory)).get("format") == ENSEMBLE_FORMAT:
        return TextRewardEnsemble.from_pretrained(directory, device)
    return TextRewardModel.from_pretrained(directory, device)
