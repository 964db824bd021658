"""What one step of the DPO family computes: completion log-probs, the reference's, each loss.

:func:`sequence_logps` is the one forward every loss reads (log-softmax only at completion
positions); :func:`reference_logps` runs it once over the data for the frozen reference.
:class:`EncodedData` hands :func:`~agents.text.dpo.train_dpo` pairs tokenized elsewhere with
their own collate: a dialogue's pairs (:mod:`agents.text.dialogue`) mark only the policy's turns
in ``completion_mask``, so the user's tokens never enter a summed log-prob, hence no loss.
:data:`STEPS` maps each :class:`~agents.text.dpo.DPOConfig` ``loss`` to the function that turns
one batch into its per-item losses (the pure functions of :mod:`agents.text.dpo_losses`) and the
numbers :class:`~agents.text.dpo.DPOMetrics` records; :func:`agents.text.dpo.train_dpo` is the
loop around it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

import torch
from torch import Tensor, nn

from agents.text.dpo_losses import (
    dpo_loss,
    ipo_loss,
    kto_kl_estimate,
    kto_loss,
    robust_dpo_loss,
    simpo_loss,
)
from agents.text.pairs import EncodedPair, PairBatch, collate_pairs
from agents.text.unpaired import EncodedExample, ExampleBatch

if TYPE_CHECKING:
    from agents.text.dpo import DPOConfig

__all__ = [
    "STEPS",
    "Batch",
    "EncodedData",
    "StepLosses",
    "batch_reference",
    "eval_mode",
    "frozen_copy",
    "pair_logps",
    "reference_logps",
    "sequence_logps",
]

Batch = PairBatch | ExampleBatch
"""A batch of two rows per item: (chosen, rejected) of a pair or (matched, KL) of an example."""

Encoded = EncodedPair | EncodedExample


class EncodedItem(Protocol):
    """What the loop reads of a pre-encoded pair (an :class:`EncodedPair` has all of it)."""

    @property
    def prompt(self) -> list[int]:
        """The prompt's ids (the reference pass sorts by their length)."""
        ...

    @property
    def tie(self) -> bool:
        """The pair is a tie (robust DPO refuses ties)."""
        ...

    @property
    def longest(self) -> int:
        """Tokens of the longer row (checked against the model's context)."""
        ...


@dataclass(frozen=True)
class EncodedData:
    """Preference pairs tokenized elsewhere, and the collate that batches them for DPO.

    Attributes:
        items: the encoded pairs.
        collate: ``collate(items, pad_token_id, label_smoothing=eps, index=positions) ->
            PairBatch`` (chosen rows, then rejected rows); its ``completion_mask`` marks the
            tokens whose log-probs are summed (a dialogue: the policy's turns only).
    """

    items: Sequence[EncodedItem]
    collate: Callable[..., PairBatch]


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


def pair_logps(model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
    """``[B]`` log-probs of the first and the second rows of each item (a pair's chosen and
    rejected completions; an example's completion and KL row) from one forward over ``[2B, L]``."""
    logps = sequence_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask)
    return logps.chunk(2)


# ----------------------------------------------------------------------------- one step's losses


RefLogps = tuple[Tensor, Tensor] | None
"""Reference log-probs of a batch's first and second rows (``[B]`` each); None for SimPO."""


class StepLosses(NamedTuple):
    """One batch's per-item losses and what :class:`~agents.text.dpo.DPOMetrics` records.

    Attributes:
        losses: ``[B]`` per pair (kto: per example), before the items' weights.
        chosen_rewards: implicit rewards of the chosen (kto: desirable) completions.
        rejected_rewards: those of the rejected (kto: undesirable) ones.
        correct: ``[B]`` bool, the item is ranked (kto: classified) as its label says.
        kl: kto only: the reference point ``z0`` (0-d).
    """

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    correct: Tensor
    kl: Tensor | None = None


def _pairwise(losses: Tensor, chosen_rewards: Tensor, rejected_rewards: Tensor) -> StepLosses:
    return StepLosses(losses, chosen_rewards, rejected_rewards, chosen_rewards > rejected_rewards)


def _lengths(batch: PairBatch) -> list[Tensor]:
    """``[B]`` completion token counts of the chosen and of the rejected rows."""
    return list(batch.completion_mask.sum(1).chunk(2))


def _sigmoid_step(
    config: DPOConfig, model: nn.Module, batch: PairBatch, ref: RefLogps
) -> StepLosses:
    logps = pair_logps(model, batch)
    return _pairwise(*dpo_loss(*logps, *ref, config.beta, batch.label_smoothing))


