"""Numpy inference for MLP reward models on the per-env-step path.

An env step scores a handful of transitions (one per sub-env). At that size torch's per-op
dispatch dominates (about 0.5 ms for B-Pref's 3 x (3 x 256) ensemble on 8 rows), while the
arithmetic is microseconds. :class:`StackedMLP` snapshots the members' weights into stacked numpy
arrays (``[K, in, out]``) and runs all members in one ``np.matmul`` per layer.

The snapshot is keyed on every weight tensor's storage pointer and in-place version counter, so
any optimiser step, ``load_state_dict`` or ``fit_normalizer`` (all in-place) invalidates it
automatically; no caller has to remember to refresh it. Replacing a parameter *object* (rather
than writing into it) is not tracked: reward models here are only ever updated in place.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["StackedMLP", "stacked_mlp_for", "single_threaded_blas"]

_BLAS: list | None = None


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run numpy's BLAS on one thread for the block, then restore its setting.

    Per-step matmuls are small ([K, 8, 256] x [K, 256, 256]); OpenBLAS still splits them across
    threads, and on a busy 2-core machine its spinning threads made them 4x slower than one
    thread (measured: 760 us vs 180 us). The switch is a direct ctypes call (about 1 us), cheaper
    than ``threadpoolctl.threadpool_limits`` (about 55 us per use).
    """
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS = list(ThreadpoolController().select(user_api="blas").lib_controllers)
        except Exception:  # threadpoolctl missing or unable to inspect: leave BLAS as it is
            _BLAS = []
    previous = [c.num_threads for c in _BLAS]
    for controller in _BLAS:
        controller.set_num_threads(1)
    try:
        yield
    finally:
        for controller, n in zip(_BLAS, previous, strict=True):
            controller.set_num_threads(n)


_HIDDEN = {
    "leaky_relu": lambda x: np.maximum(x, 0.01 * x, out=x),
    "relu": lambda x: np.maximum(x, 0.0, out=x),
    "tanh": lambda x: np.tanh(x, out=x),
}
_OUTPUT = {
    None: lambda x: x,
    "tanh": np.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
}


def _state_key(tensors: Sequence[torch.Tensor]) -> tuple:
    return tuple((t.data_ptr(), t._version) for t in tensors)


class StackedMLP:
    """K same-shaped MLP reward models as stacked float32 numpy arrays.

    Args:
        members: :class:`prefenv.reward_models.MLPRewardModel` s with identical hyperparameters.
    """

    def __init__(self, members: Sequence[nn.Module]):
        first = members[0]
        self.use_next_obs = bool(first.use_next_obs)
        self._hidden = _HIDDEN[first.activation]
        self._output = _OUTPUT[first.output_activation]
        with torch.no_grad():
            self.mean = np.stack([m.input_mean.cpu().numpy() for m in members])[:, None, :]
            self.inv_std = 1.0 / np.stack([m.input_std.cpu().numpy() for m in members])[:, None, :]
            self.weights = [
                np.ascontiguousarray(
                    np.stack([m.layers[i].weight.cpu().numpy().T for m in members])
                )
                for i in range(len(first.layers))
            ]
            self.biases = [
                np.stack([m.layers[i].bias.cpu().numpy() for m in members])[:, None, :]
                for i in range(len(first.layers))
            ]
        self.mean = self.mean.astype(np.float32)
        self.inv_std = self.inv_std.astype(np.float32)

    def member_rewards(self, obs: np.ndarray, acts: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
        """``[K, N]`` rewards of ``[N, D]`` float32 inputs (already validated)."""
        parts = (obs, acts, next_obs) if self.use_next_obs else (obs, acts)
        h = (np.concatenate(parts, axis=1)[None] - self.mean) * self.inv_std  # [K, N, in]
        last = len(self.weights) - 1
        with single_threaded_blas():
            for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
                h = np.matmul(h, w)
                h += b
                if i < last:
                    h = self._hidden(h)
        return self._output(h[..., 0])


class _Cache:
    """Snapshot plus the state key it was taken at."""

    __slots__ = ("key", "stack", "tensors")

    def __init__(self, members: Sequence[nn.Module]) -> None:
        self.key: tuple | None = None
        self.stack: StackedMLP | None = None
        self.tensors = [t for m in members for t in (*m.parameters(), *m.buffers())]


def stacked_mlp_for(owner: Any, members: Sequence[nn.Module]) -> StackedMLP | None:
    """The numpy snapshot of ``members`` (rebuilt when weights changed), or ``None`` if the
    members are not plain CPU MLP reward models with a supported activation."""
    cache: _Cache | None = owner.__dict__.get("_numpy_cache")
    if cache is None:
        from prefenv.reward_models import MLPRewardModel

        eligible = (
            all(type(m) is MLPRewardModel for m in members)
            and len(
                {
                    (m.hidden_sizes, m.activation, m.output_activation, m.use_next_obs)
                    for m in members
                }
            )
            == 1
            and members[0].activation in _HIDDEN
            and members[0].output_activation in _OUTPUT
            and members[0].input_mean.device.type == "cpu"
        )
        if not eligible:
            owner.__dict__["_numpy_cache"] = False
            return None
        cache = owner.__dict__["_numpy_cache"] = _Cache(members)
    elif cache is False:
        return None
    key = _state_key(cache.tensors)
    if key != cache.key:
        cache.stack = StackedMLP(members)
        cache.key = key
    return cache.stack
