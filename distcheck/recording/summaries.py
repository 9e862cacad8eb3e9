"""One recorded step as a dump row: digests and statistics of every tensor, of the
batch and of the activations. The tensors are summarised on a few threads
(:mod:`distcheck.recording.summary_threads`); each update's norm is measured against
the copies :mod:`distcheck.recording.update_norms` keeps."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from distcheck.digest import digest, digest_rows, stats
from distcheck.recording import fused
from distcheck.recording.summary_threads import for_each_tensor
from distcheck.recording.update_norms import Previous
from distcheck.store import schema
from distcheck.store.schema import ParamInfo

#: Writes one whole tensor: (kind, parameter index, array).
FullWriter = Callable[[str, int, np.ndarray], None]


def step_row(params: Sequence[ParamInfo], values: Sequence[np.ndarray],
             previous: Optional[Previous], grads: Optional[Sequence[Optional[np.ndarray]]],
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
    row[schema.counts_path("param")] = _counts(stat_rows)
    rollups = [digest_rows(digests), (0, 0)]
    if grads is not None:
        grad_digests, row[schema.stats_path("grad")] = summarise(params, grads, "grad", write_full)
        row[schema.counts_path("grad")] = _counts(row[schema.stats_path("grad")])
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
        counted = [schema.INPUT_COLUMNS.index(c) for c in schema.INPUT_COUNT_COLUMNS]
        row[schema.INPUT_COUNTS] = np.nan_to_num(row[schema.INPUT_STATS][counted]).astype(np.int64)
        has |= schema.HAS_BATCH
    if activations is not None and len(activations) == n_activations:
        row[schema.ACT_STATS] = np.stack([np.asarray(a, np.float32).reshape(-1)[:4] for a in activations]) \
            if len(activations) else np.zeros((0, 4), np.float32)
        has |= schema.HAS_ACTS
    row[schema.HAS] = has
    return row


def _counts(stat_rows: np.ndarray) -> np.ndarray:
    """The NaN and Inf columns as integers: exact, since ``stat_rows`` is float64 until written."""
    counted = [schema.STAT_COLUMNS.index(c) for c in schema.COUNT_COLUMNS]
    return np.nan_to_num(stat_rows[:, counted]).astype(np.int64)


def summarise(params: Sequence[ParamInfo], arrays: Sequence[Optional[np.ndarray]], kind: str,
              write_full: Optional[FullWriter] = None,
              previous: Optional[Previous] = None) -> tuple[np.ndarray, np.ndarray]:
    """(P, 2) digests and (P, 7) float64 statistics (float32 once written); zeros and NaN
    where an array is None. With ``previous``, the last column is each update's norm, and
    the arrays are kept."""
    p = len(params)
    if len(arrays) != p:
        raise ValueError(f"got {len(arrays)} {kind} arrays for {p} parameters")
    rows = np.zeros((p, 2), np.uint64)
    stat_rows = np.full((p, len(schema.STAT_COLUMNS)), np.nan, np.float64)
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

    for_each_tensor(one, [0 if a is None else a.nbytes for a in arrays])
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
    input_row = np.full(len(schema.INPUT_COLUMNS), np.nan, np.float64)
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
