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


def outlier_mask(digests: np.ndarray) -> np.ndarray:
    """Vectorised vote over many columns at once.

    ``digests`` has shape (R, ..., 2): R replicas, any number of columns, a 128-bit
    digest as two words. Returns a bool array of shape (R, ...) that is True where a
    replica is an outlier: it differs from a strict majority, or the column has
    disagreement with no strict majority (then every replica is marked).
    """
    r = digests.shape[0]
    # same[i, j, ...]: replica i equals replica j
    same = np.all(digests[:, None] == digests[None, :], axis=-1)
    support = same.sum(axis=1)  # how many replicas share replica i's value (itself included)
    in_majority = support * 2 > r
    column_has_majority = in_majority.any(axis=0)
    column_disagrees = ~np.all(support == r, axis=0)
    return np.where(column_has_majority, ~in_majority, column_disagrees)
