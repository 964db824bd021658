"""The key/value cache that lets a causal-LM policy roll out one token per step.

A :class:`KVState` follows a batch of left-padded episodes (rows of the text env's observation)
across steps. :func:`extend_cache` brings it up to date with the next observation and runs each
row's newest token. A row that is the cached one plus one token costs that token only; a row that
started a new episode (vector-env autoreset) needs its prompt prefilled, in one of three ways
(``prefill``):

- **packed** (the default where the model supports it: Hugging Face models that route attention
  through ``AttentionInterface``, e.g. GPT-2, Llama, Mistral): a single forward over the step's
  real tokens, flat, ``[1, T]``: each continuing row's newest token and each restarted row's
  whole prompt (:mod:`agents.text.kv_buffers` explains the attention). One forward a step and no
  padded tokens;
- **separate**: one forward over the restarted rows' prompts but the last token, written into
  their rows of the cache, then the step's forward over every row;
- **padded**: a single forward over ``[N, prompt length]`` where restarted rows feed their prompts
  and continuing rows their last tokens (recomputed, their keys/values not stored).

On the default tiny GPT-2 on one CPU thread a forward's fixed cost (Python and dispatch)
outweighs its arithmetic, so the second forward of a separate prefill and the padding of a padded
one both cost more than packing: env rollouts at 0.84x forced ``generate`` packed, 0.70x separate,
0.53x padded (benchmarks/bench_text_rollout.py, idle, benchmarks/RESULTS.md). Padded is the
fallback on accelerators for models without the attention interface, separate on a CPU.

The cache lives in preallocated buffers ``[N, heads, capacity, head_dim]`` per layer
(:class:`~agents.text.kv_buffers.BufferLayer`) that the model writes in place (Hugging Face's
``DynamicCache`` concatenates, copying the whole cache at every token). The model sees the live columns
``[start, end)``; keys and values are right-aligned there (row ``i``'s real entries are its last
``lengths[i] - 1`` live columns, the columns before them are masked) and the step writes column
``end``. When the buffers are full the live columns move back to end at column ``L - 1`` (at
most one copy every ``L + 1`` steps, ``L`` the observation width).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # transformers is imported where a cache is built: the text extra
    from transformers.cache_utils import Cache

    from agents.text.kv_buffers import BufferLayer

__all__ = [
    "PREFILL_MODES",
    "Extended",
    "KVState",
    "cache_kwarg",
    "distinct_rows",
    "extend_cache",
    "packable",
    "positions",
]

PREFILL_MODES = ("packed", "separate", "padded")
"""Where :func:`extend_cache` prefills the prompts of restarted rows (see the module docstring)."""


def positions(mask: Tensor) -> Tensor:
    """Position ids ``[N, L]`` that count real tokens only (left padding gets 0)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def distinct_rows(ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(first, inverse)``: the first row ``[U]`` of each distinct left-padded row of ``ids``/
    ``mask`` ``[N, L]``, and each row's index among them ``[N]`` (``ids[first][inverse]`` equals
    ``ids`` on the real tokens). The ``G`` samples of one prompt are one distinct row."""
    key = torch.where(mask.bool(), ids, -1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    rows = torch.arange(len(ids), device=ids.device)
    first = torch.full((int(inverse.max()) + 1,), len(ids), device=ids.device)
    return first.scatter_reduce(0, inverse, rows, "amin"), inverse


@dataclass
class _Packing:
    """The layout of a packed step's ``T`` tokens (:mod:`agents.text.kv_buffers`): first every
    row's newest token (token ``i`` is row ``i``'s), then a ``[k, q - 1]`` grid, row-major, of
    the earlier tokens of the ``k`` new prompts longer than one token (right-aligned; a shorter
    prompt's empty slots hold padding whose keys go to columns masked for its row).

    Attributes:
        rows, columns: ``[T]`` the cache row and column each token's keys/values go to.
        visible: ``[N, 1, 1, live]`` bool, the live cache columns of each row.
        prompts: ``k``, the rows of the grid (0: no grid).
        prompt_visible: ``[k, 1, q - 1, q - 1]`` bool: causal inside each prompt, its real
            tokens only (an empty slot sees itself, so no query row is empty).
        new_keys, new_values: the running layer's keys/values of the ``T`` tokens, set by
            :meth:`~agents.text.kv_buffers.BufferLayer.update` (the grid attends to these).
    """

    rows: Tensor
    columns: Tensor
    visible: Tensor
    prompts: int = 0
    prompt_visible: Tensor | None = None
    new_keys: Tensor | None = None
    new_values: Tensor | None = None


@dataclass
class _Span:
    """The live cache columns ``[start, end)``, shared by every layer of one cache.

    During a merged forward of ``queries`` tokens per row, ``restarted`` ``[k]`` holds the rows
    whose first ``queries - 1`` tokens are stored (in the columns before ``end``); every row's
    last token goes to column ``end``.
    """

    start: int
    end: int
    queries: int = 1
    restarted: Tensor | None = None


@dataclass
class KVState:
    """Key/value cache of a batch of episodes after the last cached call.

    Attributes:
        ids: ``[N, L]`` the observation the cache covers (masked ids, 0 on padding).
        lengths: ``[N]`` real tokens per row (all but the last are in the cache after a call).
        layers: one :class:`~agents.text.kv_buffers.BufferLayer` per attention layer; ``cache``
            (the ``transformers`` ``Cache`` passed to the model, which extends it in place) holds
            them.
        span: the live columns ``[start, end)`` of the buffers.
        mask_buf: ``[N, capacity]`` 1 where the buffers hold a row's real token; 0 outside
            ``span``.
    """

    ids: Tensor
    lengths: Tensor
    layers: list[BufferLayer]
    cache: Cache
    span: _Span
    mask_buf: Tensor

    @property
    def cache_mask(self) -> Tensor:
        """``[N, end - start]`` 1 where the live cache holds a real token."""
        return self.mask_buf[:, self.span.start : self.span.end]


@dataclass
class Extended:
    """The final hidden states ``[N, D]`` of the newest tokens and the updated cache."""

    hidden: Tensor
    state: KVState


def cache_kwarg(base: nn.Module) -> str:
    """The forward argument that takes a cache: ``cache`` (transformers >= 5.2x) or the old name."""
    return _cache_kwarg_of(type(base))


@functools.cache
def _cache_kwarg_of(cls: type) -> str:
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _out_cache(out: Any) -> Any:
    cache = out.get("cache")
    return cache if cache is not None else out.get("past_key_values")


def _new_state(base: nn.Module, ids: Tensor) -> KVState:
    """An empty cache for ``ids`` ``[N, L]``: capacity ``2L``, live columns empty at ``L - 1``.

    A row caches at most ``L - 1`` tokens, so a prompt always fits left of ``end >= L - 1``, and
    after the live columns move back to ``L - 1`` at least ``L + 1`` steps fit to the right.
    """
    from transformers.cache_utils import Cache

    from agents.text.kv_buffers import BufferLayer

    n, width = ids.shape
    span = _Span(width - 1, width - 1)
    n_layers = int(base.config.get_text_config().num_hidden_layers)
    layers = [BufferLayer(span, n, 2 * width) for _ in range(n_layers)]
    return KVState(ids.new_zeros(n, width), ids.new_zeros(n), layers, Cache(layers=layers), span,
                   ids.new_zeros(n, 2 * width))  # fmt: skip


def _reusable(state: KVState, ids: Tensor) -> bool:
    """Whether ``state`` can follow the batch ``ids`` (same shape and device, writable)."""
    if state.ids.shape != ids.shape or state.ids.device != ids.device:
        return False
    # Inference tensors (a cache built under torch.inference_mode) can only be written there.
    return not (state.mask_buf.is_inference() and not torch.is_inference_mode_enabled())


def _continuing(state: KVState, masked: Tensor, lengths: Tensor) -> Tensor:
    """``[N]`` bool: rows whose observation (``masked`` ids ``[N, L]``, 0 on padding, with
    ``lengths`` ``[N]`` real tokens) is the cached one plus exactly one new token."""
    same_prefix = (masked[:, :-1] == state.ids[:, 1:]).all(-1)
    return same_prefix & (lengths == state.lengths + 1)


def packable(base: nn.Module) -> bool:
    """Whether ``base`` can run packed steps: its attention goes through ``transformers``'
    ``AttentionInterface`` (the model class says so with ``_supports_attention_backend``)."""
    return bool(getattr(type(base), "_supports_attention_backend", False))


def extend_cache(
    base: nn.Module,
    state: KVState | None,
    ids: Tensor,
    mask: Tensor,
    prefill: str = "separate",
) -> Extended:
    """Bring the cache up to ``ids[:, :-1]`` for every row, then run the last token of each.

    Args:
        base: the transformer trunk (ids -> final hidden states), e.g. ``model.base_model``.
        state: the cache after the previous call on this batch, or None.
        ids: ``[N, L]`` the left-padded observation's token ids.
        mask: ``[N, L]`` its attention mask (``mask[:, -1]`` all 1).
        prefill: where restarted rows' prompts run, one of :data:`PREFILL_MODES` (see the module
            docstring); ``"packed"`` needs :func:`packable` ``(base)``.

    Returns:
        The hidden states ``[N, D]`` of each row's last token, and the cache covering ``ids``
        (``state`` itself, updated in place, when it could be reused).
    """
    if prefill not in PREFILL_MODES:
        raise ValueError(f"prefill={prefill!r}: choose one of {PREFILL_MODES}")
    masked, lengths = ids * mask, mask.sum(-1)
    if state is None or not _reusable(state, ids):
        state = _new_state(base, ids)
        restarted = torch.ones(len(ids), dtype=torch.bool, device=ids.device)
    else:
        restarted = ~_continuing(state, masked, lengths)
    span = state.span
    index = torch.nonzero(restarted).squeeze(-1) if bool(restarted.any()) else None
    if index is not None:
        _forget(state, index)
    if span.end == state.mask_buf.shape[1]:
        _move_back(state)
    if index is not None and prefill == "packed":
        hidden = _packed_step(base, state, index, ids, mask, lengths)
    else:
        hidden = _step(base, state, index, ids, mask, prefill)
    span.end += 1
    state.ids, state.lengths = masked, lengths
    return Extended(hidden, state)


def _step(
    base: nn.Module, state: KVState, index: Tensor | None, ids: Tensor, mask: Tensor, prefill: str
) -> Tensor:
    """A step over ``[N, q]`` tokens: the newest of each row (``q = 1``), after a separate
    prefill of the restarted rows ``index``, or with their prompts padded in (``"padded"``)."""
    span, queries = state.span, 1
    if index is not None and prefill == "padded":
        queries = _place_prompts(state, index, mask)
    elif index is not None:
        _prefill(base, state, index, ids, mask)
    state.mask_buf[:, span.end] = 1
    try:
        out = base(
            input_ids=ids[:, -queries:],
            attention_mask=state.mask_buf[:, span.start : span.end + 1],
            position_ids=positions(mask)[:, -queries:],
            use_cache=True,
            **{cache_kwarg(base): state.cache},
        )
    finally:
        span.queries, span.restarted = 1, None
    return out.last_hidden_state[:, -1]


def _packed_step(
    base: nn.Module, state: KVState, index: Tensor, ids: Tensor, mask: Tensor, lengths: Tensor
) -> Tensor:
    """One forward over the step's real tokens, flat: every row's newest token, then the earlier
    tokens of the restarted rows' prompts (``index``, forgotten before), whose keys/values end
    at column ``end`` like every other row's newest token. Returns the hidden states ``[N, D]``
    of the newest tokens (``lengths`` ``[N]``: each row's real tokens)."""
    from agents.text.kv_buffers import PACKED, packing

    span, (n, width), device = state.span, ids.shape, ids.device
    queries = int(lengths[index].max())
    first = span.end - queries + 1
    state.mask_buf[index, first : span.end + 1] = mask[index, width - queries :]
    state.mask_buf[:, span.end] = 1
    span.start = min(span.start, first)
    rows = torch.arange(n, device=device)
    plan = _Packing(
        rows, torch.full_like(rows, span.end),
        state.mask_buf[:, span.start : span.end + 1].bool()[:, None, None],
    )  # fmt: skip
    tokens, places = ids[:, -1], lengths - 1
    long = index[lengths[index] > 1]
    if len(long):  # the grid of earlier prompt tokens, padding included
        k, slot = len(long), torch.arange(queries - 1, device=device)
        real = mask[long, width - queries : -1].bool()  # [k, q - 1]
        causal = slot[:, None] >= slot  # [q - 1, q - 1]
        self_only = (slot[:, None] == slot) & ~real[:, :, None]
        plan.prompts, plan.prompt_visible = k, ((causal & real[:, None]) | self_only)[:, None]
        plan.rows = torch.cat([rows, long.repeat_interleave(queries - 1)])
        plan.columns = torch.cat([plan.columns, (first + slot).repeat(k)])
        tokens = torch.cat([tokens, ids[long, width - queries : -1].flatten()])
        at = (lengths[long, None] - queries + slot).clamp(min=0)
        places = torch.cat([places, at.flatten()])
    config = base.config
    attention = config._attn_implementation
    context = packing.set(plan)
    config._attn_implementation = PACKED
    try:
        out = base(
            input_ids=tokens[None], position_ids=places[None], use_cache=True,
            **{cache_kwarg(base): state.cache},
        )  # fmt: skip
    finally:
        config._attn_implementation = attention
        packing.reset(context)
    return out.last_hidden_state[0, :n]


def _place_prompts(state: KVState, index: Tensor, mask: Tensor) -> int:
    """Set up a merged forward: the rows ``index`` (forgotten before) feed their whole prompts.

    Every row feeds its last ``q`` tokens (``q`` the longest restarted prompt): the restarted
    rows' keys/values go to the columns ``end - q + 1 .. end``, the other rows' first ``q - 1``
    queries are recomputations whose keys/values are dropped. Returns ``q``.
    """
    span, width = state.span, mask.shape[1]
    queries = int(mask[index].sum(-1).max())
    first = span.end - queries + 1
    state.mask_buf[index, first : span.end + 1] = mask[index, width - queries :]
    span.start = min(span.start, first)
    span.queries, span.restarted = queries, index
    return queries


def _forget(state: KVState, index: Tensor) -> None:
    """Mask out every cached token of the rows ``index`` ``[k]``; narrow the live columns."""
    span = state.span
    state.mask_buf[index, span.start : span.end] = 0
    live = torch.nonzero(state.mask_buf[:, span.start : span.end].any(0))
    span.start = span.start + int(live[0]) if len(live) else span.end


def _move_back(state: KVState) -> None:
    """Move the live columns so they end at column ``L - 1`` (the buffers' right end is full).

    Called after the restarted rows were forgotten: every row then caches at most ``L - 1``
    tokens, so the live columns fit left of ``L - 1``.
    """
    span, width = state.span, state.ids.shape[1]
    to = width - 1 - (span.end - span.start)
    for layer in state.layers:
        layer.move(span.start, span.end, to)
    moved = state.mask_buf[:, span.start : span.end].clone()
    state.mask_buf.zero_()
    state.mask_buf[:, to : width - 1] = moved
    span.start, span.end = to, width - 1


def _prefill(base: nn.Module, state: KVState, index: Tensor, ids: Tensor, mask: Tensor) -> None:
    """Cache the prompts but the last token of the rows ``index`` ``[k]`` (forgotten before).

    One left-padded forward over these rows alone; its keys/values are written right-aligned
    before column ``end``, widening the live columns to the left if a prompt is longer.
    """
    span, width = state.span, ids.shape[1]
    prefix = int(mask[index].sum(-1).max()) - 1  # the last token is run by the step itself
    if prefix == 0:
        return
    p_ids, p_mask = ids[index, width - 1 - prefix : -1], mask[index, width - 1 - prefix : -1]
    out = base(input_ids=p_ids, attention_mask=p_mask, position_ids=positions(p_mask),
               use_cache=True)  # fmt: skip
    column = span.end - prefix
    for layer, prefilled in zip(state.layers, _out_cache(out).layers, strict=True):
        layer.write_rows(index, column, prefilled.keys, prefilled.values)
    state.mask_buf[index, column : span.end] = p_mask
    span.start = min(span.start, column)
