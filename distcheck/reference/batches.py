"""Did the two runs see the same global batch? The union of the ranks' batches, compared.

Batch digests cannot be combined across ranks (a digest of the union is not a function
of the parts' digests), so the global batch is compared by its statistics: the union's
input minimum, maximum, mean, standard deviation, NaN and Inf counts and size, and its
mean label. Digests still tell one thing: ranks whose batches are identical read the
same data. Over the whole run, the label histograms (summed over ranks) tell data read
in another order from data that differ.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from distcheck.reference.sides import Side
from distcheck.store import schema

_COLUMNS = schema.INPUT_COLUMNS
#: Relative agreement of combined statistics (recorded in float32, combined in float64).
RTOL = 1e-5


@dataclass(frozen=True)
class BatchComparison:
    """``same``: the global batches agree by their statistics (None: not recorded in one
    of the runs). ``kind``: "same", "not_split" (every rank read the same batch),
    "size" (global batches of different sizes), "order" (the same data over the run, in
    another order or split), "other_data" (the data over the run differ). ``message``
    says it in words."""

    step: Optional[int]
    same: Optional[bool]
    kind: str
    message: str


def compare_batches(ref: Side, run: Side) -> BatchComparison:
    """The global batches of ``ref`` and ``run`` at the first step both recorded one."""
    common, i_ref, i_run = np.intersect1d(ref.steps, run.steps, return_indices=True)
    have = np.isfinite(ref.inputs[i_ref, _COLUMNS.index("size")]) & np.isfinite(run.inputs[i_run, _COLUMNS.index("size")])
    if not have.any():
        return BatchComparison(None, None, "unknown", "no step has a recorded batch in both runs, so the global "
                                                     "batches could not be compared")
    k = int(np.flatnonzero(have)[0])
    step, a, b = int(common[k]), ref.inputs[i_ref[k]], run.inputs[i_run[k]]
    differs = _differing(a, b)
    label_a, label_b = ref.label_mean[i_ref[k]], run.label_mean[i_run[k]]
    if np.isfinite(label_a) and np.isfinite(label_b) and abs(label_a - label_b) > RTOL * max(1.0, abs(label_a)):
        differs.append(f"mean label {label_b:.6g} against {label_a:.6g}")
    if not differs:
        return BatchComparison(step, True, "same", f"the same global batch at step {step} (by its statistics: "
                                                   f"{int(a[_COLUMNS.index('size')])} input values)")
    where = (f"at step {step} the global batch of {run.dir} (the union of ranks {_ranks(run.data_ranks)}) differs "
             f"from that of {ref.dir}: {'; '.join(differs)}.")
    twins = _identical_ranks(run, int(i_run[k]))
    if twins:
        return BatchComparison(step, False, "not_split", where + f" Ranks {_ranks(twins)} read identical batches: "
                               "the data are not split between the ranks. Give each rank its own shard "
                               "(num_shards=world size, shard_id=rank, or a DistributedSampler).")
    if a[_COLUMNS.index("size")] != b[_COLUMNS.index("size")]:
        return BatchComparison(step, False, "size", where + " The global batches hold different numbers of values: "
                               "the per-rank batch size is not the global batch size divided by the world size.")
    if _same_histogram(ref, run):
        return BatchComparison(step, False, "order", where + " Over the whole run the labels seen are the same, "
                               "class by class: the same data, read in another order or split otherwise.")
    return BatchComparison(step, False, "other_data", where + " Over the whole run the labels seen differ too: "
                           "the shards overlap (some rows read twice, some never), or the data differ.")


def _differing(a: np.ndarray, b: np.ndarray) -> list[str]:
    out = []
    scale = max(abs(a[_COLUMNS.index("std")]), abs(a[_COLUMNS.index("mean")]), 1e-30)
    for c, name in enumerate(_COLUMNS):
        x, y = a[c], b[c]
        if np.isnan(x) and np.isnan(y):
            continue
        tol = RTOL * (scale if name in ("mean", "std") else max(abs(x), 1e-30)) if name not in ("nan", "inf", "size") else 0
        if not abs(x - y) <= tol:
            out.append(f"input {name} {y:.6g} against {x:.6g}")
    return out


def _identical_ranks(side: Side, row: int) -> list[int]:
    digests = side.batch_digests[row]  # (R, 2)
    if len(side.data_ranks) < 2:
        return []
    recorded = [i for i in range(len(digests)) if digests[i].any()]
    groups: dict[tuple, list[int]] = {}
    for i in recorded:
        groups.setdefault(tuple(int(w) for w in digests[i]), []).append(side.data_ranks[i])
    return sorted(r for g in groups.values() if len(g) > 1 for r in g)


def _same_histogram(ref: Side, run: Side) -> bool:
    if ref.label_counts is None or run.label_counts is None or not np.array_equal(ref.steps, run.steps):
        return False
    return bool(np.array_equal(ref.label_counts, run.label_counts))


def _ranks(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks))
