"""Direct preference optimisation (DPO) and its family, one training loop for every loss.

DPO (Rafailov et al., 2023) trains the policy directly on comparisons, without a reward model
or rollouts. With ``log pi(y | x)`` the summed log-probability of a completion's tokens given
its prompt and ``pi_ref`` the frozen SFT model::

    h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))
    L = -log sigmoid(beta * h)                  (label smoothing eps: a soft label 1 - eps)

``beta * (log pi(y) - log pi_ref(y))`` is the implicit reward of ``y``; a pair counts as
"accurate" when the chosen completion's reward exceeds the rejected one's. A tie (label 0.5)
is trained with the soft label 0.5, i.e. pushed towards equal implicit rewards.

:class:`DPOConfig` ``loss`` picks the family member (the losses themselves are the pure
functions of :mod:`agents.text.dpo_losses`, with their formulas): ``sigmoid`` (DPO, cDPO),
``ipo``, ``robust``, ``simpo`` (no reference model: its pass is skipped) and ``kto``, which
trains on unpaired examples (:mod:`agents.text.unpaired`): each pair gives one desirable and one
undesirable example, and :class:`prefenv.unpaired.UnpairedExample` s (e.g. from
:func:`prefenv.unpaired.import_unpaired_jsonl`) train as they are. Uncertainty-aware DPO is
data, not a loss: :func:`agents.text.pairs.reweight_pairs` relabels and weights the pairs by a
reward-model ensemble, and every loss here averages ``weight * loss`` over a batch.

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

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from agents.text.activations import fuse_activations
from agents.text.dpo_losses import LOSSES, dpo_loss
from agents.text.dpo_steps import (
    STEPS,
    Batch,
    Encoded,
    EncodedData,
    EncodedItem,
    StepLosses,
    batch_reference,
    frozen_copy,
    pair_logps,
    reference_logps,
    sequence_logps,
)
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
    PreferencePair,
    collate_pairs,
    encode_pairs,
    pairs_from_comparisons,
)
from agents.text.sft import check_context, pad_id
from agents.text.unpaired import EncodedExample, collate_examples, encode_examples
from prefenv.text_records import check_vocab
from prefenv.unpaired import UnpairedExample

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "DPOConfig",
    "DPOMetrics",
    "EncodedData",
    "LOSSES",
    "PreferencePair",
    "UnpairedExample",
    "dpo_loss",
    "frozen_copy",
    "pair_logps",
    "pairs_from_comparisons",
    "reference_logps",
    "sequence_logps",
    "train_dpo",
]


@dataclass(frozen=True)
class DPOConfig:
    """DPO-family settings (validated on construction): the shared LM loop plus the loss's own."""

    loss: str = "sigmoid"
    """sigmoid (DPO), ipo, simpo (no reference), robust, or kto (unpaired examples); see
    :mod:`agents.text.dpo_losses`."""
    beta: float = 0.1
    """KL strength of the reference-based losses (sigmoid, ipo, robust, kto): larger keeps the
    policy closer to the reference (0.5 for TL;DR). SimPO's scale is ``simpo_beta``."""
    label_smoothing: float = 0.0
    """Probability that a label is flipped, in ``[0, 0.5)``: sigmoid (cDPO), ipo and simpo train
    on the soft label ``1 - eps``, robust corrects for it; ties always use 0.5; kto ignores it."""
    simpo_beta: float = 2.0
    """SimPO's scale of the average log-prob reward (the paper's 2.0 to 2.5)."""
    simpo_gamma_beta_ratio: float = 0.5
    """SimPO's target margin over ``simpo_beta`` (``gamma = simpo_beta * ratio``)."""
    kto_desirable_weight: float = 1.0
    """KTO's ``lambda_D``, the weight of desirable examples' losses."""
    kto_undesirable_weight: float = 1.0
    """KTO's ``lambda_U``, the weight of undesirable examples' losses."""
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
        if self.loss not in LOSSES:
            raise ValueError(f"unknown DPO loss {self.loss!r}: choose one of {', '.join(LOSSES)}")
        for name in ("beta", "simpo_beta", "kto_desirable_weight", "kto_undesirable_weight"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, got {value}")
        if not (self.simpo_gamma_beta_ratio >= 0 and math.isfinite(self.simpo_gamma_beta_ratio)):
            raise ValueError(
                f"simpo_gamma_beta_ratio must be >= 0, got {self.simpo_gamma_beta_ratio}"
            )
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.ref_batch_size < 1:
            raise ValueError(f"ref_batch_size must be >= 1, got {self.ref_batch_size}")
        if self.loss == "kto" and self.optim.batch_size < 2:
            raise ValueError(
                "loss 'kto' estimates its KL baseline from other examples' completions: "
                f"optim.batch_size must be >= 2, got {self.optim.batch_size}"
            )

    @property
    def uses_reference(self) -> bool:
        """Whether the loss reads a reference model (all but SimPO)."""
        return self.loss != "simpo"


@dataclass
class DPOMetrics(LossHistory):
    """What :func:`train_dpo` did, one entry per optimiser step (batch means).

    Attributes:
        losses: the loss (the weighted batch mean).
        accuracies: pairs whose chosen reward exceeds the rejected one's; kto: examples whose
            implicit reward lies on their label's side of ``beta * z0``.
        margins: mean chosen minus mean rejected implicit reward (kto: desirable minus
            undesirable; NaN if a batch lacks one kind).
        chosen_rewards: ``beta * (log pi - log pi_ref)`` of the chosen (desirable) completions;
            simpo: ``beta`` times the average log-prob.
        rejected_rewards: the same for the rejected (undesirable) ones.
        kl: kto only: the reference point ``z0`` of each step.
        n_pairs: pairs trained on (kto: unpaired examples).
        n_pairs_seen: pairs (examples) processed over all steps (an epoch counts each once).
        seconds: wall time, tokenization and reference pass included.
        ref_seconds: time of the reference log-prob pass.
    """

    accuracies: list[float] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)
    chosen_rewards: list[float] = field(default_factory=list)
    rejected_rewards: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    n_pairs: int = 0
    n_pairs_seen: int = 0
    seconds: float = 0.0
    ref_seconds: float = 0.0

    @property
    def pairs_per_second(self) -> float:
        """Pairs processed (steps x batch, repeats counted) per second of ``seconds``."""
        return self.n_pairs_seen / self.seconds if self.seconds > 0 else float("nan")


