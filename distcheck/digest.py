"""Bit-exact digests and summary statistics of tensors, on the host.

The digest is ``xxh3_128`` of a tensor's raw bytes, computed zero-copy over the
array's buffer (about memory bandwidth; ``tobytes()`` would be ~20x slower). Two
tensors have the same digest exactly when their bytes are equal (up to the hash's
collision odds), so ``-0.0`` and ``0.0``, or two NaN payloads, are told apart: that is
what "bit-exact" means here.

bfloat16 has no numpy dtype: callers pass its raw bits as ``uint16`` and say
``dtype="bfloat16"``; the statistics widen those bits to float32.
"""
from __future__ import annotations

import numpy as np
import xxhash

#: Columns of the statistics vector, in storage order.
STAT_NAMES = ("min", "max", "mean", "l2", "nan", "inf")

_EMPTY_STATS = np.array([np.nan, np.nan, np.nan, 0.0, 0, 0], dtype=np.float64)


def digest(array: np.ndarray) -> tuple[int, int]:
    """128-bit digest of the array's bytes as two uint64 words (low, high)."""
    value = xxhash.xxh3_128_intdigest(np.ascontiguousarray(array))
    return value & 0xFFFFFFFFFFFFFFFF, value >> 64


def digest_rows(rows: np.ndarray) -> tuple[int, int]:
    """Digest of a block of digests, e.g. one step's (P, 2) parameter digests."""
    return digest(np.ascontiguousarray(rows))


def as_float(array: np.ndarray, dtype: str | None = None) -> np.ndarray:
    """A float view of ``array`` fit for statistics (widening bfloat16 bits)."""
    if dtype == "bfloat16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    if array.dtype.kind == "f":
        return array
    if array.dtype.kind in "iub":
        return array.astype(np.float64)
    raise TypeError(f"unsupported dtype {array.dtype}")


def stats(array: np.ndarray, dtype: str | None = None) -> np.ndarray:
    """min, max, mean, L2 norm, NaN count and Inf count, as float64.

    Min, max and mean are taken over the finite values. The common case (all
    finite) costs one sum, one dot product and a min and a max pass; NaN and Inf are
    counted only when the sum says they exist.
    """
    values = as_float(array, dtype).ravel()
    if values.size == 0:
        return _EMPTY_STATS.copy()
    if values.dtype == np.float16:
        values = values.astype(np.float32)
    # Pairwise float32 sums are accurate enough for statistics (the digest is what is
    # exact) and 3x faster than widening; an overflow falls through to the float64 path.
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(np.sum(values))
        square = float(np.dot(values, values)) if np.isfinite(total) else np.inf
    if np.isfinite(total):
        if np.isfinite(square):
            return np.array([values.min(), values.max(), total / values.size,
                             np.sqrt(square), 0, 0], dtype=np.float64)
    return _stats_nonfinite(values)


def _stats_nonfinite(values: np.ndarray) -> np.ndarray:
    nan = int(np.count_nonzero(np.isnan(values)))
    inf = int(np.count_nonzero(np.isinf(values)))
    finite = values[np.isfinite(values)].astype(np.float64)
    if finite.size == 0:
        lo = hi = mean = np.nan
        l2 = np.nan if nan else np.inf
    else:
        lo, hi, mean = finite.min(), finite.max(), finite.mean()
        l2 = np.nan if nan else (np.inf if inf else float(np.sqrt(np.dot(finite, finite))))
    return np.array([lo, hi, mean, l2, nan, inf], dtype=np.float64)
