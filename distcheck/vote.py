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
    """Vectorised vote over many columns at once.

    ``digests`` has shape (R, ..., 2): R replicas, any number of columns, a 128-bit
    digest as two words. ``present`` (R, ...) marks which replicas have a value in a
    column (all, by default); absent ones neither vote nor count as outliers.

    Returns ``(outliers, has_majority)``: ``outliers`` (R, ...) is True where a
    present replica differs from a strict majority of the present replicas, or where
    the column disagrees with no strict majority (then every present replica is
    marked); ``has_majority`` (...) says which columns had one.
    """
    if present is None:
        present = np.ones(digests.shape[:-1], bool)
    both = present[:, None] & present[None, :]
    lo, hi = digests[..., 0], digests[..., 1]
    same = (lo[:, None] == lo[None, :]) & (hi[:, None] == hi[None, :]) & both
    support = same.sum(axis=1)  # replicas sharing replica i's value, itself included
    voters = present.sum(axis=0)
    in_majority = (support * 2 > voters) & present
    has_majority = in_majority.any(axis=0)
    disagrees = np.any(present & (support < voters), axis=0)
    outliers = np.where(has_majority, present & ~in_majority, present & disagrees)
    return outliers, has_majority | ~disagrees
