"""One recorded step as a dump row: digests and statistics of every tensor."""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Sequence

import numpy as np

from distcheck.digest import digest, digest_rows, stats
from distcheck.recording import fused
from distcheck.recording.options import log
from distcheck.store import schema
from distcheck.store.schema import ParamInfo

#: Writes one whole tensor: (kind, parameter index, array).
FullWriter = Callable[[str, int, np.ndarray], None]


def step_row(params: Sequence[ParamInfo], values: Sequence[np.ndarray],
             previous: Optional["Previous"], grads: Optional[Sequence[Optional[np.ndarray]]],
             loss: Optional[float], batch: Optional[Sequence[np.ndarray]],
             activations: Optional[Sequence[np.ndarray]], n_activations: int,
             label_counts: np.ndarray, write_full: Optional[FullWriter] = None,
             labels: str = "auto") -> dict[str, object]:
    """The row of one step, keyed by dataset path (see :func:`schema.step_layout`).

    ``values`` may be views of live memory: nothing is kept of them but what
    ``previous`` copies (the parameters, to measure the next recorded update)."""
    row: dict[str, object] = {}
    has = schema.HAS_PARAMS
    digests, stat_rows = summarise(params, values, "param", write_full, previous)
    row[schema.digests_path("param")], row[schema.stats_path("param")] = digests, stat_rows
    rollups = [digest_rows(digests), (0, 0)]
    if grads is not None:
        grad_digests, row[schema.stats_path("grad")] = summarise(params, grads, "grad", write_full)
        row[schema.digests_path("grad")] = grad_digests
        rollups[1] = digest_rows(grad_digests)
        has |= schema.HAS_GRADS
    row[schema.ROLLUP] = rollups
    if loss is not None:
        row[schema.LOSS] = float(loss)
        has |= schema.HAS_LOSS
    if batch is not None:
        row[schema.BATCH_DIGEST] = batch_digest(batch)
        row[schema.INPUT_STATS], row[schema.LABEL_STATS] = batch_stats(batch, label_counts, labels)
        has |= schema.HAS_BATCH
    if activations is not None and len(activations) == n_activations:
        row[schema.ACT_STATS] = np.stack([np.asarray(a, np.float32).reshape(-1)[:4] for a in activations]) \
            if len(activations) else np.zeros((0, 4), np.float32)
        has |= schema.HAS_ACTS
    row[schema.HAS] = has
    return row


#: Tensors are summarised in parallel batches of about this many bytes (numpy and
#: xxhash release the GIL); the training thread waits for them, so the cores are free.
BATCH_BYTES = 4 << 20
_POOL: Optional[ThreadPoolExecutor] = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)),
                                       thread_name_prefix="distcheck-summary")
        return _POOL


def warm_up() -> None:
    """Build or load the one-pass kernels in the background (about a second the first
    time on a machine), while the framework compiles its graph."""
    def build() -> None:
        if fused.library() is None:
            log(f"statistics computed with numpy, about 3x slower: {fused.why_not()}")

    _pool().submit(build)


def summarise(params: Sequence[ParamInfo], arrays: Sequence[Optional[np.ndarray]], kind: str,
              write_full: Optional[FullWriter] = None,
              previous: Optional["Previous"] = None) -> tuple[np.ndarray, np.ndarray]:
    """(P, 2) digests and (P, 7) statistics; zeros and NaN where an array is None. With
    ``previous``, the last column is each update's norm, and the arrays are kept."""
    p = len(params)
    if len(arrays) != p:
        raise ValueError(f"got {len(arrays)} {kind} arrays for {p} parameters")
    rows = np.zeros((p, 2), np.uint64)
    stat_rows = np.full((p, len(schema.STAT_COLUMNS)), np.nan, np.float32)
    if previous is not None:
        previous.begin(params, arrays)

    def one(i: int) -> None:
        array = arrays[i]
        if array is None:
            return
        kept = previous.kept(i) if previous is not None else None
        if _fused_row(i, array, params[i].dtype, rows, stat_rows, kept):
            return
        rows[i] = digest(array)
        stat_rows[i, :-1] = stats(array, params[i].dtype)
        if kept is not None:
            stat_rows[i, -1] = previous.change(kept, array, params[i].dtype)

    batches = _batches([0 if a is None else a.nbytes for a in arrays])
    if len(batches) > 1:
        for _ in _pool().map(lambda batch: [one(i) for i in batch], batches):
            pass
    else:
        for i in range(p):
            one(i)
    if previous is not None:
        previous.finish(arrays)
    if write_full is not None:  # h5py: from this thread only
        for i, array in enumerate(arrays):
            if array is not None:
                write_full(kind, i, array)
    return rows, stat_rows