def _prepare_reference(
    config: DPOConfig,
    model: nn.Module,
    ref_model: nn.Module | None,
    encoded: Sequence[Encoded],
    collate: Callable[..., Batch],
    pad: int,
) -> tuple[tuple[Tensor, Tensor] | None, nn.Module | None]:
    """``(precomputed [N] log-probs of both rows, or None; the model to run per batch, or None)``.

    SimPO reads no reference (both None). With ``precompute_ref`` the policy itself is the
    reference when ``ref_model`` is None (its log-probs are taken before the first step);
    otherwise a frozen copy of it is made.
    """
    if not config.uses_reference:
        return None, None
    if config.precompute_ref:
        source = model if ref_model is None else ref_model
        return reference_logps(source, encoded, pad, config.ref_batch_size, collate), None
    return None, frozen_copy(model) if ref_model is None else ref_model


# ----------------------------------------------------------------------------- training


def _encode(
    config: DPOConfig, tokenizer: PreTrainedTokenizerBase, data: Sequence[Any] | EncodedData
) -> tuple[Sequence[EncodedPair | EncodedExample | EncodedItem], Callable[..., Batch]]:
    """The data tokenized for ``config.loss``, and the collate function of its batches."""
    optim = config.optim
    if isinstance(data, EncodedData):
        if config.loss == "kto" or not data.items:
            raise ValueError(
                f"pre-encoded pairs (EncodedData, e.g. dialogue pairs) train with the pairwise "
                f"losses sigmoid, ipo, simpo and robust and need at least one pair; got loss "
                f"{config.loss!r} and {len(data.items)} pairs"
            )
        pairs: Sequence[EncodedPair | EncodedItem] = data.items
        collate: Callable[..., Batch] = data.collate
    elif config.loss == "kto":
        encoded = encode_examples(tokenizer, data, optim.max_length, optim.add_bos,
                                  optim.batch_size)  # fmt: skip
        return encoded, collate_examples
    else:
        pairs = encode_pairs(tokenizer, data, optim.max_length, optim.add_bos)
        collate = collate_pairs
    if config.loss == "robust" and any(p.tie for p in pairs):
        raise ValueError(
            "robust DPO corrects strict preferences for label flips and has no form for ties: "
            "drop them (pairs_from_comparisons(..., ties='skip')) or use loss 'sigmoid' or 'ipo'"
        )
    return pairs, functools.partial(collate, label_smoothing=config.label_smoothing)


