"""Direct preference optimisation (DPO) of a causal LM from prompt/chosen/rejected pairs.

DPO (Rafailov et al., 2023) trains the policy directly on comparisons, without a reward model
or rollouts. With ``log pi(y | x)`` the summed log-probability of a completion's tokens given
its prompt and ``pi_ref`` the frozen SFT model::

    h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))
    L = -log sigmoid(beta * h)                  (label smoothing eps: a soft label 1 - eps)

``beta * (log pi(y) - log pi_ref(y))`` is the implicit reward of ``y``; a pair counts as
"accurate" when the chosen completion's reward exceeds the rejected one's. A tie (label 0.5)
is trained with the soft label 0.5, i.e. pushed towards equal implicit rewards.

Where the speed comes from (vs TRL's ``DPOTrainer``): pairs are tokenized once into plain
lists, the reference log-probs are computed once up front under ``torch.inference_mode``, a
step is one forward over the chosen and rejected rows concatenated (``[2B, L]``, right-padded),
and log-softmax is taken only at completion positions. There is no dataset library, trainer or
logging machinery in the loop.

Inputs: :class:`~agents.text.pairs.PreferencePair` s (or ``(prompt, chosen, rejected)``
tuples), e.g. from :func:`~agents.text.pairs.pairs_from_comparisons` over
``prefenv.jsonl.import_jsonl(path)`` or ``store.load()`` (:mod:`agents.text.pairs` holds the
pair data; both names are re-exported here). The optimisation loop is the one
:mod:`agents.text.optim` gives SFT and DPO. :func:`agents.text.iterative_dpo.iterative_dpo`
alternates sampling two completions per prompt, labelling them with any callable teacher, and
DPO on all pairs so far.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.text.optim import (
    DPO_OPTIM,
    LMOptimConfig,
    LossHistory,
    batch_indices,
    make_optimizer,
    n_steps,
    optimizer_step,
    progress_bar,
    save_model,
)
from agents.text.pairs import (
    EncodedPair,
    PairBatch,
    PreferencePair,
    collate_pairs,
    encode_pairs,
    pairs_from_comparisons,
)
from agents.text.sft import check_context, pad_id
from prefenv.text_records import check_vocab

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "DPOConfig",
    "DPOMetrics",
    "PreferencePair",
    "dpo_loss",
    "frozen_copy",
    "pair_logps",
    "pairs_from_comparisons",
    "reference_logps",
    "sequence_logps",
    "train_dpo",
]


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    label_smoothing: float | Tensor = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """The DPO sigmoid loss per pair, and the implicit rewards.

    ``losses = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)`` with
    ``h = (pi_c - ref_c) - (pi_r - ref_r)``: the cross-entropy against the soft label
    ``1 - eps`` (cDPO / TRL's ``label_smoothing``). ``eps = 0.5`` (a tie) is minimised at
    ``h = 0``.

    Args:
        policy_chosen_logps: ``[B]`` summed completion log-probs of the chosen completions.
        policy_rejected_logps: ``[B]`` the same for the rejected ones.
        ref_chosen_logps: ``[B]`` reference model log-probs of the chosen completions.
        ref_rejected_logps: ``[B]`` the same for the rejected ones.
        beta: KL strength (inverse temperature of the implicit reward).
        label_smoothing: ``eps`` in ``[0, 0.5]``, a float or a ``[B]`` tensor (per-pair: 0.5
            for ties, 0 otherwise).

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``[B]``; the rewards are
        ``beta * (policy - ref)`` and detached.
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    logits = beta * (chosen_logratios - rejected_logratios)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def sequence_logps(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, completion_mask: Tensor
) -> Tensor:
    """Summed log-probability of each row's completion tokens given what precedes them.

    One forward over the whole batch; the log-softmax is evaluated only at the positions that
    predict a completion token (position ``t`` predicts token ``t + 1``).

    Args:
        model: a Hugging Face causal LM (``model(input_ids, attention_mask).logits``).
        input_ids: ``[N, L]`` right-padded token ids.
        attention_mask: ``[N, L]``, 1 on real tokens.
        completion_mask: ``[N, L]`` bool, True on the tokens whose log-probs are summed (never
            position 0: the first token has no prediction).

    Returns:
        ``[N]`` float32 sums (with gradients if grad mode is on).
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    predicts = completion_mask[:, 1:]  # position t of logits[:, :-1] predicts token t + 1
    rows = torch.arange(len(input_ids), device=input_ids.device)[:, None].expand_as(predicts)
    selected = logits[:, :-1][predicts].float()  # [M, V]
    targets = input_ids[:, 1:][predicts]  # [M]
    token_logps = selected.gather(-1, targets[:, None]).squeeze(-1) - selected.logsumexp(-1)
    return torch.zeros(len(input_ids), device=logits.device).index_add(
        0, rows[predicts], token_logps
    )


def pair_logps(model: nn.Module, batch: PairBatch) -> tuple[Tensor, Tensor]:
    """``(chosen_logps, rejected_logps)``, each ``[B]``, from one forward over ``[2B, L]``."""
    logps = sequence_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask)
    return logps.chunk(2)


@dataclass(frozen=True)
class DPOConfig:
    """DPO settings (validated on construction): the shared LM loop plus DPO's own."""

    beta: float = 0.1
    """KL strength: larger keeps the policy closer to the reference (0.5 for TL;DR)."""
    label_smoothing: float = 0.0
    """cDPO: probability that a label is flipped, in ``[0, 0.5)``; ties always use 0.5."""
    precompute_ref: bool = True
    """Compute the reference log-probs once before training (else once per batch)."""
    ref_batch_size: int = 64
    """Pairs per reference forward when precomputing."""
    disable_dropout: bool = True
    """Train in eval mode (no dropout), as TRL does: log-probs match the reference's exactly."""
    optim: LMOptimConfig = DPO_OPTIM
    """Learning rate, pairs per step (one forward over ``2 * batch_size`` sequences), epochs or
    steps, warm-up, clipping, seeding (see :class:`~agents.text.optim.LMOptimConfig`); vary it
    with ``replace(DPO_OPTIM, ...)``."""

    def __post_init__(self) -> None:
        if not isinstance(self.optim, LMOptimConfig):
            raise TypeError(
                f"DPOConfig.optim must be an LMOptimConfig, got {type(self.optim).__name__}: "
                "write DPOConfig(optim=replace(DPO_OPTIM, epochs=3))"
            )
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ValueError(f"beta must be a positive number, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.ref_batch_size < 1:
            raise ValueError(f"ref_batch_size must be >= 1, got {self.ref_batch_size}")


@dataclass
class DPOMetrics(LossHistory):
    """What :func:`train_dpo` did, one entry per optimiser step (batch means).

    Attributes:
        losses: DPO loss.
        accuracies: fraction of pairs whose chosen reward exceeds the rejected one.
        margins: chosen minus rejected implicit reward.
        chosen_rewards: ``beta * (log pi - log pi_ref)`` of the chosen completions.
        rejected_rewards: the same for the rejected ones.
        n_pairs: pairs trained on.
        n_pairs_seen: pairs processed over all steps (an epoch counts each pair once).
        seconds: wall time, tokenization and reference pass included.
        ref_seconds: time of the reference log-prob pass.
    """

    accuracies: list[float] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)
    chosen_rewards: list[float] = field(default_factory=list)
    rejected_rewards: list[float] = field(default_factory=list)
    n_pairs: int = 0
    n_pairs_seen: int = 0
    seconds: float = 0.0
    ref_seconds: float = 0.0

    @property
    def pairs_per_second(self) -> float:
        """Pairs processed (steps x batch, repeats counted) per second of ``seconds``."""
        return self.n_pairs_seen / self.seconds if self.seconds > 0 else float("nan")


def _ref_batches(encoded: Sequence[EncodedPair], pad: int, batch_size: int) -> Iterator[PairBatch]:
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].prompt))  # less padding
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        yield collate_pairs([encoded[i] for i in index], pad, index=index)