def _fused_row(i: int, array: np.ndarray, dtype: str, rows: np.ndarray, stat_rows: np.ndarray,
               kept: Optional[np.ndarray]) -> bool:
    """Digest and statistics (and with ``kept`` the update, ``kept`` refreshed) in one
    pass, where the compiled kernels take this array; False, with nothing done, where
    they do not."""
    result = fused.digest_and_summary(array, kept, dtype)
    if result is None:
        return False
    rows[i], (lo, hi, total, square, change) = result
    if not (np.isfinite(total) and np.isfinite(square)):
        stat_rows[i, :-1] = stats(array, dtype)  # counts NaN and Inf
    else:
        stat_rows[i, :-1] = (lo, hi, total / array.size, np.sqrt(square), 0, 0)
    if kept is not None:
        stat_rows[i, -1] = np.sqrt(change)
    return True


def _batches(sizes: Sequence[int]) -> list[list[int]]:
    """Consecutive indices grouped into batches of about ``BATCH_BYTES``."""
    out: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i, size in enumerate(sizes):
        current.append(i)
        total += size
        if total >= BATCH_BYTES:
            out.append(current)
            current, total = [], 0
    if current:
        out.append(current)
    return out


#: Floating parameters of at least this many bytes take turns at having their update
#: measured (see :class:`Previous`); smaller ones are measured at every recorded step.
TURN_BYTES = 1 << 20


