"""Whole-tensor statistics rebuilt from the statistics of its shards, and a global batch's
from its ranks' batches.

A sharded parameter is recorded shard by shard (each rank summarises the piece it holds);
to compare it with a run that holds it whole, its statistics are combined: the L2 norm
from the shards' L2 norms (squares add), the mean weighted by each shard's size, the
minimum and maximum over the shards, NaN and Inf counts summed, and the update norm like
the L2 norm. A batch split over data-parallel ranks is combined the same way.
"""
from __future__ import annotations

import numpy as np

from distcheck.store import schema

_MIN, _MAX, _MEAN, _L2, _NAN, _INF, _DELTA = (schema.STAT_COLUMNS.index(c) for c in (
    "min", "max", "mean", "l2", "nan", "inf", "delta_l2"))


def combine_shards(stats: np.ndarray, sizes) -> np.ndarray:
    """Statistics of the whole tensor from its shards'.

    ``stats``: (..., K, 7), the K shards' rows (columns :data:`schema.STAT_COLUMNS`);
    ``sizes``: the K shards' element counts. Returns (..., 7) in float64. A statistic
    missing (NaN) in any shard is missing in the whole, except min and max, which skip
    NaN shards only when all are NaN.
    """
    stats = np.asarray(stats, np.float64)
    sizes = np.asarray(sizes, np.float64)
    out = np.empty(stats.shape[:-2] + (stats.shape[-1],), np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        out[..., _MIN] = np.min(stats[..., _MIN], axis=-1)
        out[..., _MAX] = np.max(stats[..., _MAX], axis=-1)
        out[..., _MEAN] = (stats[..., _MEAN] * sizes).sum(axis=-1) / sizes.sum()
        out[..., _L2] = np.sqrt((stats[..., _L2] ** 2).sum(axis=-1))
        out[..., _NAN] = stats[..., _NAN].sum(axis=-1)
        out[..., _INF] = stats[..., _INF].sum(axis=-1)
        out[..., _DELTA] = np.sqrt((stats[..., _DELTA] ** 2).sum(axis=-1))
    return out


_IN = {c: i for i, c in enumerate(schema.INPUT_COLUMNS)}


def combine_inputs(rows: np.ndarray) -> np.ndarray:
    """The statistics of the union of several batches' inputs (:data:`schema.INPUT_COLUMNS`),
    from each batch's row: (..., K, 7) -> (..., 7). The standard deviations are the
    population's, as recorded."""
    rows = np.asarray(rows, np.float64)
    size = rows[..., _IN["size"]]
    mean, std = rows[..., _IN["mean"]], rows[..., _IN["std"]]
    out = np.empty(rows.shape[:-2] + (rows.shape[-1],), np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        n = size.sum(axis=-1)
        total_mean = (mean * size).sum(axis=-1) / n
        second = ((std ** 2 + mean ** 2) * size).sum(axis=-1) / n
        out[..., _IN["min"]] = rows[..., _IN["min"]].min(axis=-1)
        out[..., _IN["max"]] = rows[..., _IN["max"]].max(axis=-1)
        out[..., _IN["mean"]] = total_mean
        out[..., _IN["std"]] = np.sqrt(np.maximum(second - total_mean ** 2, 0.0))
        out[..., _IN["nan"]] = rows[..., _IN["nan"]].sum(axis=-1)
        out[..., _IN["inf"]] = rows[..., _IN["inf"]].sum(axis=-1)
        out[..., _IN["size"]] = n
    return out
