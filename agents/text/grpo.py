"""GRPO, Dr. GRPO and RLOO: online RL of a causal LM from group-relative advantages, no value head.

Every step (:func:`train_grpo`, one visible loop):

1. take ``B`` prompts and sample ``G`` completions of each with the policy
   (:func:`~agents.text.sampling.sample_completions`, temperature 1, the env's prompt layout;
   or any :class:`Sampler`, e.g. :class:`agents.text.dialogue.DialogueSampler`'s whole dialogues);
2. score them: ``reward_fn(prompts, completions) -> [B * G]`` (any callable: the pipeline passes
   the learned reward model's whitened score, tests a hand-written rule);
3. advantages per group of ``G`` (:mod:`agents.text.grpo_losses`): GRPO ``(r - mean) / std``,
   Dr. GRPO ``r - mean``, RLOO ``r - mean of the others``;
4. ``num_iterations`` (mu) optimiser steps on the batch with the clipped per-token ratio
   objective, the KL to the frozen reference in the loss (k3) or already in the reward.

**Which tokens train**: only those the policy sampled (:attr:`PolicySamples.loss_mask`): every
completion token of a single turn; in a dialogue the user's replies stay out of the loss.

**Where the KL goes** is decided in one place, :attr:`GRPOConfig.kl_coefs`: in the loss
(GRPO's k3 term, the default) or, with ``kl_in_reward``, as a reward penalty
``r - beta * sum_t (log pi_old - log pi_ref)`` before the advantages (RLOO's and PPO-KL's way).

Defaults follow TRL 1.16's ``GRPOConfig`` (``num_generations`` 8, ``epsilon`` 0.2,
``num_iterations`` 1, group std scaling, unbiased std) except: ``beta`` 0.04 (TRL's default
before it moved to 0, so a reference leash is on), ``max_completion_length`` 24 (TRL's 512 is
for real models; the text pipeline caps at 24), ``loss_type`` ``"grpo"`` (TRL's default is
``"dapo"``) and a learning rate for tiny models (:data:`GRPO_OPTIM`). Sampling is always at
temperature 1 without top-k/top-p, so the ratio and the KL are measured on the distribution
that was sampled, and dropout is off throughout (as TRL does), so the first iteration's ratio
is exactly 1.

Where the algorithms apply beyond text: any family whose episode has one return can use the
group baselines, and RLOO fits recommendation sessions (a session's summed engagement as the
reward of one of ``G`` sessions for the same user). It is not done there because the group
must start from the *same* state: the recommendation envs draw a fresh user from their own RNG
at every reset and offer no reset to a given user state (replaying a reset seed would also
replay the user's choice noise), and a session's per-step rewards give PPO-KL's value function
and GAE credit per step that a sequence-level baseline throws away. The same holds for MuJoCo
(no reset to a state through Gymnasium's API; long horizons with dense rewards). For text the
"state" is the prompt, so ``G`` samples of one prompt are free.

(Over 400 lines: most of it is this docstring and the config's; the sampler contract
(:class:`~agents.text.sampling.Sampler`) lives in :mod:`agents.text.sampling`, the losses in
:mod:`agents.text.grpo_losses`.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor, nn

from agents.text.activations import fuse_activations
from agents.text.dpo_steps import frozen_copy
from agents.text.grpo_losses import (
    group_advantages,
    grpo_loss,
    kl_penalised_rewards,
    rloo_advantages,
)
from agents.text.optim import (
    LMOptimConfig,
    LossHistory,
    batch_indices,
    make_optimizer,
    n_steps,
    optimizer_step,
    progress_bar,
    save_model,
)
from agents.text.sampling import (
    CompletionSampler,
    PolicySamples,
    SampledCompletions,
    Sampler,
    completion_token_logps,
)
from agents.text.sft import check_context
from prefenv.text_records import check_vocab

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "GRPOConfig",
    "GRPOMetrics",
    "GRPO_OPTIM",
    "CompletionSampler",
    "PolicySamples",
    "RewardFn",
    "Sampler",
    "token_logps",
    "train_grpo",
]

RewardFn = Callable[[list[str], list[str]], np.ndarray | Sequence[float] | Tensor]
"""``reward_fn(prompts, completions) -> [N]`` scores of ``N`` (prompt, completion) texts."""

GRPO_OPTIM = LMOptimConfig(learning_rate=5e-5, batch_size=8)
"""GRPO defaults: 8 prompts per step (x ``num_generations`` completions), one pass over the
prompts; TRL uses 1e-6 for billion-parameter models, tiny models need more."""


@dataclass(frozen=True)
class GRPOConfig:
    """GRPO / Dr. GRPO / RLOO settings (validated on construction)."""

    algo: Literal["grpo", "rloo"] = "grpo"
    """Advantages: grpo (group mean, and std unless loss_type is dr_grpo) or rloo (leave-one-
    out mean of the other G - 1 rewards)."""
    loss_type: Literal["grpo", "dr_grpo"] = "grpo"
    """grpo: advantages scaled by the group std, loss averaged per sequence; dr_grpo (Dr. GRPO):
    no std scaling, loss summed and divided by a constant (batch x max_completion_length)."""
    num_generations: int = 8
    """G: completions sampled per prompt (>= 2)."""
    beta: float = 0.04
    """Coefficient of the KL to the reference (0: no reference model is kept)."""
    kl_in_reward: bool = False
    """Put the KL in the reward (r - beta * summed log-ratio, before the advantages) instead of
    the k3 term in the loss."""
    epsilon: float = 0.2
    """Clip range of the per-token probability ratio."""
    max_completion_length: int = 24
    """Completion length cap in tokens (EOS included)."""
    num_iterations: int = 1
    """mu: optimiser steps on each sampled batch (> 1 reuses the samples off-policy)."""
    optim: LMOptimConfig = GRPO_OPTIM
    """Learning rate, prompts per step (batch_size), steps (max_steps, or epochs over the
    prompts), warm-up, clipping, seed; max_length bounds prompt + completion."""

    def __post_init__(self) -> None:
        if not isinstance(self.optim, LMOptimConfig):
            raise TypeError(
                f"GRPOConfig.optim must be an LMOptimConfig, got {type(self.optim).__name__}: "
                "write GRPOConfig(optim=replace(GRPO_OPTIM, max_steps=100))"
            )
        if self.algo not in ("grpo", "rloo"):
            raise ValueError(f"unknown algo {self.algo!r}: 'grpo' or 'rloo'")
        if self.loss_type not in ("grpo", "dr_grpo"):
            raise ValueError(f"unknown loss_type {self.loss_type!r}: 'grpo' or 'dr_grpo'")
        if self.num_generations < 2:
            raise ValueError(
                f"num_generations must be >= 2 (G completions per prompt form the baseline), "
                f"got {self.num_generations}"
            )
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"beta must be a number >= 0, got {self.beta}")
        if not 0 < self.epsilon < 1:
            raise ValueError(f"epsilon (the clip range) must be in (0, 1), got {self.epsilon}")
        if self.max_completion_length < 1 or self.num_iterations < 1:
            raise ValueError(
                "max_completion_length and num_iterations must be >= 1, got "
                f"{self.max_completion_length} and {self.num_iterations}"
            )
        if not self.optim.add_bos:
            raise ValueError(
                "GRPO samples through sample_completions, which lays prompts out as the text "
                "envs do (BOS first): keep optim.add_bos=True"
            )

    @property
    def kl_coefs(self) -> tuple[float, float]:
        """``(beta in the reward, beta in the loss)``: where the KL to the reference goes.

        The one place that decides it: ``kl_in_reward`` puts ``beta`` on the reward penalty
        (:func:`~agents.text.grpo_losses.kl_penalised_rewards`), else on the loss's k3 term
        (:func:`~agents.text.grpo_losses.grpo_loss`); the other gets 0.
        """
        return (self.beta, 0.0) if self.kl_in_reward else (0.0, self.beta)

    def advantages(self, rewards: Tensor) -> Tensor:
        """``[P, G]`` advantages of ``[P, G]`` rewards, as ``algo`` and ``loss_type`` say."""
        if self.algo == "rloo":
            return rloo_advantages(rewards)
        return group_advantages(rewards, "none" if self.loss_type == "dr_grpo" else "std")


@dataclass
class GRPOMetrics(LossHistory):
    """What :func:`train_grpo` did, one entry per sampling step (means over its iterations).

    Attributes:
        losses: the clipped objective (+ k3 term).
        reward_means: mean reward of the step's completions (before any KL penalty).
        reward_stds: their std.
        kls: masked token mean of the k3 KL estimate to the reference (nan with beta 0).
        clip_fractions: fraction of completion tokens whose ratio the clip held.
        mean_lengths: mean completion length in tokens (EOS included).
        completions_per_second: completions of the step / its wall time (sampling included).
        n_completions: completions sampled over all steps.
        seconds: wall time of the whole call.
    """

    reward_means: list[float] = field(default_factory=list)
    reward_stds: list[float] = field(default_factory=list)
    kls: list[float] = field(default_factory=list)
    clip_fractions: list[float] = field(default_factory=list)
    mean_lengths: list[float] = field(default_factory=list)
    completions_per_second: list[float] = field(default_factory=list)
    n_completions: int = 0
    seconds: float = 0.0

    def columns(self) -> dict[str, list[float]]:
        """The per-step lists by column name (``loss``, ``reward_mean``, ...)."""
        return {"loss": self.losses, "reward_mean": self.reward_means,
                "reward_std": self.reward_stds, "kl": self.kls,
                "clip_fraction": self.clip_fractions, "mean_length": self.mean_lengths,
                "completions_per_second": self.completions_per_second}  # fmt: skip

    def rows(self) -> list[dict[str, float]]:
        """One dict per step, ``step`` and every column: a CSV's rows."""
        return [{"step": i, **{k: v[i] for k, v in self.columns().items()}}
                for i in range(self.steps)]  # fmt: skip