def _ipo_step(config: DPOConfig, model: nn.Module, batch: PairBatch, ref: RefLogps) -> StepLosses:
    logps = pair_logps(model, batch)
    return _pairwise(*ipo_loss(*logps, *ref, *_lengths(batch), config.beta, batch.label_smoothing))


def _robust_step(
    config: DPOConfig, model: nn.Module, batch: PairBatch, ref: RefLogps
) -> StepLosses:
    logps = pair_logps(model, batch)
    return _pairwise(*robust_dpo_loss(*logps, *ref, config.beta, config.label_smoothing))


def _simpo_step(config: DPOConfig, model: nn.Module, batch: PairBatch, ref: RefLogps) -> StepLosses:
    logps = pair_logps(model, batch)
    return _pairwise(
        *simpo_loss(*logps, *_lengths(batch), config.simpo_beta, config.simpo_gamma_beta_ratio,
                    batch.label_smoothing)
    )  # fmt: skip


def _kto_step(
    config: DPOConfig, model: nn.Module, batch: ExampleBatch, ref: RefLogps
) -> StepLosses:
    """KTO: the matched rows with gradients, the KL rows without (``z0`` is a constant)."""
    ref_logps, ref_kl_logps = ref  # type: ignore[misc]  (KTO reads a reference)
    rows = (batch.input_ids, batch.attention_mask, batch.completion_mask)
    half = len(batch.desirable)
    logps = sequence_logps(model, *(t[:half] for t in rows))
    with torch.no_grad():
        kl_logps = sequence_logps(model, *(t[half:] for t in rows))
    kl = kto_kl_estimate(kl_logps, ref_kl_logps)
    losses, rewards = kto_loss(logps, ref_logps, batch.desirable, kl, config.beta,
                               config.kto_desirable_weight, config.kto_undesirable_weight)  # fmt: skip
    threshold = config.beta * kl
    correct = torch.where(batch.desirable, rewards > threshold, rewards < threshold)
    return StepLosses(losses, rewards[batch.desirable], rewards[~batch.desirable], correct, kl)


STEPS: dict[str, Callable[..., StepLosses]] = {
    "sigmoid": _sigmoid_step,
    "ipo": _ipo_step,
    "simpo": _simpo_step,
    "robust": _robust_step,
    "kto": _kto_step,
}
"""``loss -> step(config, model, batch, ref) -> StepLosses``: the one place a loss is chosen."""


# ----------------------------------------------------------------------------- reference


def _ref_batches(
    encoded: Sequence[Encoded], pad: int, batch_size: int, collate: Callable[..., Batch]
) -> Iterator[Batch]:
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].prompt))  # less padding
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        yield collate([encoded[i] for i in index], pad, index=index)


def reference_logps(
    ref_model: nn.Module,
    encoded: Sequence[Encoded],
    pad: int,
    batch_size: int,
    collate: Callable[..., Batch] = collate_pairs,
) -> tuple[Tensor, Tensor]:
    """``[N]`` reference log-probs of every item's first and second rows (one pass): a pair's
    chosen and rejected completions, or with ``collate_examples`` an example's completion and
    KL row."""
    device = next(ref_model.parameters()).device
    first = torch.zeros(len(encoded))
    second = torch.zeros(len(encoded))
    with torch.inference_mode(), eval_mode(ref_model):
        for batch in _ref_batches(encoded, pad, batch_size, collate):
            a, b = pair_logps(ref_model, batch.to(device))
            first[batch.index] = a.float().cpu()
            second[batch.index] = b.float().cpu()
    return first, second


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block, then back in the mode it was in."""
    was_training = model.training
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


def batch_reference(
    ref: tuple[Tensor, Tensor] | None,
    ref_model: nn.Module | None,
    batch: Batch,
    device: torch.device,
) -> RefLogps:
    """A batch's reference log-probs: rows of the precomputed ``ref``, else a no-grad forward of
    ``ref_model``, else None (SimPO)."""
    if ref is not None:
        index = batch.index.cpu()
        return ref[0][index].to(device), ref[1][index].to(device)
    if ref_model is None:
        return None
    ref_device = next(ref_model.parameters()).device
    with torch.no_grad(), eval_mode(ref_model):
        first, second = pair_logps(ref_model, batch.to(ref_device))
    return first.to(device), second.to(device)
