"""The key/value buffers of :mod:`agents.text.kv_cache`: a ``transformers`` cache layer that
the model writes in place, and the attention function of a packed step.

A module of its own so that importing :mod:`agents.text.kv_cache` (and the policy and LoRA
modules above it, which the command line imports) needs no ``transformers``: the text extra is
imported only where a cache is built.

**Packed steps.** A rollout step where some rows restarted feeds the model one flat sequence
``[1, T]``: each continuing row's newest token and each restarted row's whole prompt, ``T`` real
tokens and no padding. Every part of a decoder but attention works token by token, so only
attention needs to know which row a token belongs to. :data:`PACKED` names an attention
implementation (registered with ``transformers.AttentionInterface``) that the step selects for
its forward: it attends each row's newest token to that row's cached keys and values (one query
per row), and the earlier tokens of the new prompts, laid out as a grid at the end of the
sequence, causally to each other (a restarted row's cache holds nothing older). The linear
layers, which dominate a forward, see ``T`` tokens.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.nn import functional as F
from transformers import AttentionInterface
from transformers.cache_utils import DynamicLayer

if TYPE_CHECKING:
    from agents.text.kv_cache import _Packing, _Span

__all__ = ["PACKED", "BufferLayer", "packing"]

PACKED = "prefenv_packed"
"""The attention implementation a packed step sets on the model's config for its forward."""

packing: contextvars.ContextVar[_Packing | None] = contextvars.ContextVar("packing", default=None)
"""The running packed step's layout, read by :func:`packed_attention`."""


def packed_attention(
    module: Any,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Attention of the packed queries ``[1, heads, T, d]`` against each row's keys and values
    ``[N, kv_heads, C, d]`` (what :meth:`BufferLayer.update` returned); ``[1, T, heads, d]``.

    Two calls: every row's newest token (one query per row, all live columns), then the grid of
    the new prompts' earlier tokens against the grid's own keys (:class:`~agents.text.kv_cache.
    _Packing`), causally.
    """
    plan = packing.get()
    if plan is None:
        raise RuntimeError(f"the {PACKED!r} attention runs only inside a packed cache step")
    for option in ("softcap", "s_aux"):  # logit soft-capping (Gemma 2), attention sinks
        if kwargs.get(option) is not None:
            raise NotImplementedError(
                f"{type(module).__name__} passes {option!r} to its attention, which packed "
                "rollout steps do not implement: build the policy with "
                "CausalLMPolicy(model, prefill='separate')"
            )
    rows, heads, dim = plan.visible.shape[0], query.shape[1], query.shape[-1]
    gqa = key.shape[1] != heads
    newest = F.scaled_dot_product_attention(
        query[0, :, :rows].transpose(0, 1).unsqueeze(2), key, value, attn_mask=plan.visible,
        scale=scaling, enable_gqa=gqa,
    ).squeeze(2)  # fmt: skip
    if not plan.prompts:
        return newest.unsqueeze(0), None
    k = plan.prompts

    def grid(states: Tensor) -> Tensor:  # [1, h, T, d] -> the prompt grid [k, h, q - 1, d]
        return states[0, :, rows:].unflatten(1, (k, -1)).transpose(0, 1)

    earlier = F.scaled_dot_product_attention(
        grid(query), grid(plan.new_keys), grid(plan.new_values), attn_mask=plan.prompt_visible,
        scale=scaling, enable_gqa=gqa,
    )  # fmt: skip
    earlier = earlier.transpose(1, 2).reshape(-1, heads, dim)
    return torch.cat([newest, earlier]).unsqueeze(0), None


AttentionInterface.register(PACKED, packed_attention)


class BufferLayer(DynamicLayer):
    """One attention layer's keys and values in buffers ``[N, heads, capacity, head_dim]``.

    The model calls ``update`` inside its forward: it writes the new tokens' keys/values in place
    (see :class:`_Span`) and returns the live columns up to ``span.end`` included; the owner
    advances ``span.end`` after the forward. The buffers are allocated on the first write.
    """

    def __init__(self, span: _Span, rows: int, capacity: int) -> None:
        super().__init__()
        self.span, self.rows, self.capacity = span, rows, capacity
        self.buffers: tuple[Tensor, Tensor] | None = None

    def _allocated(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """The buffers, first allocated (zeros) like ``keys``/``values`` ``[*, heads, *, dim]``."""
        if self.buffers is None:
            n, capacity = self.rows, self.capacity
            self.buffers = (
                keys.new_zeros(n, keys.shape[1], capacity, keys.shape[3]),
                values.new_zeros(n, values.shape[1], capacity, values.shape[3]),
            )
            self.device, self.is_initialized = keys.device, True
        return self.buffers

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> Any:
        """Store the new tokens ``[N, heads, q, head_dim]``; return the live keys and values."""
        span = self.span
        buffers = self._allocated(key_states, value_states)
        plan = packing.get()
        if plan is not None:  # a packed step: token t goes to (rows[t], columns[t])
            plan.new_keys, plan.new_values = key_states, value_states
        for buf, new in zip(buffers, (key_states, value_states), strict=True):
            if plan is not None:
                buf[plan.rows, :, plan.columns] = new[0].transpose(0, 1)
                continue
            buf[:, :, span.end] = new[:, :, -1]
            if span.restarted is not None and span.queries > 1:
                rows, first = span.restarted, span.end - span.queries + 1
                buf[rows, :, first : span.end] = new[rows, :, :-1]
        self.keys, self.values = (buf[:, :, span.start : span.end + 1] for buf in buffers)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        """The live columns before the running forward's queries (a merged forward rewrites
        ``q - 1`` columns before ``end``)."""
        return self.span.end - self.span.start - (self.span.queries - 1)

    def write_rows(self, rows: Tensor, column: int, keys: Tensor, values: Tensor) -> None:
        """Put ``keys``/``values`` ``[k, heads, p, head_dim]`` at ``rows``, columns ``column:+p``."""
        for buf, new in zip(self._allocated(keys, values), (keys, values), strict=True):
            buf[rows, :, column : column + new.shape[-2]] = new

    def move(self, start: int, end: int, to: int) -> None:
        """Copy the columns ``[start, end)`` to ``[to, to + end - start)`` (no-op if unallocated)."""
        for buf in self.buffers or ():
            buf[:, :, to : to + end - start] = buf[:, :, start:end].clone()