def token_logps(model: nn.Module, samples: SampledCompletions) -> Tensor:
    """Per-token log-probs ``[N, C]`` of sampled completions, 0 on padding after the EOS.

    A forward over ``[prompt | completion]`` (left-padded prompt, as sampled, each distinct prompt
    once: :func:`~agents.text.sampling.completion_token_logps`), with the position ids the
    sampler used, so the log-probs are those of the distribution sampled;
    :func:`~agents.text.sampling.completion_logps` is their row sum, without gradients. A
    dialogue's user tokens get log-probs too; the loss mask (:class:`PolicySamples`) drops them.
    """
    device = next(model.parameters()).device
    # New tensors (the sampler's are inference-mode tensors, which autograd cannot save).
    tensors = (samples.prompt_ids, samples.prompt_mask, samples.completion_ids,
               samples.completion_mask)  # fmt: skip
    return completion_token_logps(model, *(t.to(device, copy=True) for t in tensors))


@dataclass(frozen=True)
class _Rollout:
    """One step's samples: ``N = P * G`` completions, prompt-major (``G`` per prompt in a row).

    Attributes:
        samples: the sampled completions.
        rewards: ``[N]`` rewards as scored (before any KL penalty).
        advantages: ``[N]`` advantages (of the penalised rewards with ``kl_in_reward``).
        mask: ``[N, C]`` float, the loss mask: 1 on the tokens the policy sampled.
        old_logps: ``[N, C]`` log-probs under the sampling policy; None when the first iteration's
            own (detached) log-probs serve (``num_iterations == 1`` and no reward penalty).
        ref_logps: ``[N, C]`` log-probs under the reference; None with ``beta == 0``.
    """

    samples: SampledCompletions
    rewards: Tensor
    advantages: Tensor
    mask: Tensor
    old_logps: Tensor | None
    ref_logps: Tensor | None


