"""Sampling a causal LM on prompts the way the text env lays them out, and scoring the samples.

:func:`sample_completions` draws completions token by token with the model's key/value cache
(pure sampling, temperature 1, no top-k/top-p, so the samples follow the policy the KL is
measured on; :func:`sample_categorical` draws each token), laid out exactly as
:class:`envs.text.TextGenerationEnv` lays out its prompts (BOS first, left padding). The loop
does what Hugging Face ``generate`` does for these settings, without its per-token machinery
(1.3x faster on the tiny default model); the prompts a group repeats are prefilled once.
:func:`completion_logps` sums the log-probabilities of the sampled tokens under any model, so the
per-sequence KL to a reference is the Monte-Carlo estimate ``mean(logp_pi - logp_ref)``.
Iterative DPO samples its pairs here, and the application layer's evaluation
(:mod:`prefenv.app.text_eval`) its held-out completions.

Works with any causal LM whose ``forward(input_ids, attention_mask, position_ids)`` takes a
key/value cache (``cache``, or ``past_key_values`` before transformers 5.2x) and returns
``logits`` (every Hugging Face causal LM, peft-wrapped ones too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from agents.text.kv_cache import cache_kwarg, distinct_rows, positions

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "CompletionSampler",
    "PolicySamples",
    "SampledCompletions",
    "Sampler",
    "completion_logps",
    "completion_token_logps",
    "encode_prompts",
    "sample_categorical",
    "sample_probs",
    "sample_completions",
    "sample_tokens",
]


@dataclass(frozen=True)
class SampledCompletions:
    """Completions sampled for a list of prompts.

    Attributes:
        prompts: the prompts, length N.
        texts: decoded completions (EOS and special tokens removed, stripped), length N.
        prompt_ids: left-padded prompt ids ``[N, P]`` (BOS first when the tokenizer has one).
        prompt_mask: ``[N, P]``, 1 on real prompt tokens.
        completion_ids: ``[N, C]`` sampled tokens; positions after the EOS hold the pad id.
        completion_mask: ``[N, C]``, 1 on sampled tokens up to and including the EOS.
        eos: ``[N]`` bool, whether the completion ended with EOS (else it hit the length cap).
    """

    prompts: list[str]
    texts: list[str]
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    eos: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per completion, EOS included, ``[N]``."""
        return self.completion_mask.sum(1).numpy()