def reference_logps(
    ref_model: nn.Module, encoded: Sequence[EncodedPair], pad: int, batch_size: int
) -> tuple[Tensor, Tensor]:
    """``[N]`` reference log-probs of the chosen and the rejected completions (one pass)."""
    device = next(ref_model.parameters()).device
    chosen = torch.zeros(len(encoded))
    rejected = torch.zeros(len(encoded))
    with torch.inference_mode(), _eval_mode(ref_model):
        for batch in _ref_batches(encoded, pad, batch_size):
            c, r = pair_logps(ref_model, batch.to(device))
            chosen[batch.index] = c.float().cpu()
            rejected[batch.index] = r.float().cpu()
    return chosen, rejected


@contextlib.contextmanager
def _eval_mode(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    was_training = model.training
    if enabled:
        model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with gradients off (the DPO reference)."""
    ref = copy.deepcopy(model).eval()
    for param in ref.parameters():
        param.requires_grad_(False)
    return ref


def train_dpo(
    model: nn.Module,
    ref_model: nn.Module | None,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[PreferencePair | tuple[str, ...]],
    config: DPOConfig | None = None,
    out_dir: str | Path | None = None,
) -> DPOMetrics:
    """Train ``model`` in place with DPO against the frozen ``ref_model``.

    Args:
        model: the policy, a Hugging Face causal LM (usually the SFT model).
        ref_model: the frozen reference (usually a copy of the SFT model); it is never updated.
            None: ``model`` as it is now (its log-probs are taken before the first step, or a
            frozen copy is made when ``config.precompute_ref`` is false).
        tokenizer: the tokenizer of both models.
        pairs: :class:`PreferencePair` s or ``(prompt, chosen, rejected)`` tuples.
        config: settings (defaults: :class:`DPOConfig`).
        out_dir: if given, the trained model and the tokenizer are saved there.

    Returns:
        Per-step loss, accuracy, reward margin and rewards.

    Raises:
        VocabMismatchError: the tokenizer emits ids a model cannot embed.
        ValueError: no pairs, or a sequence longer than ``config.optim.max_length``.
    """
    config = config or DPOConfig()
    optim = config.optim
    start = time.perf_counter()
    check_vocab(tokenizer, model)
    if ref_model is not None:
        check_vocab(tokenizer, ref_model)
    encoded = encode_pairs(tokenizer, pairs, optim.max_length, optim.add_bos)
    check_context(model, max(len(p.prompt) + max(len(p.chosen), len(p.rejected)) for p in encoded))
    pad = pad_id(tokenizer)
    metrics = DPOMetrics(n_pairs=len(encoded))
    ref = None
    if config.precompute_ref:  # the policy itself is the reference before its first step
        ref = reference_logps(
            model if ref_model is None else ref_model, encoded, pad, config.ref_batch_size
        )
        metrics.ref_seconds = time.perf_counter() - start
    elif ref_model is None:
        ref_model = frozen_copy(model)
    device = next(model.parameters()).device
    optimizer, scheduler = make_optimizer(model, optim)
    model.train(not config.disable_dropout)
    with progress_bar(n_steps(len(encoded), optim), optim.progress, "DPO") as bar:
        for index in batch_indices(len(encoded), optim):
            batch = collate_pairs(
                [encoded[i] for i in index], pad, config.label_smoothing, index
            ).to(device)
            if ref is not None:
                ref_chosen, ref_rejected = (r[torch.as_tensor(index)].to(device) for r in ref)
            else:
                ref_chosen, ref_rejected = _ref_pair_logps(ref_model, batch, device)
            chosen, rejected = pair_logps(model, batch)
            losses, chosen_rewards, rejected_rewards = dpo_loss(
                chosen, rejected, ref_chosen, ref_rejected, config.beta, batch.label_smoothing
            )
            loss = losses.mean()
            optimizer_step(model, loss, optimizer, scheduler, optim.max_grad_norm)
            _record(metrics, loss, chosen_rewards, rejected_rewards)
            metrics.n_pairs_seen += len(index)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics.losses[-1]:.3f}", acc=f"{metrics.accuracies[-1]:.2f}")
    model.eval()
    metrics.seconds = time.perf_counter() - start
    if out_dir is not None:
        save_model(model, tokenizer, out_dir)
    return metrics


def _ref_pair_logps(
    ref_model: nn.Module, batch: PairBatch, device: torch.device
) -> tuple[Tensor, Tensor]:
    ref_device = next(ref_model.parameters()).device
    with torch.no_grad(), _eval_mode(ref_model):
        chosen, rejected = pair_logps(ref_model, batch.to(ref_device))
    return chosen.to(device), rejected.to(device)


def _record(metrics: DPOMetrics, loss: Tensor, chosen: Tensor, rejected: Tensor) -> None:
    stats = torch.stack(
        [loss.detach(), (chosen > rejected).float().mean(), (chosen - rejected).mean(),
         chosen.mean(), rejected.mean()]
    ).tolist()  # fmt: skip
    for values, value in zip(
        (metrics.losses, metrics.accuracies, metrics.margins, metrics.chosen_rewards,
         metrics.rejected_rewards),
        stats,
        strict=True,
    ):  # fmt: skip
        values.append(value)