@torch.no_grad()
def _rollout(
    model: nn.Module,
    ref_model: nn.Module | None,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    reward_fn: RewardFn,
    config: GRPOConfig,
    seed: int,
    sampler: Sampler | None = None,
) -> _Rollout:
    """Sample ``G`` sequences per prompt, score them, take the log-probs, the advantages."""
    group = config.num_generations
    repeated = [prompt for prompt in prompts for _ in range(group)]
    sampler = sampler or CompletionSampler(tokenizer, config.max_completion_length)
    samples, loss_mask = sampler(model, repeated, seed)
    device = next(model.parameters()).device
    rewards = torch.as_tensor(np.asarray(reward_fn(repeated, samples.texts), dtype=np.float32))
    if rewards.shape != (len(repeated),):
        raise ValueError(
            f"reward_fn returned shape {tuple(rewards.shape)} for {len(repeated)} completions: "
            "it must return one score per (prompt, completion), shape [N]"
        )
    rewards = rewards.to(device)
    mask = loss_mask.to(device=device, dtype=torch.float32)
    reward_beta, _ = config.kl_coefs
    old = token_logps(model, samples) if reward_beta > 0 or config.num_iterations > 1 else None
    ref = None if ref_model is None else token_logps(ref_model, samples).to(device)
    penalised = rewards
    if reward_beta > 0 and ref is not None and old is not None:
        penalised = kl_penalised_rewards(rewards, old, ref, mask, reward_beta)
    advantages = config.advantages(penalised.view(-1, group)).flatten()
    return _Rollout(samples, rewards, advantages, mask, old, ref)


