"""Replica groups, and whether their members hold the same parameters at all."""
from __future__ import annotations

from collections import Counter
from typing import Optional

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
