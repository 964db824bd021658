"""Iterative (online) DPO: sample from the current policy, label with any teacher, DPO again.

Each round the policy samples two completions per prompt (:func:`agents.text.sampling.sample_completions`:
plain sampling, the env's prompt layout), ``label_fn(prompt, a, b)`` labels them (a simulated
annotator, a human through a store, a reward model), and :func:`agents.text.dpo.train_dpo` trains on
every pair collected so far against the same frozen reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from agents.text.dpo import DPOConfig, DPOMetrics, frozen_copy, train_dpo
from agents.text.pairs import PreferencePair, as_pair
from agents.text.sampling import sample_completions
from prefenv.text_records import check_vocab

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["IterativeDPOResult", "LabelFn", "iterative_dpo"]

LabelFn = Callable[[str, str, str], "float | None"]
"""``label_fn(prompt, a, b)``: 0 (``a`` better), 1 (``b`` better), 0.5 (tie) or None (skip)."""


@dataclass
class IterativeDPOResult:
    """What :func:`iterative_dpo` did.

    Attributes:
        rounds: the :class:`DPOMetrics` of each round's training.
        pairs: every pair collected (initial ones first), in order.
        pairs_per_round: how many pairs each round added (skipped labels are not added).
    """

    rounds: list[DPOMetrics] = field(default_factory=list)
    pairs: list[PreferencePair] = field(default_factory=list)
    pairs_per_round: list[int] = field(default_factory=list)


def iterative_dpo(
    model: nn.Module,
    ref_model: nn.Module | None,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    label_fn: LabelFn,
    rounds: int,
    config: DPOConfig | None = None,
    samples_per_prompt: int = 2,
    max_new_tokens: int = 24,
    rng: np.random.Generator | None = None,
    initial_pairs: Sequence[PreferencePair | tuple[str, ...]] = (),
) -> IterativeDPOResult:
    """Online (iterative) DPO: sample, label, train on all pairs so far; ``rounds`` times.

    Each round samples ``samples_per_prompt`` completions of every prompt from the current
    ``model``, labels consecutive ones (``(s0, s1), (s2, s3), ...``) with
    ``label_fn(prompt, a, b)`` (0: ``a`` better, 1: ``b``, 0.5: tie, None: skip), appends the
    labelled pairs, and runs :func:`train_dpo` on every pair collected so far, always against
    the same frozen reference.

    Args:
        model: the policy (trained in place).
        ref_model: frozen reference; None: a frozen copy of ``model`` before round 1.
        tokenizer: the tokenizer of both models.
        prompts: prompts to sample from each round.
        label_fn: any teacher callable (a synthetic teacher, a reward model comparison, ...).
        rounds: sample/label/train rounds (>= 1).
        config: DPO settings of every round (``optim.seed`` offset by the round).
        samples_per_prompt: completions per prompt per round (even, >= 2).
        max_new_tokens: generation length cap (prompt + this + 1 must fit ``max_length``).
        rng: seeds sampling; default ``np.random.default_rng(config.optim.seed)``.
        initial_pairs: pairs to start from (e.g. an offline dataset).

    Returns:
        Per-round metrics and the grown list of pairs.
    """
    config = config or DPOConfig()
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if samples_per_prompt < 2 or samples_per_prompt % 2:
        raise ValueError(f"samples_per_prompt must be even and >= 2, got {samples_per_prompt}")
    if not prompts:
        raise ValueError("iterative DPO needs at least one prompt to sample completions for")
    rng = rng if rng is not None else np.random.default_rng(config.optim.seed)
    check_vocab(tokenizer, model)
    ref_model = frozen_copy(model) if ref_model is None else ref_model
    result = IterativeDPOResult(pairs=[as_pair(i, p) for i, p in enumerate(initial_pairs)])
    for round_index in range(rounds):
        repeated = [p for p in prompts for _ in range(samples_per_prompt)]
        seed = int(rng.integers(2**31 - 1))
        samples = sample_completions(model, tokenizer, repeated, max_new_tokens, seed).texts
        added = 0
        for k in range(0, len(repeated), 2):
            prompt, a, b = repeated[k], samples[k], samples[k + 1]
            label = label_fn(prompt, a, b)
            if label is None:
                continue
            if float(label) not in (0.0, 0.5, 1.0):
                raise ValueError(f"label_fn must return 0, 0.5, 1 or None, got {label!r}")
            chosen, rejected = (b, a) if float(label) == 1.0 else (a, b)
            result.pairs.append(PreferencePair(prompt, chosen, rejected, float(label) == 0.5))
            added += 1
        result.pairs_per_round.append(added)
        if not result.pairs:
            raise ValueError(
                f"round {round_index + 1}: label_fn skipped every pair and there are no pairs "
                "yet: nothing to train on"
            )
        round_seed = np.random.SeedSequence(config.optim.seed, spawn_key=(round_index,))
        round_config = _with_seed(config, int(round_seed.generate_state(1)[0]))
        result.rounds.append(train_dpo(model, ref_model, tokenizer, result.pairs, round_config))
    return result


def _with_seed(config: DPOConfig, seed: int) -> DPOConfig:
    return replace(config, optim=replace(config.optim, seed=seed))
