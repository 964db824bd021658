"""Arrays as ``.npy`` bytes, for the comparison store's and the query queue's blob columns.

:func:`array_from_bytes` reads what ``np.load`` reads, but parses each distinct header once:
``np.load`` runs ``ast.literal_eval`` on every array's header, which was 85% of a refit's full
read of the store (``benchmarks/bench_scale.py``).
"""

from __future__ import annotations

import functools
import io

import numpy as np

__all__ = ["array_from_bytes", "array_to_bytes"]


def array_to_bytes(array: np.ndarray) -> bytes:
    """``array`` as ``.npy`` bytes (``np.save``; no pickles)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


_NPY_MAGIC = b"\x93NUMPY"


@functools.lru_cache(maxsize=256)
def _npy_header(header: bytes) -> tuple[np.dtype, tuple[int, ...], bool]:
    """``(dtype, shape, fortran_order)`` of an ``.npy`` header: parsed once per distinct header
    (a store's arrays share a handful), where ``np.load`` parses every array's with
    ``ast.literal_eval``: 85% of a full store read."""
    buffer = io.BytesIO(header)
    major, _ = np.lib.format.read_magic(buffer)
    read = (
        np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    )
    shape, fortran_order, dtype = read(buffer)
    if dtype.hasobject:
        raise ValueError("an object array (stored arrays hold numbers only)")
    return dtype, tuple(shape), fortran_order


def array_from_bytes(data: bytes) -> np.ndarray:
    """The array :func:`array_to_bytes` wrote (as ``np.load`` reads it, header parsing cached).

    Raises:
        ValueError: ``data`` is not a whole ``.npy`` array.
    """
    if data[:6] != _NPY_MAGIC or len(data) < 10:
        raise ValueError("not an .npy array")
    if data[6] == 1:
        end = 10 + int.from_bytes(data[8:10], "little")
    else:
        end = 12 + int.from_bytes(data[8:12], "little")
    dtype, shape, fortran_order = _npy_header(bytes(data[:end]))
    count = int(np.prod(shape, dtype=np.int64))
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=end)
    if len(data) != end + count * dtype.itemsize:
        raise ValueError(f"{len(data) - end} data bytes for {count} x {dtype} values")
    return flat.reshape(shape, order="F" if fortran_order else "C").copy(order="K")
