"""The key/value buffers of :mod:`agents.text.kv_cache`: a ``transformers`` cache layer that
the model writes in place.

A module of its own so that importing :mod:`agents.text.kv_cache` (and the policy and LoRA
modules above it, which the command line imports) needs no ``transformers``: the text extra is
imported only where a cache is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor
from transformers.cache_utils import DynamicLayer

if TYPE_CHECKING:
    from agents.text.kv_cache import _Span

__all__ = ["BufferLayer"]


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
        for buf, new in zip(buffers, (key_states, value_states), strict=True):
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
