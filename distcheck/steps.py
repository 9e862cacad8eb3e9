"""Aligning one rank's recorded steps with a list of steps.

Ranks record different steps (a rank that crashed early, a probe that failed at set-up
and recorded none, runs recorded with different ``--every``), so every view across
ranks or runs first finds, for each step it shows, the row that holds it in each rank's
series, or learns that there is none.
"""
from __future__ import annotations

import numpy as np


def rows_for(rank_steps: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """For each of ``steps``, the index of its row in ``rank_steps`` (sorted), -1 where
    that rank did not record it. An empty ``rank_steps`` gives -1 everywhere."""
    steps = np.asarray(steps)
    if len(rank_steps) == 0:
        return np.full(len(steps), -1, np.int64)
    idx = np.minimum(np.searchsorted(rank_steps, steps), len(rank_steps) - 1)
    return np.where(rank_steps[idx] == steps, idx, -1)


def take(series: np.ndarray, rows: np.ndarray, fill) -> np.ndarray:
    """``series``' rows at ``rows`` (from :func:`rows_for`), ``fill`` where a row is -1."""
    out = np.full((len(rows), *series.shape[1:]), fill, dtype=series.dtype)
    found = rows >= 0
    out[found] = series[rows[found]]
    return out
