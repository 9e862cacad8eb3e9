"""Replica groups, and whether their members hold the same parameters at all."""
from __future__ import annotations

from collections import Counter
from typing import Optional

import numpy as np

from distcheck.analysis.run import Run
from distcheck.findings import Finding, Severity, name_list
from distcheck.store.schema import ParamInfo

#: Parallel modes in which every rank holds a full replica of every parameter.
REPLICATED_MODES = {"data_parallel", "stand_alone", None}


def replica_groups(run: Run, configured: Optional[list[list[int]]]) -> tuple[list[list[int]], list[Finding]]:
    """The groups of ranks to compare, and a finding when they cannot be known."""
    if configured:
        return [sorted(g) for g in configured], []
    recorded = run.meta("replica_groups")
    if recorded:
        return [sorted(g) for g in recorded], []
    mode = run.meta("parallel_mode")
    if mode in REPLICATED_MODES:
        return [list(range(run.world_size))], []
    note = Finding("replica_groups_unknown", Severity.WARNING, "run", None, (), (),
                   f"parallel_mode is {mode}: ranks hold different shards, so distcheck cannot know which "
                   "ranks are replicas of each other. List them in a config file (replica_groups: "
                   "[[0, 2], [1, 3]]) and pass it with --config. No cross-rank comparison was made.")
    return [], [note]


def common_structure(run: Run, members: list[int]) -> tuple[list[int], list[ParamInfo], list[Finding]]:
    """The members whose parameter table matches the group's majority, that table, and findings."""
    tables = {r: tuple((p.name, p.shape, p.dtype) for p in run.readers[r].params) for r in members}
    if not tables:
        return [], [], []
    counts = Counter(tables.values())
    best, n = counts.most_common(1)[0]
    if n * 2 <= len(members) and len(counts) > 1:
        # No majority table: keep the lowest rank's, flag everyone who differs from it.
        best = tables[min(members)]
    agree = [r for r in members if tables[r] == best]
    odd = [r for r in members if tables[r] != best]
    findings = []
    if odd:
        ref = dict((name, (shape, dtype)) for name, shape, dtype in best)
        differing: set[str] = set()
        for r in odd:
            mine = {name: (shape, dtype) for name, shape, dtype in tables[r]}
            differing |= {k for k in set(ref) | set(mine) if ref.get(k) != mine.get(k)}
            if not differing and list(mine) != list(ref):
                differing.add("(parameter order)")
        names = tuple(sorted(differing))
        findings.append(Finding(
            "structure_mismatch", Severity.ERROR, "init", 0, tuple(odd), names,
            f"Rank(s) {', '.join(map(str, odd))} hold different parameters (names, shapes or dtypes) from "
            f"rank(s) {', '.join(map(str, agree))}: {name_list(names)}. Every replica must build the same "
            "network; check for rank-dependent model code or configuration. These ranks were left out of "
            "the value comparisons."))
    params = list(run.readers[agree[0]].params)
    return agree, params, findings


#: Names of running statistics a network updates itself (BatchNorm and alike).
_RUNNING = ("moving_mean", "moving_variance", "running_mean", "running_var", "num_batches_tracked")


def weight_mask(run: Run, members: list[int], params: list[ParamInfo]) -> np.ndarray:
    """Which parameters are weights, compared like trainable ones: the trainable ones, and
    frozen weights (``requires_grad=False`` but never changed by the network: a frozen
    pretrained backbone, the embeddings of a fine-tune). The other non-trainable ones are
    buffers the network updates itself (BatchNorm's moving statistics): they changed
    between the first and last recorded step on some rank, or, in a run of one recorded
    step, they are named like running statistics."""
    mask = np.array([p.trainable for p in params], bool)
    frozen = np.flatnonzero(~mask)
    if not len(frozen):
        return mask
    changed = np.zeros(len(params), bool)
    spans = 0
    for r in members:
        reader = run.readers[r]
        if reader.n_steps < 2:
            continue
        spans += 1
        first = reader.digests("param", 0, 1)[0]
        last = reader.digests("param", reader.n_steps - 1, reader.n_steps)[0]
        changed |= np.any(first != last, axis=-1)
    for c in frozen:
        if spans:
            mask[c] = not changed[c]
        else:
            mask[c] = params[c].name.rsplit(".", 1)[-1] not in _RUNNING
    return mask