def _update(
    model: nn.Module, batch: _Rollout, config: GRPOConfig, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[float, float, float]:  # fmt: skip
    """One optimiser step on the batch; ``(loss, kl, clip_fraction)``."""
    logps = token_logps(model, batch.samples)
    old = logps.detach() if batch.old_logps is None else batch.old_logps
    _, loss_beta = config.kl_coefs
    out = grpo_loss(
        logps, old, batch.ref_logps, batch.advantages, batch.mask, config.epsilon, loss_beta,
        "constant" if config.loss_type == "dr_grpo" else "sequence",
        config.max_completion_length,
    )  # fmt: skip
    optimizer_step(model, out.loss, optimizer, scheduler, config.optim.max_grad_norm)
    return float(out.loss.detach()), float(out.kl), float(out.clip_fraction)


def _check_inputs(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
    config: GRPOConfig,
) -> None:  # fmt: skip
    """Prompts exist and, with the completion cap, fit the model's context and ``max_length``."""
    if not prompts:
        raise ValueError("no prompts: GRPO samples its completions for prompts; pass some")
    check_vocab(tokenizer, model)
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    prompt_tokens = 1 + max(len(ids) for ids in encoded)  # BOS first, as sampled
    longest = prompt_tokens + config.max_completion_length
    hint = (
        f"the longest prompt is {prompt_tokens} tokens (BOS included) + max_completion_length "
        f"{config.max_completion_length}: shorten the prompts or lower max_completion_length"
    )
    if longest > config.optim.max_length:
        raise ValueError(
            f"{longest} tokens exceed optim.max_length {config.optim.max_length}; {hint}, or "
            "raise optim.max_length"
        )
    try:
        check_context(model, longest)
    except ValueError as error:
        raise ValueError(f"{error} ({hint})") from None


def train_grpo(
    policy_model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    reward_fn: RewardFn,
    config: GRPOConfig | None = None,
    ref_model: nn.Module | None = None,
    out_dir: str | Path | None = None,
    sampler: Sampler | None = None,
) -> GRPOMetrics:
    """Train ``policy_model`` in place with GRPO / Dr. GRPO / RLOO (``config.algo``).

    Args:
        policy_model: a Hugging Face causal LM (usually the SFT model).
        tokenizer: its tokenizer.
        prompts: the prompt pool; each step takes ``config.optim.batch_size`` of them (shuffled,
            ``optim.epochs`` passes or ``optim.max_steps`` steps).
        reward_fn: ``(prompts, completions) -> [N]`` scores of decoded completions.
        config: settings (defaults: :class:`GRPOConfig`).
        ref_model: the frozen reference of the KL; None: a frozen copy of ``policy_model`` as
            it is now (not kept at all when ``config.beta == 0``).
        out_dir: if given, the trained model and the tokenizer are saved there.
        sampler: draws the ``G`` sequences of each prompt; None: :class:`CompletionSampler`.
            ``agents.text.dialogue.DialogueSampler`` samples whole dialogues (prompts: openings;
            ``reward_fn`` scores ``(opening, dialogue)`` texts).

    Returns:
        Per-step loss, reward mean/std, KL, clip fraction, lengths and completions/s.

    Raises:
        ValueError: no prompts, a prompt (plus the completion cap) longer than the context, a
            reward_fn of the wrong shape, or NaN rewards.
        VocabMismatchError: the tokenizer emits ids the model cannot embed.
    """
    config = config or GRPOConfig()
    optim = config.optim
    start = time.perf_counter()
    _check_inputs(policy_model, tokenizer, prompts, config)
    fuse_activations(policy_model)
    fuse_activations(ref_model)
    ref: nn.Module | None = None  # beta 0: no KL, no reference forward
    if config.beta > 0:
        ref = frozen_copy(policy_model) if ref_model is None else ref_model
    optimizer, scheduler = make_optimizer(policy_model, optim)
    policy_model.eval()  # no dropout: the first iteration's ratio is exactly 1
    metrics = GRPOMetrics()
    total = n_steps(len(prompts), optim)
    seeds = np.random.SeedSequence(optim.seed).generate_state(total)  # one sampling seed a step
    with progress_bar(total, optim.progress, config.algo.upper()) as bar:
        for step, index in enumerate(batch_indices(len(prompts), optim)):
            step_start = time.perf_counter()
            batch = _rollout(policy_model, ref, tokenizer, [prompts[i] for i in index],
                             reward_fn, config, int(seeds[step]), sampler)  # fmt: skip
            stats = np.mean([_update(policy_model, batch, config, optimizer, scheduler)
                             for _ in range(config.num_iterations)], axis=0)  # fmt: skip
            _record(metrics, batch, stats, time.perf_counter() - step_start)
            bar.update(1)
            bar.set_postfix(reward=f"{metrics.reward_means[-1]:.3f}", kl=f"{metrics.kls[-1]:.3f}")
    metrics.seconds = time.perf_counter() - start
    if out_dir is not None:
        save_model(policy_model, tokenizer, out_dir)
    return metrics


def _record(metrics: GRPOMetrics, batch: _Rollout, stats: np.ndarray, seconds: float) -> None:
    n = len(batch.rewards)
    values = dict(zip(("loss", "kl", "clip_fraction"), (float(x) for x in stats), strict=True))
    values.update(reward_mean=float(batch.rewards.mean()), reward_std=float(batch.rewards.std()),
                  mean_length=float(batch.mask.sum(1).mean()),
                  completions_per_second=n / seconds if seconds > 0 else math.nan)  # fmt: skip
    for name, column in metrics.columns().items():
        column.append(values[name])
    metrics.n_completions += n
