"""The grpo and rloo text stages' training: the pipeline's settings -> GRPOConfig -> outputs.

:mod:`prefenv.app.text_runs` loads the SFT model and the learned reward (the ppo stage's:
the rm stage's reward model, whitened and clipped) and hands them to :func:`train_group_rl`,
which trains with :func:`agents.text.grpo.train_grpo` and writes the stage's folder
(``grpo/`` or ``rloo/``): the model, ``metrics.csv`` (one row a step) and the summary the
stage keeps in ``stage.json``. Both stages read the same settings (``--grpo-steps``,
``--group-size``, ``--grpo-beta``, ``--grpo-loss-type``, ``--grpo-learning-rate``); rloo puts
the KL to SFT on the reward (as TRL's ``RLOOTrainer``), grpo in the loss.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from agents.text.grpo import GRPO_OPTIM, GRPOConfig, RewardFn, train_grpo
from agents.text.lora import reference_of, save_lm, with_lora
from prefenv.app.text_config import TextPipelineConfig

__all__ = ["group_rl_config", "train_group_rl"]


def group_rl_config(config: TextPipelineConfig, algo: str) -> GRPOConfig:
    """The :class:`GRPOConfig` of the ``algo`` stage (``"grpo"`` or ``"rloo"``)."""
    optim = dataclasses.replace(
        GRPO_OPTIM, learning_rate=config.grpo_learning_rate, max_steps=config.grpo_steps,
        seed=config.seed, progress=True,
    )  # fmt: skip
    return GRPOConfig(
        algo=algo,  # type: ignore[arg-type]  # GRPOConfig validates it
        loss_type=config.grpo_loss_type,  # type: ignore[arg-type]
        num_generations=config.group_size,
        beta=config.grpo_beta,
        kl_in_reward=algo == "rloo",
        max_completion_length=config.max_new_tokens,
        num_iterations=config.grpo_iterations,
        optim=optim,
    )


def train_group_rl(
    config: TextPipelineConfig,
    algo: str,
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    reward_fn: RewardFn,
    folder: Path,
) -> dict[str, Any]:
    """Train ``model`` and write ``folder`` (with LoRA also ``folder/adapter``); the metrics.

    Args:
        config: the pipeline's settings.
        algo: ``"grpo"`` or ``"rloo"``.
        model: the SFT model, a Hugging Face causal LM; with ``--lora-r`` > 0 it trains LoRA
            adapters and its reference is itself with them disabled, else a frozen copy of it.
        tokenizer: its tokenizer.
        prompts: the training prompts.
        reward_fn: ``(prompts, completions) -> [N]`` rewards (the learned, whitened score).
        folder: where the model, its tokenizer and ``metrics.csv`` go.
    """
    model = with_lora(model, *config.lora)
    metrics = train_grpo(model, tokenizer, prompts, reward_fn, group_rl_config(config, algo),
                         ref_model=reference_of(model))  # fmt: skip
    save_lm(model, tokenizer, folder)
    rows = metrics.rows()
    with (folder / "metrics.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    last = rows[-5:]
    return {
        "algo": algo, "loss_type": config.grpo_loss_type, "steps": metrics.steps,
        "completions": metrics.n_completions, "seconds": metrics.seconds,
        "completions_per_second": metrics.n_completions / metrics.seconds,
        "first_reward": rows[0]["reward_mean"],
        "last_reward": float(np.mean([r["reward_mean"] for r in last])),
        "last_kl": float(np.mean([r["kl"] for r in last])),
    }  # fmt: skip
