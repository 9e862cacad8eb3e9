"""Per-step scalars across ranks: the loss, and the input batches."""
from __future__ import annotations

from typing import Optional

import numpy as np

from distcheck.analysis.facts import Facts
from distcheck.analysis.run import Run
from distcheck.findings import Finding, Severity, rank_list
from distcheck.steps import rows_for
from distcheck.store import schema


def _first_bad(firsts: dict[int, tuple[int, float]]) -> tuple[Optional[int], list[int], dict[int, float]]:
    """Of each rank's first bad row (its step, its value), the first step any rank had
    one at, the ranks that had one there, and each bad rank's value."""
    if not firsts:
        return None, [], {}
    first_step = min(step for step, _ in firsts.values())
    origin = sorted(r for r, (step, _) in firsts.items() if step == first_step)
    return first_step, origin, {r: value for r, (_, value) in sorted(firsts.items())}


def loss_nonfinite(facts: Facts) -> list[Finding]:
    """The first step at which any rank's loss is NaN or Inf, and the ranks it was born on."""
    first_step, origin, values = _first_bad(facts.first_bad["loss"])
    if first_step is None:
        return []
    born = set(origin)
    spread = sorted(r for r in values if r not in born)
    kinds = sorted({"NaN" if np.isnan(values[r]) else "Inf" for r in origin})
    message = (f"The loss is {'/'.join(kinds)} at step {first_step} on rank(s) {rank_list(origin)}, "
               "the first non-finite loss of the run.")
    if spread:
        message += (f" It later became non-finite on rank(s) {rank_list(spread)} too, which is "
                    "how a NaN spreads through the gradient all-reduce: look at the first rank(s) only.")
    message += (" Causes: a bad input sample on that rank (Inf, NaN, extreme values), a learning rate or "
                "loss scale too large, or a division or log of zero in the loss.")
    return [Finding("loss_nonfinite", Severity.ERROR, "loss", first_step, tuple(origin), (), message)]


def input_nonfinite(facts: Facts) -> list[Finding]:
    """The first step at which any rank's input batch held NaN or Inf, and those ranks."""
    first_step, origin, counts = _first_bad(facts.first_bad["inputs"])
    if first_step is None:
        return []
    held = ", ".join(f"rank {r}: {int(counts[r])}" for r in origin)
    message = (f"The input batch held NaN or Inf values at step {first_step} on rank(s) "
               f"{rank_list(origin)} ({held} value(s)), the first non-finite input of the run. "
               "Non-finite losses, gradients and weights that follow on every rank come from it: find that "
               "sample in that rank's data and clean or filter it.")
    return [Finding("input_nonfinite", Severity.ERROR, "data", first_step, tuple(origin), (), message)]


#: Bytes of batch digests gathered from the shares at once (32 a rank a step).
BATCH_BUDGET = 32 << 20


def data_not_sharded(run: Run, groups: list[list[int]]) -> list[Finding]:
    """Replicas (each of ``groups`` is a set of ranks that replicate each other) that
    received identical batches at the same step, among the steps every replica of the
    group recorded a batch at. The shares send their ranks' batch digests a few steps at
    a time (``BATCH_BUDGET``); they are compared here."""
    recorded = run.on_shards(_batch_steps_in_share, groups)
    common = []
    for g, members in enumerate(groups):
        steps, where = np.unique(np.concatenate([part[g][0] for part in recorded]), return_inverse=True)
        times = np.bincount(where, weights=np.concatenate([part[g][1] for part in recorded]), minlength=len(steps))
        common.append(steps[(times == len(members)) & (steps > 0)])  # step 0 is before training: no batch
    del recorded
    per_round = max(1, BATCH_BUDGET // (32 * max(1, sum(len(m) for m in groups))))
    duplicated: list[list[tuple[int, list[int]]]] = [[] for _ in groups]  # per group: (step, its culprits)
    for lo in range(0, max((len(c) for c in common), default=0), per_round):
        wanted = [c[lo:lo + per_round] for c in common]
        parts = run.on_shards(_batches_in_share, list(zip(groups, wanted)))
        for g in range(len(groups)):
            duplicated[g].extend(_duplicates(*(np.concatenate([part[g][i] for part in parts]) for i in range(3))))
    findings = []
    for dups, compared in zip(duplicated, common):
        if not dups:
            continue
        first, culprits = dups[0]
        message = (f"Rank(s) {rank_list(culprits)} received identical input batches at step "
                   f"{first} ({len(dups)} of {len(compared)} compared steps had duplicates). Data-parallel "
                   "replicas should each read their own shard: pass num_shards=get_group_size() and "
                   "shard_id=get_rank() to the dataset, or use a DistributedSampler.")
        findings.append(Finding("data_not_sharded", Severity.WARNING, "data", first, tuple(culprits), (), message))
    return findings


def _duplicates(ranks: np.ndarray, steps: np.ndarray, digests: np.ndarray) -> list[tuple[int, list[int]]]:
    """(step, the ranks that share a batch with another) of each step with a duplicate, in order."""
    order = np.lexsort((digests[:, 1], digests[:, 0], steps))
    ranks, steps, digests = ranks[order], steps[order], digests[order]
    same = (steps[1:] == steps[:-1]) & np.all(digests[1:] == digests[:-1], axis=1)
    duplicate = np.zeros(len(steps), bool)
    duplicate[1:] |= same
    duplicate[:-1] |= same
    return [(int(step), sorted(int(r) for r in ranks[duplicate & (steps == step)]))
            for step in np.unique(steps[duplicate])]


def _batch_steps_in_share(share: Run, groups: list[list[int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each group, the steps at which its ranks in this share recorded a batch, and
    how many of them did at each."""
    out = []
    for members in groups:
        steps = [np.zeros(0, np.int64)]
        for rank in members:
            if rank in share.readers:
                reader = share.readers[rank]
                steps.append(reader.steps[(reader.has() & schema.HAS_BATCH) != 0].astype(np.int64))
        out.append(np.unique(np.concatenate(steps), return_counts=True))
    return out


def _batches_in_share(share: Run, wanted: list[tuple[list[int], np.ndarray]]
                      ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each (group, steps): (rank, step, batch digest) of its ranks in this share at those steps."""
    out = []
    for members, steps in wanted:
        ranks, at, digests = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros((0, 2), np.uint64)]
        for rank in members:
            if rank not in share.readers or not len(steps):
                continue
            reader = share.readers[rank]
            rows = rows_for(reader.steps, steps)
            ranks.append(np.full(len(rows), rank, np.int64))
            at.append(steps)
            digests.append(reader.batch_digests()[rows].astype(np.uint64))
        out.append((np.concatenate(ranks), np.concatenate(at), np.concatenate(digests)))
    return out
