"""Settings of the text RLHF pipeline (:mod:`prefenv.app.text_runs`), one validated dataclass.

Each field's docstring is its ``prefenv text`` command-line help.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["TextPipelineConfig"]


@dataclass(frozen=True)
class TextPipelineConfig:
    """Settings of every text stage; each field's docstring is its CLI help."""

    task: str = "sentiment"
    """Text task: sentiment, keyword or concise (see envs.text.tasks)."""
    seed: int = 0
    """Seeds every stage (model init, data, sampling, teacher)."""
    base_model: str | None = None
    """Local Hugging Face causal LM directory to start from; None = build the default tiny GPT-2."""
    base_train_steps: int = 300
    """Pretraining steps of the default tiny GPT-2 (ignored with base_model)."""
    max_new_tokens: int = 24
    """Completion length cap (tokens) in every stage."""
    sft_demos: int = 2000
    """Demonstrations for SFT (generated reviews split into prompt + completion)."""
    sft_steps: int = 150
    """SFT optimiser steps (batch 16)."""
    teacher: str = "oracle"
    """Text teacher preset: oracle, noisy, mistake, verbose, position, population or a '+' mix."""
    queries: int = 1000
    """Comparisons asked of the teacher (two SFT samples of one prompt each)."""
    comparisons_file: str | None = None
    """A prompt/chosen/rejected JSONL file (human labels, a Hugging Face preference dataset, a
    prefenv export) to train the reward model and DPO on instead of asking the teacher."""
    rm_ensemble: int = 1
    """Reward-model ensemble members (> 1: mean and disagreement)."""
    rm_epochs: int = 8
    """Reward-model training epochs."""
    ppo_steps: int = 24000
    """PPO-KL env steps (tokens generated) over all envs."""
    n_envs: int = 16
    """Parallel text envs for PPO-KL."""
    learning_rate: float = 3e-5
    """PPO-KL Adam learning rate."""
    kl_coef: float = 0.3
    """Initial beta of the per-token KL penalty to the SFT reference. Over the default 24k tokens
    the Ziegler controller (horizon 10000) moves beta by only a few percent, so this initial value
    sets the KL reached: 0.3 keeps the sentiment task under the 6-nat target (0.1 overshot it to
    9-12 nats on two of three seeds; benchmarks/RESULTS.md)."""
    adaptive_kl: bool = True
    """Adapt beta toward kl_target nats per sequence (Ziegler et al.)."""
    kl_target: float = 6.0
    """Target KL per sequence for the adaptive controller, nats."""
    kl_estimator: str = "k1"
    """Per-token KL estimator in the reward: k1 = logp - ref_logp, k3 = (r - 1) - log r."""
    kl_horizon: int = 10000
    """Horizon of the adaptive controller, in episodes (Ziegler et al.: 10000)."""
    dpo_beta: float = 0.1
    """DPO beta (reference = SFT)."""
    dpo_epochs: int = 3
    """DPO passes over the comparisons."""
    dpo_learning_rate: float = 5e-5
    """DPO AdamW learning rate."""
    reward_clip: float = 5.0
    """PPO reward = clip((reward model score - mean) / std, -reward_clip, reward_clip), with the
    mean and std of the reward model's scores on SFT samples (whitening)."""
    eval_prompts: int = 256
    """Held-out prompts each model is sampled on in the eval stage."""
    torch_threads: int = 1
    """torch.set_num_threads for every stage: 1 suits the tiny default models (more intra-op
    threads only add overhead and thrash a busy machine); raise it for larger models."""

    def __post_init__(self) -> None:
        from envs.text.tasks import TASKS

        if self.task not in TASKS:
            raise ValueError(f"unknown text task {self.task!r}: choose one of {sorted(TASKS)}")
        for name in ("sft_demos", "sft_steps", "queries", "rm_ensemble", "rm_epochs", "n_envs",
                     "dpo_epochs", "eval_prompts", "max_new_tokens", "torch_threads"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(
                    f"TextPipelineConfig.{name} must be >= 1, got {getattr(self, name)}"
                )
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(
                f"TextPipelineConfig.kl_estimator must be 'k1' or 'k3', got {self.kl_estimator!r}"
            )
        if self.ppo_steps < 0:
            raise ValueError(f"TextPipelineConfig.ppo_steps must be >= 0, got {self.ppo_steps}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
