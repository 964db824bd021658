"""The key/value cache that lets a causal-LM policy roll out one token per step.

A :class:`KVState` follows a batch of left-padded episodes (rows of the text env's observation)
across steps. :func:`extend_cache` brings it up to date with the next observation and runs each
row's newest token: a row that is the cached one plus one token costs one token of compute; a row
that started a new episode (vector-env autoreset) has its prompt prefilled and spliced into the
batch cache, in place when it fits, else in a rebuilt cache. Keys and values are right-aligned:
row ``i``'s real entries are its last columns, columns before them are zeros and masked.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Extended", "KVState", "extend_cache", "positions"]


def positions(mask: Tensor) -> Tensor:
    """Position ids ``[N, L]`` that count real tokens only (left padding gets 0)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


@dataclass
class KVState:
    """Key/value cache of a batch of episodes after the last cached call.

    Attributes:
        ids, mask: ``[N, L]`` the observation the cache covers (masked ids, 0 on padding).
        lengths: ``[N]`` real tokens per row.
        cache: a ``transformers.DynamicCache`` whose per-layer keys/values
            ``[N, heads, C, head_dim]`` are right-aligned: row i's ``lengths[i]`` entries are its
            last columns, the columns before are zeros. The model extends it in place.
        cache_mask: ``[N, C]`` 1 where the cache holds a real token.
    """

    ids: Tensor
    mask: Tensor
    lengths: Tensor
    cache: Any
    cache_mask: Tensor

    @property
    def layers(self) -> list[tuple[Tensor, Tensor]]:
        return _layers(self.cache)


@dataclass
class Extended:
    """The final hidden states ``[N, D]`` of the newest tokens and the updated cache."""

    hidden: Tensor
    state: KVState


def _cache_kwarg(base: nn.Module) -> str:
    """The forward argument that takes a cache: ``cache`` (transformers >= 5.2x) or the old name."""
    return _cache_kwarg_of(type(base))


@functools.cache
def _cache_kwarg_of(cls: type) -> str:
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _out_cache(out: Any) -> Any:
    cache = out.get("cache")
    return cache if cache is not None else out.get("past_key_values")


def _continuing(state: KVState | None, ids: Tensor, mask: Tensor) -> Tensor:
    """``[N]`` bool: rows whose observation is the cached one plus exactly one new token."""
    n = ids.shape[0]
    if state is None or state.ids.shape != ids.shape or state.ids.device != ids.device:
        return torch.zeros(n, dtype=torch.bool, device=ids.device)
    masked = ids * mask
    same_prefix = (masked[:, :-1] == state.ids[:, 1:]).all(-1)
    return same_prefix & (mask.sum(-1) == state.lengths + 1)


def extend_cache(base: nn.Module, state: KVState | None, ids: Tensor, mask: Tensor) -> Extended:
    """Bring the cache up to ``ids[:, :-1]`` for every row, then run the last token of each."""
    from transformers import DynamicCache

    cont = _continuing(state, ids, mask)
    lengths = mask.sum(-1)
    if state is not None and bool(cont.all()):
        # The common step: the model appends one column to the cache in place. No row restarted,
        # so no leading all-padding column can appear and the cache stays <= the window.
        cache, cache_mask = state.cache, state.cache_mask
    elif state is not None and bool(cont.any()) and _fits_in_place(state, ~cont, mask):
        # Some rows restarted with prompts that fit the cache: overwrite just those rows.
        cache, cache_mask = _splice_in_place(base, state, ~cont, ids, mask)
    else:
        layers, cache_mask = _compact(*_rebuild(base, state, cont, ids, mask))
        cache = DynamicCache(ddp_cache_data=layers)
    step_mask = torch.cat([cache_mask, cache_mask.new_ones(len(ids), 1)], dim=1)
    out = base(
        input_ids=ids[:, -1:],
        attention_mask=step_mask,
        position_ids=(lengths - 1).unsqueeze(-1),
        use_cache=True,
        **{_cache_kwarg(base): cache},
    )
    new_state = KVState(ids * mask, mask, lengths, _out_cache(out), step_mask)
    return Extended(out.last_hidden_state[:, -1], new_state)


def _prefill(
    base: nn.Module, ids: Tensor, mask: Tensor, rows: Tensor
) -> tuple[int, list[tuple[Tensor, Tensor]], Tensor]:
    """Keys/values of ``rows``' tokens but the last, in one left-padded forward.

    Returns the longest prefix ``p``, per layer ``(keys, values)`` ``[k, heads, p, head_dim]``
    with padded columns zeroed, and their mask ``[k, p]``.
    """
    width = ids.shape[1]
    prefix = int(mask[rows].sum(-1).max()) - 1  # the last token is run by the step itself
    if prefix == 0:
        return 0, [], mask.new_zeros(int(rows.sum()), 0)
    p_ids, p_mask = ids[rows, width - 1 - prefix : -1], mask[rows, width - 1 - prefix : -1]
    out = base(input_ids=p_ids, attention_mask=p_mask, position_ids=positions(p_mask),
               use_cache=True)  # fmt: skip
    keep = p_mask.bool()[:, None, :, None]
    layers = [(k.where(keep, 0.0), v.where(keep, 0.0)) for k, v in _layers(_out_cache(out))]
    return prefix, layers, p_mask


