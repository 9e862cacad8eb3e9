"""Majority vote among replicas: who holds the odd value out.

Replicas that should be identical are grouped by their digest. The largest group
wins only with a strict majority; otherwise (two ranks that disagree, or a tie) no
rank can be trusted over another and every rank is a suspect.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np


@dataclass(frozen=True)
class Vote:
    agree: bool
    outliers: tuple[int, ...]  # positions that differ from the majority (all, with no majority)
    has_majority: bool


def majority(values: Sequence[Hashable]) -> Vote:
    counts = Counter(values)
    if len(counts) <= 1:
        return Vote(True, (), True)
    value, count = counts.most_common(1)[0]
    if count * 2 > len(values):
        return Vote(False, tuple(i for i, v in enumerate(values) if v != value), True)
    return Vote(False, tuple(range(len(values))), False)


def outlier_mask(digests: np.ndarray, present: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised vote over many columns at once, in O(R log R) per column.

    ``digests`` has shape (R, ..., 2): R replicas, any number of columns, a 128-bit
    digest as two words. ``present`` (R, ...) marks which replicas have a value in a
    column (all, by default); absent ones neither vote nor count as outliers.

    Returns ``(outliers, has_majority)``: ``outliers`` (R, ...) is True where a
    present replica differs from a strict majority of the present replicas, or where
    the column disagrees with no strict majority (then every present replica is
    marked); ``has_majority`` (...) says which columns had one.

    Columns where every present replica holds the first one's digest agree at once; in
    the others the replicas are sorted by digest, so equal digests form runs, and a
    replica's support is the length of its run. Nothing is R x R.
    """
    n = digests.shape[0]
    shape = digests.shape[1:-1]
    if present is None:
        present = np.ones((n, *shape), bool)
    lo_all = digests[..., 0].reshape(n, -1)  # (R, C)
    hi_all = digests[..., 1].reshape(n, -1)
    here_all = present.reshape(n, -1)
    # Fast path: columns where every present replica equals the first present one agree.
    first = np.argmax(here_all, axis=0)
    cols = np.arange(lo_all.shape[1])
    same = ((lo_all == lo_all[first, cols]) & (hi_all == hi_all[first, cols])) | ~here_all
    split = np.flatnonzero(~same.all(axis=0))
    outliers_all = np.zeros(lo_all.shape, bool)
    majority_all = np.ones(lo_all.shape[1], bool)
    if not len(split):
        return outliers_all.reshape(n, *shape), majority_all.reshape(shape)
    lo, hi, here = lo_all[:, split].T, hi_all[:, split].T, here_all[:, split].T  # (C', R)
    order = np.lexsort((hi, lo, ~here), axis=-1)  # present first, then by digest
    lo_s, hi_s, here_s = (np.take_along_axis(a, order, axis=-1) for a in (lo, hi, here))
    starts = np.ones(lo_s.shape, bool)
    starts[:, 1:] = (lo_s[:, 1:] != lo_s[:, :-1]) | (hi_s[:, 1:] != hi_s[:, :-1]) | (here_s[:, 1:] != here_s[:, :-1])
    run = np.cumsum(starts, axis=-1) - 1  # run index within its column
    offset = (np.arange(lo_s.shape[0]) * n)[:, None]
    sizes = np.bincount((run + offset).ravel(), minlength=lo_s.size).reshape(lo_s.shape)
    support_sorted = np.take_along_axis(sizes, run, axis=-1)
    support = np.empty_like(support_sorted)
    np.put_along_axis(support, order, support_sorted, axis=-1)
    support = np.where(here, support, 0)
    voters = here.sum(axis=-1, keepdims=True)
    in_majority = (support * 2 > voters) & here
    has_majority = in_majority.any(axis=-1)
    disagrees = np.any(here & (support < voters), axis=-1)
    outliers = np.where(has_majority[:, None], here & ~in_majority, here & disagrees[:, None])
    outliers_all[:, split] = outliers.T
    majority_all[split] = has_majority | ~disagrees
    return outliers_all.reshape(n, *shape), majority_all.reshape(shape)
