"""Which ranks to compare on which parameters, and whether they hold them alike.

Each parameter's replica group (see :mod:`distcheck.replicas`) comes from the config's
declaration, else what each rank's probe recorded (its declaration, or MindSpore's
layout), else the parallel mode. Parameters sharing a group form one
:class:`Comparison`; a pure data-parallel job is a single comparison of every rank on
every parameter.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from distcheck.analysis.run import Run
from distcheck.buffers import is_running_statistic
from distcheck.findings import Finding, Note, Severity, name_list, rank_list
from distcheck.replicas import REPLICATED_MODES, Declaration, Group, Source
from distcheck.store.schema import ParamInfo


class ReplicaConfigError(ValueError):
    """The config's replica groups do not fit the run (unknown rank, unmatched glob)."""


@dataclass
class Comparison:
    group: Group  # the ranks that must agree on these parameters
    names: list[str] = field(default_factory=list)
    sources: set[str] = field(default_factory=set)
    _known: set[str] = field(default_factory=set, repr=False)

    def add(self, name: str, source: str) -> None:
        if name not in self._known:
            self._known.add(name)
            self.names.append(name)
        self.sources.add(source)

    @property
    def label(self) -> str:
        """The group as messages name it, with where it came from unless obvious."""
        ranks = f"[{rank_list(self.group)}]"
        if self.sources and self.sources != {Source.DATA_PARALLEL.label}:
            return f"{ranks} ({'/'.join(sorted(self.sources))})"
        return ranks


def comparisons(run: Run, declared: Optional[Declaration]) -> tuple[list[Comparison], list[Finding | Note]]:
    """The comparisons to make, and what could not be compared. Raises
    :class:`ReplicaConfigError` when ``declared`` names a rank the run does not have or
    has an entry that matches no parameter."""
    names_seen = {p.name for params, _ in run.readers.distinct("params") for p in params}
    if declared is not None:
        try:
            declared.check_ranks(run.world_size)
        except ValueError as exc:
            raise ReplicaConfigError(str(exc)) from None
        unmatched = declared.unmatched(names_seen)
        if unmatched and names_seen:
            raise ReplicaConfigError(f"{'; '.join(unmatched)} match(es) no parameter of the run (e.g. "
                                     f"{name_list(sorted(names_seen), 3)})")
    legacy = Declaration.parse(run.meta("replica_groups"))  # dumps before per-parameter groups
    replicated = run.meta("parallel_mode") in REPLICATED_MODES
    by_group: dict[Group, Comparison] = {}
    alone: dict[str, set[int]] = {}
    unknown: dict[str, set[int]] = {}
    everyone = tuple(range(run.world_size))
    # Ranks with equal parameter tables and recorded groups share their groups; unless a
    # declaration names ranks, each set of such ranks is looked at once, not rank by rank.
    alike: dict[tuple[int, int], list[int]] = {}
    for rank in sorted(run.readers):
        alike.setdefault((id(run.readers.shared("params", rank)), id(run.readers.shared("replicas", rank))),
                         []).append(rank)
    recorded = {key: run.readers[ranks[0]].replica_groups() for key, ranks in alike.items()}
    if declared is not None or legacy is not None:
        looks = [(rank, [rank], key) for key, ranks in alike.items() for rank in ranks]
        looks.sort(key=lambda look: look[0])
    else:
        looks = [(ranks[0], ranks, key) for key, ranks in alike.items()]
    for rank, holders, key in looks:
        of_group: dict[int, Comparison] = {}  # by id(): a rank's groups are a few shared tuples
        for param, rec in zip(run.readers.shared("params", rank), recorded[key]):
            group, source = _group_of(param.name, rank, everyone, declared, rec, legacy, replicated)
            if group is None:
                unknown.setdefault(param.name, set()).update(holders)
            elif len(group) < 2:
                alone.setdefault(param.name, set()).update(holders)
            else:
                comparison = of_group.get(id(group))
                if comparison is None:
                    comparison = of_group[id(group)] = by_group.setdefault(group, Comparison(group))
                comparison.add(param.name, source.label)
    notes: list[Finding | Note] = []
    if unknown:
        names = sorted(unknown)
        ranks = sorted({r for rs in unknown.values() for r in rs})
        notes.append(Finding(
            "replica_groups_unknown", Severity.WARNING, "run", None, tuple(ranks), tuple(names),
            f"parallel_mode is {run.meta('parallel_mode')}: ranks hold different shards, and {len(names)} "
            f"parameter(s) have no known replica group, so they were not compared across ranks: "
            f"{name_list(names)}. Declare which ranks hold copies of each in a config file and pass it with "
            "--config, e.g. replica_groups: [{params: \"mid.*\", groups: [[0, 2], [1, 3]]}, "
            "{params: \"*\", groups: [[0, 1, 2, 3]]}]."))
    if alone and run.world_size > 1:  # on one device there is nothing to compare with
        names = sorted(alone)
        notes.append(Note("replica_groups", (), f"{len(names)} parameter(s) are held by one rank each (a replica "
                          f"group of one), so they were health-checked but not compared across ranks: "
                          f"{name_list(names)}"))
    return sorted(by_group.values(), key=lambda c: (c.group[0], len(c.group))), notes


def _group_of(name: str, rank: int, everyone: Group, declared: Optional[Declaration], recorded,
              legacy: Optional[Declaration], replicated: bool) -> tuple[Optional[Group], Source]:
    if declared is not None:
        group = declared.group_of(name, rank)
        if group is not None:
            return group, Source.DECLARED
    if recorded is not None:
        return recorded[0], Source(recorded[1])
    if legacy is not None:
        group = legacy.group_of(name, rank)
        return group, Source.DATA_PARALLEL if group is not None and len(group) == len(everyone) else Source.DECLARED
    if replicated:
        return everyone, Source.DATA_PARALLEL
    return None, Source.UNKNOWN


