"""Which piece of a sharded parameter differs from the reference, and by what factor.

A run that holds a parameter in shards (model or tensor parallel) is compared with a
reference that holds it whole: the reference knows only the whole tensor's statistics.
At the first step both recorded gradients the weights are still those of step 0, so the
run's shards should rebuild the reference's whole gradient up to rounding. When they do
not, two simple stories are tried, each checked against every statistic the dumps hold
(L2 norm, mean, minimum, maximum):

- **the whole parameter scaled**: every shard's gradient is the true one times one factor
  ``f``; the run's L2 norm, mean, minimum and maximum are all the reference's times ``f``
  (the minimum and maximum swap when ``f`` is negative, which is not looked for);
- **one shard scaled**: shard ``j`` is ``f`` times its true piece and the others are
  right. The reference's squared L2 norm minus the other shards' gives the true piece's,
  hence ``f``; the whole's mean, minimum and maximum rebuilt with shard ``j`` divided by
  ``f`` must then be the reference's. Only one shard can pass for a given set of
  statistics (for another shard the minimum, maximum and mean do not come back).

The factor is then compared with the sizes the layout gives: the shard's replica group
(summed over the group instead of averaged), the number of shards (the backward of a
model-parallel combine that sums the identical gradients of its ranks).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from distcheck.store import schema

_MIN, _MAX, _MEAN, _L2 = (schema.STAT_COLUMNS.index(c) for c in ("min", "max", "mean", "l2"))
#: The statistics a story must give back, relative to the whole tensor's scale.
AGREEMENT = 1e-3
#: A factor this close to 1 is no factor.
NEAR_ONE = 1e-2


@dataclass(frozen=True)
class Pieces:
    """How a run holds one parameter in shards: each shard's replica group, element
    count, and gradient statistics (S, K, 7), aligned on the side's steps."""

    groups: list[tuple[int, ...]]
    sizes: list[int]
    grads: np.ndarray


@dataclass(frozen=True)
class ScaledPiece:
    """``shard``: the index of the scaled shard, None when the whole parameter is scaled;
    ``factor``: run / reference for that piece."""

    shard: Optional[int]
    factor: float


def scaled_piece(whole: np.ndarray, shards: np.ndarray, sizes) -> Optional[ScaledPiece]:
    """The story that explains how the shards' gradient statistics ``shards`` (K, 7)
    differ from the reference's whole-tensor statistics ``whole`` (7,), or None (no
    difference, or no simple story)."""
    whole = np.asarray(whole, np.float64)
    shards = np.asarray(shards, np.float64)
    sizes = np.asarray(sizes, np.float64)
    cols = [_MIN, _MAX, _MEAN, _L2]
    if not (np.isfinite(whole[cols]).all() and np.isfinite(shards[:, cols]).all()):
        return None
    if whole[_L2] <= 0:
        return None
    scale = max(abs(whole[_MIN]), abs(whole[_MAX]), whole[_L2] / np.sqrt(sizes.sum()))
    if _agrees(whole, _rebuilt(shards, sizes, None, 1.0), scale):
        return None
    run_l2 = np.sqrt((shards[:, _L2] ** 2).sum())
    f = run_l2 / whole[_L2]
    if f > 0 and abs(f - 1) >= NEAR_ONE and _agrees(whole, _rebuilt(shards, sizes, None, f), scale):
        return ScaledPiece(None, float(f))
    found = []
    for j in range(len(shards)):
        rest = np.delete(shards[:, _L2], j)
        true_sq = whole[_L2] ** 2 - (rest ** 2).sum()
        if true_sq <= (AGREEMENT * whole[_L2]) ** 2 or shards[j, _L2] <= 0:
            continue
        f = shards[j, _L2] / np.sqrt(true_sq)
        if abs(f - 1) >= NEAR_ONE and _agrees(whole, _rebuilt(shards, sizes, j, f), scale):
            found.append(ScaledPiece(j, float(f)))
    return found[0] if len(found) == 1 else None


def _rebuilt(shards: np.ndarray, sizes: np.ndarray, j: Optional[int], f: float) -> np.ndarray:
    """Whole-tensor min, max, mean and L2 with shard ``j`` (every shard when None)
    divided by ``f``."""
    fixed = shards.copy()
    rows = slice(None) if j is None else slice(j, j + 1)
    fixed[rows, [_MIN, _MAX, _MEAN, _L2]] /= f
    out = np.full(shards.shape[1], np.nan)
    out[_MIN] = fixed[:, _MIN].min()
    out[_MAX] = fixed[:, _MAX].max()
    out[_MEAN] = (fixed[:, _MEAN] * sizes).sum() / sizes.sum()
    out[_L2] = np.sqrt((fixed[:, _L2] ** 2).sum())
    return out


def _agrees(whole: np.ndarray, rebuilt: np.ndarray, scale: float) -> bool:
    cols = [_MIN, _MAX, _MEAN, _L2]
    return bool(np.all(np.abs(rebuilt[cols] - whole[cols]) <= AGREEMENT * scale))


def name_factor(factor: float, group_size: int, n_shards: int) -> str:
    """What a piece's factor likely means, given its replica group's size and the number
    of shards."""
    def near(x: float) -> bool:
        return x > 1 and abs(factor / x - 1) < 0.01

    if near(group_size):
        return (f"That is the size of its replica group ({group_size} ranks): its gradients are summed over the "
                "group instead of averaged (an AllReduce without the division by the group size).")
    if group_size > 1 and abs(factor * group_size - 1) < 0.01:
        return (f"That is 1 / the size of its replica group ({group_size} ranks): its gradients are divided by the "
                "group size once too often.")
    if near(n_shards):
        return (f"That is the number of shards ({n_shards}): the ranks of a model-parallel set each hold the same "
                "output gradient, and a reduction sums them where it should not (the backward of the AllReduce "
                "that combines the shards' outputs is an AllReduce too; divide by the model-parallel size, or "
                "give that combine an identity backward).")
    return ("Likely causes: a reduction of this piece's gradients over the wrong group or with the wrong divisor, "
            "or a loss scale applied to this piece alone.")