def _fits_in_place(state: KVState, new: Tensor, mask: Tensor) -> bool:
    """Whether restarted rows can be written into the existing cache tensors."""
    keys = state.cache.layers[0].keys
    if keys.is_inference() and not torch.is_inference_mode_enabled():
        return False  # inference tensors can only be modified in inference mode
    return int(mask[new].sum(-1).max()) - 1 <= state.cache_mask.shape[1]


def _splice_in_place(
    base: nn.Module, state: KVState, new: Tensor, ids: Tensor, mask: Tensor
) -> tuple[Any, Tensor]:
    """Overwrite the restarted rows of the cache with their prefilled prompts (no reallocation)."""
    prefix, prefilled, p_mask = _prefill(base, ids, mask, new)
    capacity = state.cache_mask.shape[1]
    cache_mask = state.cache_mask
    cache_mask[new] = 0
    rows = torch.nonzero(new).squeeze(-1)
    for layer_idx, layer in enumerate(state.cache.layers):
        layer.keys[rows] = 0.0
        layer.values[rows] = 0.0
        if prefix:
            layer.keys[rows, :, capacity - prefix :] = prefilled[layer_idx][0]
            layer.values[rows, :, capacity - prefix :] = prefilled[layer_idx][1]
    if prefix:
        cache_mask[rows, capacity - prefix :] = p_mask
    first = int(cache_mask.any(0).long().argmax()) if capacity else 0
    if first:  # the longest rows restarted: drop the columns nobody uses any more
        for layer in state.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
        cache_mask = cache_mask[:, first:]
    return state.cache, cache_mask


def _rebuild(
    base: nn.Module, state: KVState | None, cont: Tensor, ids: Tensor, mask: Tensor
) -> tuple[list[tuple[Tensor, Tensor]], Tensor]:
    """A new cache of every row's tokens but the last: kept rows copied, new rows prefilled.

    All new rows are prefilled in one left-padded forward; their padded key/value columns are
    zeroed and masked, so the batch cache stays right-aligned.
    """
    n = ids.shape[0]
    new = ~cont
    prefix, prefilled, p_mask = _prefill(base, ids, mask, new)
    kept = state.cache_mask.shape[1] if state is not None and bool(cont.any()) else 0
    capacity = max(kept, prefix)
    cache_mask = ids.new_zeros(n, capacity)
    if prefix:
        cache_mask[new, capacity - prefix :] = p_mask
    old_layers = state.layers if kept else []  # type: ignore[union-attr]
    template = old_layers or prefilled
    if not template:  # every row is a lone BOS: an empty cache
        return _empty_layers(base, ids, n), cache_mask
    if kept:
        cache_mask[cont, capacity - kept :] = state.cache_mask[cont]  # type: ignore[union-attr]
    layers = []
    for layer_idx, (k_ref, v_ref) in enumerate(template):
        keys = k_ref.new_zeros(n, k_ref.shape[1], capacity, k_ref.shape[3])
        values = v_ref.new_zeros(n, v_ref.shape[1], capacity, v_ref.shape[3])
        if kept:
            old_k, old_v = old_layers[layer_idx]
            keys[cont, :, capacity - kept :] = old_k[cont]
            values[cont, :, capacity - kept :] = old_v[cont]
        if prefix:
            keys[new, :, capacity - prefix :] = prefilled[layer_idx][0]
            values[new, :, capacity - prefix :] = prefilled[layer_idx][1]
        layers.append((keys, values))
    return layers, cache_mask


def _layers(cache: Any) -> list[tuple[Tensor, Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _empty_layers(base: nn.Module, ids: Tensor, n: int) -> list[tuple[Tensor, Tensor]]:
    """Zero-length keys/values per layer (shape taken from a one-token probe)."""
    probe = _layers(_out_cache(base(input_ids=ids[:1, -1:], use_cache=True)))
    return [
        (k.new_zeros(n, k.shape[1], 0, k.shape[3]), v.new_zeros(n, v.shape[1], 0, v.shape[3]))
        for k, v in probe
    ]


def _compact(
    layers: list[tuple[Tensor, Tensor]], cache_mask: Tensor
) -> tuple[list[tuple[Tensor, Tensor]], Tensor]:
    """Drop leading cache columns that are padding in every row (keeps the cache <= window)."""
    if cache_mask.shape[1] == 0:
        return layers, cache_mask
    first = int(cache_mask.any(0).long().argmax())
    if first == 0:
        return layers, cache_mask
    return [(k[:, :, first:], v[:, :, first:]) for k, v in layers], cache_mask[:, first:]