def encode_prompts(
    tokenizer: Any, prompts: Sequence[str], add_bos: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``(ids, mask)`` ``[N, P]`` of the prompts, as the text env encodes them."""
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if add_bos and bos is not None:
        encoded = [[int(bos), *ids] for ids in encoded]
    if any(len(ids) == 0 for ids in encoded):
        raise ValueError("a prompt encodes to no tokens: drop empty prompts or use add_bos=True")
    width = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(encoded), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, seq in enumerate(encoded):
        ids[row, width - len(seq) :] = torch.tensor(seq)
        mask[row, width - len(seq) :] = 1
    return ids, mask


def sample_categorical(log_p: Tensor) -> Tensor:
    """One draw ``[N]`` from each row of normalized log-probs ``[N, K]``, by the inverse CDF
    (:func:`sample_probs` of ``log_p.exp()``)."""
    return sample_probs(log_p.exp())


def sample_probs(probs: Tensor) -> Tensor:
    """One draw ``[N]`` from each row of probabilities ``[N, K]`` (summing to ~1), by the
    inverse CDF.

    Exact sampling from one uniform per row (``torch.multinomial`` costs ~5x more per step on a
    CPU). ``u`` lies in ``(0, total]``, and the first index whose cumulative probability reaches
    it has positive probability, so a zero-probability token is never drawn.
    """
    cdf = probs.cumsum(-1)
    u = (1.0 - torch.rand(len(cdf), 1, dtype=cdf.dtype, device=cdf.device)) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(-1)


def sample_tokens(
    model: Any, ids: Tensor, mask: Tensor, max_new_tokens: int, eos: int, pad: int
) -> Tensor:
    """``[B, T]`` tokens sampled after left-padded prompts ``ids``/``mask`` ``[B, P]``, one
    forward per token with the key/value cache; ``T <= max_new_tokens`` (it stops once every row
    has emitted EOS), the pad id after a row's EOS. Each distinct prompt is prefilled once and
    its keys and values copied to the rows that repeat it (a group's ``G`` samples)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    pass_cache = {cache_kwarg(model): cache}  # ``cache`` from transformers 5.2x on
    first, inverse = distinct_rows(ids, mask)
    position = positions(mask)
    logits = model(input_ids=ids[first], attention_mask=mask[first], position_ids=position[first],
                   use_cache=True, **pass_cache).logits[inverse, -1]  # fmt: skip
    cache.batch_select_indices(inverse)  # the rows of ``first`` -> the rows of ``ids``
    position = position[:, -1:]
    done = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
    tokens: list[Tensor] = []
    while True:
        token = sample_probs(torch.softmax(logits.float(), -1))
        tokens.append(token.masked_fill(done, pad))
        done |= token == eos
        if len(tokens) == max_new_tokens or bool(done.all()):
            return torch.stack(tokens, 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        position = position + 1
        logits = model(input_ids=tokens[-1][:, None], attention_mask=mask, position_ids=position,
                       use_cache=True, **pass_cache).logits[:, -1]  # fmt: skip


@torch.inference_mode()
def sample_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    seed: int,
    batch_size: int = 64,
) -> SampledCompletions:
    """Sample one completion per prompt (temperature 1, full distribution), seeded.

    Args:
        model: a Hugging Face causal LM (its forward, with a key/value cache).
        tokenizer: its tokenizer (needs an EOS token).
        prompts: the prompts (repeat a prompt to sample it several times).
        max_new_tokens: the length cap (the env's ``max_new_tokens``).
        seed: seeds torch's generator for the sampling (restored afterwards).
        batch_size: prompts sampled together.
    """
    eos, pad = int(tokenizer.eos_token_id), tokenizer.pad_token_id
    pad = eos if pad is None else int(pad)
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts)
    chunks = []
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            ids = prompt_ids[start : start + batch_size].to(device)
            mask = prompt_mask[start : start + batch_size].to(device)
            new = sample_tokens(model, ids, mask, max_new_tokens, eos, pad).cpu()
            chunks.append(
                torch.nn.functional.pad(new, (0, max_new_tokens - new.shape[1]), value=pad)
            )
    model.train(was_training)
    completion_ids = torch.cat(chunks)
    is_eos = completion_ids == eos
    first_eos = torch.where(is_eos.any(1), is_eos.float().argmax(1), completion_ids.shape[1])
    positions = torch.arange(completion_ids.shape[1])
    completion_mask = (positions[None, :] <= first_eos[:, None]).long()
    ended = is_eos.any(1)
    completion_ids = torch.where(completion_mask.bool(), completion_ids, pad)
    texts = [
        tokenizer.decode(row[: int(n)][~(row[: int(n)] == eos)], skip_special_tokens=True).strip()
        for row, n in zip(completion_ids, completion_mask.sum(1), strict=True)
    ]
    return SampledCompletions(
        list(prompts), texts, prompt_ids, prompt_mask, completion_ids, completion_mask,
        ended.numpy(),
    )  # fmt: skip


def completion_token_logps(
    model: Any, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
    completion_mask: Tensor,
) -> Tensor:  # fmt: skip
    """Log-probs ``[N, C]`` of each completion token given its prefix, 0 on padding (any device).

    The sequences are ``[prompt | completion]`` with the left-padded prompt as sampled and the
    position ids that count real tokens (those the sampler used). Each distinct prompt runs once
    and its keys and values serve every row that continues it (the ``G`` completions of a
    group), so a group's prompt costs one row, not ``G``; gradients flow through the shared
    keys and values to every row's loss.
    """
    n_prompt, n_new = prompt_ids.shape[1], completion_ids.shape[1]
    ids = torch.cat([prompt_ids, completion_ids], 1)
    mask = torch.cat([prompt_mask, completion_mask], 1)
    position = positions(mask)
    first, inverse = distinct_rows(prompt_ids, prompt_mask)
    if len(first) == len(ids):  # no prompt repeats: one forward over every row
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position,
                       use_cache=False).logits[:, n_prompt - 1 : -1]  # fmt: skip
    else:
        from transformers import DynamicCache

        cache = DynamicCache()
        pass_cache = {cache_kwarg(model): cache}
        logits = model(input_ids=prompt_ids[first], attention_mask=prompt_mask[first],
                       position_ids=position[first, :n_prompt], use_cache=True,
                       **pass_cache).logits[inverse, -1:]  # fmt: skip
        if n_new > 1:  # the last completion token predicts nothing: it is not run
            cache.batch_select_indices(inverse)
            tail = model(input_ids=completion_ids[:, :-1], attention_mask=mask[:, :-1],
                         position_ids=position[:, n_prompt:-1], use_cache=True,
                         **pass_cache).logits  # fmt: skip
            logits = torch.cat([logits, tail], 1)
    logits = logits.float()  # position t predicts token t + 1
    picked = logits.gather(-1, completion_ids[..., None]).squeeze(-1) - logits.logsumexp(-1)
    return picked * completion_mask


@torch.inference_mode()
def completion_logps(model: Any, samples: SampledCompletions, batch_size: int = 64) -> np.ndarray:
    """``[N]`` sums of log p(completion token | prefix) over each completion's tokens (EOS
    included)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    tensors = (samples.prompt_ids, samples.prompt_mask, samples.completion_ids,
               samples.completion_mask)  # fmt: skip
    for start in range(0, len(samples.prompts), batch_size):
        rows = slice(start, start + batch_size)
        token_logp = completion_token_logps(model, *(t[rows].to(device) for t in tensors))
        out.append(token_logp.sum(1).float().cpu())
    model.train(was_training)
    return torch.cat(out).numpy()


class PolicySamples(NamedTuple):
    """What GRPO trains on: ``[prompt | continuation]`` sequences and the tokens the policy chose.

    Attributes:
        samples: the sequences (``texts`` are what ``reward_fn`` scores); ``completion_mask``
            is 1 on every real continuation token, the positions attention reads.
        loss_mask: ``[N, C]``, 1 on the continuation tokens the policy sampled: equal to
            ``completion_mask`` for completions, 0 on a dialogue's user tokens.
    """

    samples: SampledCompletions
    loss_mask: Tensor


class Sampler(Protocol):
    """Draws one sequence per prompt (repeat a prompt for a group), seeded."""

    def __call__(self, model: nn.Module, prompts: list[str], seed: int) -> PolicySamples:
        """``len(prompts)`` sequences sampled from ``model`` (temperature 1)."""
        ...


@dataclass(frozen=True)
class CompletionSampler:
    """The default :class:`Sampler`: one completion per prompt, laid out as the text envs do.

    Attributes:
        tokenizer: the policy's tokenizer.
        max_new_tokens: the completion length cap (EOS included).
    """

    tokenizer: PreTrainedTokenizerBase
    max_new_tokens: int

    def __call__(self, model: nn.Module, prompts: list[str], seed: int) -> PolicySamples:
        samples = sample_completions(model, self.tokenizer, prompts, self.max_new_tokens, seed)
        return PolicySamples(samples, samples.completion_mask)