class Previous:
    """What the probe keeps of the parameters to measure each update: the L2 norm of a
    parameter's change since the last recorded step (the last column of a step's
    statistics), computed in float32 at least (float16 differences would round;
    bfloat16 arrives as bits).

    Floating parameters under :data:`TURN_BYTES` are kept whole and measured at every
    recorded step. Larger ones take turns: they are dealt into ``turns`` groups of about
    equal bytes, and recorded step r measures group r mod ``turns`` against the copy
    taken at step r - 1, after which group r + 1 is copied into the same buffer. So the
    host keeps about 1/``turns`` of the large parameters (at least the largest one) and
    moves 1/``turns`` of their bytes, rather than a copy of every parameter; a large
    parameter's update norm is NaN (unknown) at the steps that are not its turn. Each
    index is touched by one thread at a time.
    """

    def __init__(self, turns: int = 1) -> None:
        self.turns = max(1, int(turns))
        self.row = 0  # recorded steps seen
        self._plan: tuple = ()  # (shape, dtype) of each array the buffers were laid out for
        self._group: dict[int, int] = {}  # large parameter -> its turn; small ones are always measured
        self._buffer: dict[int, np.ndarray] = {}  # parameter -> where its copy is kept
        self._copied: dict[int, int] = {}  # parameter -> the row its copy was taken at
        self._measured: set[int] = set()  # parameters measured (and their copy refreshed) this row
        self._groups = 1
        self._local = threading.local()

    def begin(self, params: Sequence[ParamInfo], arrays: Sequence[Optional[np.ndarray]]) -> None:
        """Start a recorded step; lays the buffers out again if the parameters changed."""
        plan = tuple(None if a is None else (a.shape, a.dtype.str, p.dtype) for p, a in zip(params, arrays))
        if plan != self._plan:
            self._lay_out(params, arrays)
            self._plan = plan
        self._measured = set()

    def kept(self, i: int) -> Optional[np.ndarray]:
        """The copy of parameter ``i`` to measure this step's update against, then to
        refresh in place; None if its update is not measured at this step."""
        buffer = self._buffer.get(i)
        if buffer is None or not self._due(i, self.row) or self._copied.get(i) != self.row - 1:
            return None
        self._measured.add(i)
        return buffer

    def change(self, kept: np.ndarray, now: np.ndarray, dtype: str) -> float:
        """The norm of ``now - kept`` (the numpy path); then ``kept`` holds ``now``."""
        change = self._difference(now, kept, dtype == "bfloat16")
        np.copyto(kept, now)
        return float(np.sqrt(np.dot(change, change)))

    def finish(self, arrays: Sequence[Optional[np.ndarray]]) -> None:
        """End the step: copy what the next recorded step will measure."""
        for i, buffer in self._buffer.items():
            if not self._due(i, self.row + 1) or arrays[i] is None:
                continue
            if i not in self._measured:  # (a measured copy was refreshed in place)
                np.copyto(buffer, arrays[i])
            self._copied[i] = self.row
        self.row += 1

    def _due(self, i: int, row: int) -> bool:
        group = self._group.get(i)
        return group is None or group == row % self._groups

    def _lay_out(self, params: Sequence[ParamInfo], arrays: Sequence[Optional[np.ndarray]]) -> None:
        floating = [i for i, (p, a) in enumerate(zip(params, arrays))
                    if a is not None and (a.dtype.kind == "f" or p.dtype == "bfloat16")]
        large = sorted((i for i in floating if arrays[i].nbytes >= TURN_BYTES), key=lambda i: -arrays[i].nbytes)
        self._groups = max(1, min(self.turns, len(large)))
        loads = [0] * self._groups
        offsets: dict[int, int] = {}
        self._group = {}
        for i in large:  # the largest first, each to the lightest group
            g = loads.index(min(loads))
            self._group[i], offsets[i] = g, loads[g]
            loads[g] += -(-arrays[i].nbytes // 64) * 64
        arena = np.empty(max(loads, default=0), np.uint8)  # the groups share it, one turn at a time
        self._buffer = {i: np.empty_like(arrays[i], order="C") for i in floating if i not in self._group}
        for i in large:
            a = arrays[i]
            self._buffer[i] = arena[offsets[i]:offsets[i] + a.nbytes].view(a.dtype).reshape(a.shape)
        self._copied = {}

    def _difference(self, now: np.ndarray, before: np.ndarray, bf16: bool) -> np.ndarray:
        if bf16:  # rare: widen with temporaries
            return (_float(now, True) - _float(before, True)).ravel()
        dtype = np.dtype(np.float64) if now.dtype == np.float64 else np.dtype(np.float32)
        scratch = self._local.__dict__.setdefault("scratch", {})
        buffer = scratch.get(dtype)
        if buffer is None or buffer.size < now.size:
            buffer = scratch[dtype] = np.empty(now.size, dtype)
        out = buffer[:now.size]
        np.subtract(now.reshape(-1), before.reshape(-1), out=out, dtype=dtype)
        return out


def _float(array: np.ndarray, bf16: bool) -> np.ndarray:
    if bf16:  # the bits of bfloat16 are the high half of a float32's
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array if array.dtype.itemsize >= 4 else array.astype(np.float32)


def batch_digest(batch: Sequence[np.ndarray]) -> tuple[int, int]:
    return digest_rows(np.array([digest(np.asarray(x)) for x in batch], dtype=np.uint64))


def labels_of(arrays: Sequence[np.ndarray], choice: str = "auto") -> Optional[np.ndarray]:
    """The batch's class labels. "auto": the last integer tensor that is 1-D, or an (N, 1)
    column; token ids and attention masks, (N, L) integer tensors, are never taken for
    labels. "none": no labels. Else an index into the batch (an integer tensor only)."""
    if choice == "none":
        return None
    if choice != "auto":
        i = int(choice)
        if not -len(arrays) <= i < len(arrays):
            return None
        chosen = arrays[i]
        return chosen if chosen.dtype.kind in "iu" and chosen.size else None
    return next((a for a in reversed(arrays) if a.dtype.kind in "iu" and a.size
                 and (a.ndim == 1 or (a.ndim == 2 and a.shape[1] == 1))), None)


def batch_stats(batch: Sequence[np.ndarray], label_counts: np.ndarray,
                labels: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Statistics of the inputs (the first floating tensor) and the labels (see
    :func:`labels_of`); adds the labels to ``label_counts``."""
    arrays = [np.asarray(x) for x in batch]
    inputs = next((a for a in arrays if a.dtype.kind == "f" and a.size), None)
    labels = labels_of(arrays, labels)
    input_row = np.full(len(schema.INPUT_COLUMNS), np.nan, np.float32)
    if inputs is not None:
        lo, hi, mean, l2, nan, inf = stats(inputs)
        n = inputs.size
        std = np.sqrt(max(l2 * l2 / n - mean * mean, 0.0)) if np.isfinite(l2) else np.nan
        input_row[:] = (lo, hi, mean, std, nan, inf, n)
    label_row = np.full(len(schema.LABEL_COLUMNS), np.nan, np.float32)
    if labels is not None:
        flat = labels.ravel().astype(np.int64)
        buckets = np.where(flat < 0, schema.MAX_CLASSES, np.minimum(flat, schema.MAX_CLASSES))
        counts = np.bincount(buckets, minlength=schema.MAX_CLASSES + 1)
        label_counts += counts[: schema.MAX_CLASSES + 1]
        label_row[:] = (flat.min(), flat.max(), flat.mean(), counts.max() / flat.size)
    return input_row, label_row
