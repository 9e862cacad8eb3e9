"""BatchNorm over the local batch: why a data-parallel run may differ from its reference.

Without synchronisation (``nn.SyncBatchNorm``) each rank's BatchNorm normalises over its
own local batch, and a run on N ranks normalises over 1/N of the rows a one-device run
normalises over. The forward pass then differs from the first step: the loss, every
gradient and the moving statistics, by more than rounding but by no common factor.
"""
from __future__ import annotations

from typing import Optional

from distcheck.reference.sides import Side


def unsynced_batchnorms(side: Side) -> list[str]:
    """The BatchNorm cells that normalise over the batch in training, not synchronised
    (as the probe described them in the metadata, ``meta["static"]["batchnorms"]``)."""
    static = side.meta.get("static") or {}
    cells = []
    for bn in static.get("batchnorms") or []:
        if bn.get("use_batch_statistics") is False or "sync" in str(bn.get("class", "")).lower():
            continue
        cells.append(str(bn.get("cell")))
    return cells


def local_rows(side: Side) -> Optional[float]:
    """Input values in one rank's batch at the first recorded batch (the global batch
    over the data ranks)."""
    import numpy as np

    size = side.inputs[:, -1]
    found = np.flatnonzero(np.isfinite(size))
    if not len(found):
        return None
    return float(size[found[0]]) / max(1, len(side.data_ranks))


def explains(ref: Side, run: Side) -> Optional[str]:
    """A message when unsynchronised BatchNorm over batches of different sizes explains
    a difference between ``ref`` and ``run``, else None."""
    cells = sorted(set(unsynced_batchnorms(ref)) | set(unsynced_batchnorms(run)))
    if not cells:
        return None
    a, b = local_rows(ref), local_rows(run)
    if a is None or b is None or a == b:
        return None
    return (f"The network has BatchNorm without synchronisation ({', '.join(cells)}), and each rank normalises "
            f"over its local batch: {b:g} input values per rank in {run.dir} ({len(run.data_ranks)} rank(s)) "
            f"against {a:g} in {ref.dir} ({len(ref.data_ranks)} rank(s)). The batch statistics differ, so the "
            "forward pass, the loss and every gradient differ from the first step, by no common factor. This "
            "explains the differences below. To confirm: use nn.SyncBatchNorm in the data-parallel run (its "
            "statistics then span the global batch), or compare the runs with the BatchNorm in eval mode "
            "(use_batch_statistics=False); either should make the runs agree within the envelope.")
