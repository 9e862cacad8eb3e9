"""Per-step scalars across ranks: the loss, and the input batches."""
from __future__ import annotations

from typing import Optional

import numpy as np

from distcheck.analysis.run import Run
from distcheck.findings import Finding, Severity
from distcheck.store import schema


def _first_bad(run: Run, bad_rows) -> tuple[Optional[int], list[int], dict[int, float]]:
    """The first step at which ``bad_rows(reader)`` (a boolean row mask and a value per
    row) marks a row of any rank, the ranks it marks there, and each marked rank's value
    at its own first marked row."""
    first_step, origin, values = None, [], {}
    for rank, reader in sorted(run.readers.items()):
        mask, value = bad_rows(reader)
        bad = np.flatnonzero(mask)
        if not len(bad):
            continue
        step = int(reader.steps[bad[0]])
        values[rank] = float(value[bad[0]])
        if first_step is None or step < first_step:
            first_step, origin = step, [rank]
        elif step == first_step:
            origin.append(rank)
    return first_step, origin, values


def loss_nonfinite(run: Run) -> list[Finding]:
    """The first step at which any rank's loss is NaN or Inf, and the ranks it was born on."""
    first_step, origin, values = _first_bad(
        run, lambda r: (((r.has() & schema.HAS_LOSS) != 0) & ~np.isfinite(r.loss()), r.loss()))
    if first_step is None:
        return []
    spread = sorted(r for r in values if r not in origin)
    kinds = sorted({"NaN" if np.isnan(values[r]) else "Inf" for r in origin})
    message = (f"The loss is {'/'.join(kinds)} at step {first_step} on rank(s) {', '.join(map(str, origin))}, "
               "the first non-finite loss of the run.")
    if spread:
        message += (f" It later became non-finite on rank(s) {', '.join(map(str, spread))} too, which is "
                    "how a NaN spreads through the gradient all-reduce: look at the first rank(s) only.")
    message += (" Causes: a bad input sample on that rank (Inf, NaN, extreme values), a learning rate or "
                "loss scale too large, or a division or log of zero in the loss.")
    return [Finding("loss_nonfinite", Severity.ERROR, "loss", first_step, tuple(origin), (), message)]


def input_nonfinite(run: Run) -> list[Finding]:
    """The first step at which any rank's input batch held NaN or Inf, and those ranks."""
    def bad_inputs(reader):
        counts = reader.input_counts()[:, :2].sum(axis=1)
        return ((reader.has() & schema.HAS_BATCH) != 0) & (counts > 0), counts

    first_step, origin, counts = _first_bad(run, bad_inputs)
    if first_step is None:
        return []
    held = ", ".join(f"rank {r}: {int(counts[r])}" for r in origin)
    message = (f"The input batch held NaN or Inf values at step {first_step} on rank(s) "
               f"{', '.join(map(str, origin))} ({held} value(s)), the first non-finite input of the run. "
               "Non-finite losses, gradients and weights that follow on every rank come from it: find that "
               "sample in that rank's data and clean or filter it.")
    return [Finding("input_nonfinite", Severity.ERROR, "data", first_step, tuple(origin), (), message)]


def data_not_sharded(run: Run, members: list[int]) -> list[Finding]:
    """Replicas that received identical batches at the same step."""
    batches = {}
    for rank in members:
        reader = run.readers[rank]
        ok = (reader.has() & schema.HAS_BATCH) != 0
        digests = reader.batch_digests()
        batches[rank] = {int(s): (int(d[0]), int(d[1])) for s, d, k in zip(reader.steps, digests, ok) if k}
    common = sorted(set.intersection(*(set(b) for b in batches.values()))) if batches else []
    common = [s for s in common if s > 0]  # step 0 is before training: no batch
    first, ranks, same_steps = None, set(), 0
    for step in common:
        seen: dict = {}
        for rank in members:
            seen.setdefault(batches[rank][step], []).append(rank)
        dup = [rs for rs in seen.values() if len(rs) > 1]
        if dup:
            same_steps += 1
            if first is None:
                first = step
                ranks = {r for rs in dup for r in rs}
    if first is None:
        return []
    message = (f"Rank(s) {', '.join(map(str, sorted(ranks)))} received identical input batches at step "
               f"{first} ({same_steps} of {len(common)} compared steps had duplicates). Data-parallel "
               "replicas should each read their own shard: pass num_shards=get_group_size() and "
               "shard_id=get_rank() to the dataset, or use a DistributedSampler.")
    return [Finding("data_not_sharded", Severity.WARNING, "data", first, tuple(sorted(ranks)), (), message)]