def data_parallel_peers(run: Run, found: list[Comparison]) -> list[list[int]]:
    """Ranks that replicate each other in every parameter they hold: they must read
    different batches. (Ranks of one model-parallel group hold different shards and may
    read the same batch.) Each rank's peers are the intersection of its groups: computed
    once per distinct set of groups, never a set of peers per rank (ten thousand ranks
    would make that a hundred million entries)."""
    groups_of: dict[int, list[int]] = {}  # rank -> the comparisons that hold it
    for i, c in enumerate(found):
        for r in c.group:
            if r in run.readers:
                groups_of.setdefault(r, []).append(i)
    classes: dict[tuple[int, ...], tuple[int, ...]] = {}  # its comparisons -> its peers
    for held_by in {tuple(i) for i in groups_of.values()}:
        peers = set(run.readers)
        for i in held_by:
            peers &= set(found[i].group)
        classes[held_by] = tuple(sorted(peers))
    return [list(c) for c in sorted(set(classes.values())) if len(c) > 1]


def common_structure(run: Run, members: list[int], names: list[str]
                     ) -> tuple[list[int], list[ParamInfo], dict[int, np.ndarray], list[Finding]]:
    """The members that hold ``names`` alike (same shapes and dtypes, as most members
    do), those parameters, each member's column of each, and findings."""
    by_table: dict[int, tuple[dict, tuple]] = {}  # ranks of equal parameter tables share one object
    tables, signature = {}, {}
    for r in members:
        params = run.readers.shared("params", r)
        if id(params) not in by_table:
            table = {p.name: (i, p) for i, p in enumerate(params)}
            by_table[id(params)] = (table, tuple((n, table[n][1].shape, table[n][1].dtype) if n in table
                                                 else (n, None, None) for n in names))
        tables[r], signature[r] = by_table[id(params)]
    if not members:
        return [], [], {}, []
    counts = Counter(signature.values())
    best, n = counts.most_common(1)[0]
    if n * 2 <= len(members) and len(counts) > 1:
        # No majority: keep the lowest rank's, flag everyone who differs from it.
        best = signature[min(members)]
    agree = [r for r in members if signature[r] == best]
    odd = [r for r in members if signature[r] != best]
    findings = []
    if odd:
        differing = sorted({a[0] for r in odd for a, b in zip(signature[r], best) if a != b})
        findings.append(Finding(
            "structure_mismatch", Severity.ERROR, "init", 0, tuple(odd), tuple(differing),
            f"Rank(s) {rank_list(odd)} hold different parameters (names, shapes or dtypes) from "
            f"rank(s) {rank_list(agree)} of their replica group: {name_list(differing)}. Every replica "
            "must build the same network; check for rank-dependent model code or configuration. These ranks "
            "were left out of the value comparisons."))
    present = [n for n, shape, _ in best if shape is not None]
    params = [tables[agree[0]][n][1] for n in present]
    shared_cols: dict[int, np.ndarray] = {}  # one array per distinct table, shared by its ranks
    cols = {r: shared_cols.get(id(tables[r])) for r in agree}
    for r in agree:
        if cols[r] is None:
            cols[r] = shared_cols[id(tables[r])] = np.array([tables[r][n][0] for n in present], np.int64)
    return agree, params, cols, findings


def weight_mask(run: Run, members: list[int], params: list[ParamInfo], cols: dict[int, np.ndarray]) -> np.ndarray:
    """Which parameters are weights, compared like trainable ones: the trainable ones, and
    frozen weights (``requires_grad=False``, not updated by the network itself: a frozen
    pretrained backbone, the embeddings of a fine-tune). The other non-trainable ones are
    buffers the network updates itself (BatchNorm's moving statistics): they are named
    like running statistics (:func:`distcheck.buffers.is_running_statistic`), or they
    changed between the first and last recorded step on *every* rank that recorded two
    steps or more. A frozen weight that changed on some ranks only was written to on those
    ranks: it stays a weight, and the difference is an error."""
    mask = np.array([p.trainable for p in params], bool)
    frozen = np.flatnonzero(~mask)
    if not len(frozen):
        return mask
    parts = run.on_shards(_changed_in_share, (members, cols, len(params)))
    spans = sum(n for n, _ in parts)
    changed_everywhere = np.logical_and.reduce([changed for _, changed in parts])
    for c in frozen:
        buffer = is_running_statistic(params[c].name) or (spans > 0 and changed_everywhere[c])
        mask[c] = not buffer
    return mask


def _changed_in_share(share: Run, task: tuple[list[int], dict[int, np.ndarray], int]) -> tuple[int, np.ndarray]:
    """Of this share's members that recorded two steps or more: how many, and which
    parameters changed between the first and last recorded step on every one."""
    members, cols, n_params = task
    changed_everywhere = np.ones(n_params, bool)
    spans = 0
    for r in members:
        if r not in share.readers:
            continue
        reader = share.readers[r]
        if reader.n_steps < 2:
            continue
        spans += 1
        first = reader.digests("param", 0, 1)[0][cols[r]]
        last = reader.digests("param", reader.n_steps - 1, reader.n_steps)[0][cols[r]]
        changed_everywhere &= np.any(first != last, axis=-1)
    return spans, changed_everywhere