def train_dpo(
    model: nn.Module,
    ref_model: nn.Module | None,
    tokenizer: PreTrainedTokenizerBase,
    data: Sequence[PreferencePair | UnpairedExample | tuple[Any, ...]] | EncodedData,
    config: DPOConfig | None = None,
    out_dir: str | Path | None = None,
) -> DPOMetrics:
    """Train ``model`` in place with ``config.loss`` against the frozen ``ref_model``.

    Args:
        model: the policy, a Hugging Face causal LM (usually the SFT model).
        ref_model: the frozen reference (usually a copy of the SFT model); it is never updated.
            None: ``model`` as it is now (its log-probs are taken before the first step, or a
            frozen copy is made when ``config.precompute_ref`` is false). SimPO reads none.
        tokenizer: the tokenizer of both models.
        data: :class:`PreferencePair` s or ``(prompt, chosen, rejected)`` tuples; with loss
            ``kto`` also :class:`UnpairedExample` s or ``(prompt, completion, label)`` tuples
            (each pair gives a desirable and an undesirable example); or :class:`EncodedData`,
            pairs tokenized elsewhere (e.g. :func:`agents.text.dialogue.dialogue_pairs`:
            whole dialogues whose user tokens stay out of the summed log-probs).
        config: settings (defaults: :class:`DPOConfig`).
        out_dir: if given, the trained model and the tokenizer are saved there.

    Returns:
        Per-step loss, accuracy, reward margin and rewards (and KTO's ``z0``).

    Raises:
        VocabMismatchError: the tokenizer emits ids a model cannot embed.
        ValueError: no data, an item of the wrong kind for the loss, ties with loss ``robust``,
            or a sequence longer than ``config.optim.max_length``.
    """
    config = config or DPOConfig()
    optim = config.optim
    start = time.perf_counter()
    check_vocab(tokenizer, model)
    if ref_model is not None and config.uses_reference:
        check_vocab(tokenizer, ref_model)
    fuse_activations(model)
    fuse_activations(ref_model)
    encoded, collate = _encode(config, tokenizer, data)
    check_context(model, max(item.longest for item in encoded))
    pad = pad_id(tokenizer)
    metrics = DPOMetrics(n_pairs=len(encoded))
    ref, ref_model = _prepare_reference(config, model, ref_model, encoded, collate, pad)
    if ref is not None:
        metrics.ref_seconds = time.perf_counter() - start
    device = next(model.parameters()).device
    step_losses = STEPS[config.loss]
    optimizer, scheduler = make_optimizer(model, optim)
    model.train(not config.disable_dropout)
    with progress_bar(n_steps(len(encoded), optim), optim.progress, f"DPO {config.loss}") as bar:
        for index in batch_indices(len(encoded), optim):
            batch = collate([encoded[i] for i in index], pad, index=index).to(device)
            step = step_losses(config, model, batch, batch_reference(ref, ref_model, batch, device))
            loss = (batch.weight * step.losses).mean()
            optimizer_step(model, loss, optimizer, scheduler, optim.max_grad_norm)
            _record(metrics, loss, step)
            metrics.n_pairs_seen += len(index)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics.losses[-1]:.3f}", acc=f"{metrics.accuracies[-1]:.2f}")
    model.eval()
    metrics.seconds = time.perf_counter() - start
    if out_dir is not None:
        save_model(model, tokenizer, out_dir)
    return metrics


def _record(metrics: DPOMetrics, loss: Tensor, step: StepLosses) -> None:
    chosen, rejected = step.chosen_rewards.mean(), step.rejected_rewards.mean()
    stats = torch.stack(
        [loss.detach(), step.correct.float().mean(), chosen - rejected, chosen, rejected]
    ).tolist()
    for values, value in zip(
        (metrics.losses, metrics.accuracies, metrics.margins, metrics.chosen_rewards,
         metrics.rejected_rewards),
        stats,
        strict=True,
    ):  # fmt: skip
        values.append(value)
    if step.kl is not None:
        metrics.kl.append(step.kl.item())
