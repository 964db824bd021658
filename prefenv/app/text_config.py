"""Settings of the text RLHF pipeline (:mod:`prefenv.app.text_runs`), one validated dataclass.

Each field's docstring is its ``prefenv text`` command-line help. The ppo stage's PPO-KL settings
are a :class:`~agents.ppo_kl.config.PPOKLConfig` (field ``ppo``), not copies of its fields: the
KL leash (``kl_coef``, ``adaptive_kl``, ``kl_target``, ``kl_horizon``, ``kl_estimator``) and the
learning rate are declared, documented and validated there once, and the command line offers
them as ``--kl-coef`` etc. (:data:`PPO_OPTIONS`) with that documentation as help.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.ppo_kl.config import PPOKLConfig

__all__ = ["PPO_OPTIONS", "TEXT_PPO", "TextPipelineConfig"]

TEXT_PPO = PPOKLConfig(
    learning_rate=3e-5, n_epochs=4, gamma=1.0, gae_lambda=0.95, kl_coef=0.3, adaptive_kl=True,
    kl_target=6.0, kl_horizon=10000, kl_estimator="k1", torch_threads=None,
)  # fmt: skip
"""PPO-KL defaults of the text pipeline (undiscounted episodes, 4 epochs, Adam 3e-5).

``kl_coef`` 0.3: over the default 24k tokens the Ziegler controller (horizon 10000) moves beta by
only a few percent, so this initial value sets the KL reached: 0.3 keeps the sentiment task under
the 6-nat target (0.1 overshot it to 9-12 nats on two of three seeds; benchmarks/RESULTS.md).
The reward is the whitened reward-model score (unit std), so beta has the meaning
:attr:`PPOKLConfig.kl_coef` documents. ``n_steps``, ``batch_size`` and ``seed`` are set by the
ppo stage (``max_new_tokens``, ``n_envs * max_new_tokens // 4``, ``seed``)."""

STREAMS = ("train_prompts", "eval_prompts", "demonstrations", "rm_samples", "rm_oracle",
           "rm_heldout", "eval_sampling")  # fmt: skip
"""The pipeline's random streams, each seeded by :meth:`TextPipelineConfig.stream_seed`."""

PPO_OPTIONS = ("learning_rate", "kl_coef", "adaptive_kl", "kl_target", "kl_estimator", "kl_horizon")
"""The :class:`PPOKLConfig` fields ``prefenv text`` sets from the command line."""


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
    ppo: PPOKLConfig = TEXT_PPO
    """PPO-KL settings of the ppo stage: learning rate and the per-token KL leash to the SFT
    reference (see TEXT_PPO); n_steps, batch_size and seed are set by the stage."""
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
        if not isinstance(self.ppo, PPOKLConfig):
            raise TypeError(
                f"TextPipelineConfig.ppo must be a PPOKLConfig, got {type(self.ppo).__name__}: "
                "write ppo=dataclasses.replace(TEXT_PPO, kl_coef=0.1)"
            )
        if self.ppo_steps < 0:
            raise ValueError(f"TextPipelineConfig.ppo_steps must be >= 0, got {self.ppo_steps}")

    def stream_seed(self, stream: str, *index: int) -> int:
        """An int seed for one random stream of the pipeline (and an index within it).

        Every stream is a named child of ``seed`` (``SeedSequence`` spawn keys), so streams never
        overlap the way offset seeds (seed + 1, seed + 7, ...) can across seeds.
        """
        if stream not in STREAMS:
            raise ValueError(f"unknown random stream {stream!r}: one of {STREAMS}")
        key = (STREAMS.index(stream), *index)
        return int(np.random.SeedSequence(self.seed, spawn_key=key).generate_state(1)[0])

    def changed_from(self, saved: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """``{setting: (saved, given)}`` where this config differs from a saved ``to_dict()``.

        Fields added since the folder was saved compare at their defaults.
        """
        saved_flat = _flat_settings(saved)
        defaults = _flat_settings(TextPipelineConfig().to_dict())
        return {
            k: (saved_flat.get(k, defaults[k]), v)
            for k, v in _flat_settings(self.to_dict()).items()
            if saved_flat.get(k, defaults[k]) != v
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form; ``ppo`` is :meth:`PPOKLConfig.to_dict`."""
        return {**dataclasses.asdict(self), "ppo": self.ppo.to_dict()}


def _flat_settings(config: dict[str, Any]) -> dict[str, Any]:
    """A saved config flattened to one level (``ppo.kl_coef``), so a field added to
    ``PPOKLConfig`` later resumes at its default; run folders from before the pipeline composed
    ``PPOKLConfig`` saved its command-line fields (``kl_coef``...) at the top level."""
    flat = {k: v for k, v in config.items() if k != "ppo" and k not in PPO_OPTIONS}
    legacy = {f"ppo.{k}": config[k] for k in PPO_OPTIONS if k in config}
    return {**flat, **legacy, **{f"ppo.{k}": v for k, v in config.get("ppo", {}).items()}}
