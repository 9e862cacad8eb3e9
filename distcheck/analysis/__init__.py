"""Post-mortem analysis of a run's dumps: numpy and h5py only, no training framework."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Sequence

import numpy as np

from distcheck.analysis.causes import LINK_WINDOW, link_causes
from distcheck.analysis.data import data_not_sharded, input_nonfinite, loss_nonfinite
from distcheck.analysis.divergence import (describe, episode_findings, group_steps, merge_classes, scan_group,
                                          share_classes)
from distcheck.analysis.facts import Facts, gather_facts
from distcheck.analysis.liveness import check_ranks
from distcheck.analysis.run import InputError, Run, load_run
from distcheck.analysis.pools import Pool, SerialPool
from distcheck.analysis.structure import (ReplicaConfigError, common_structure, comparisons, data_parallel_peers,
                                         weight_mask)
from distcheck.findings import Finding, Note, sort_findings
from distcheck.replicas import Declaration
from distcheck.store.reader import DumpError
from distcheck.store.schema import Status


Check = Callable[[Run, dict], list[Finding | Note]]


@dataclass
class Analysis:
    run: dict[str, Any]
    findings: list[Finding]
    errors: list[InputError] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)


def analyze(dirs: list[str], config: dict[str, Any], checks: Sequence[Check] = (), pool: Optional[Pool] = None
            ) -> Analysis:
    """Load the run in ``dirs`` and judge it: the cross-rank consistency analysis, then
    ``checks`` (each ``check(run, config) -> findings``), then root causes are linked.
    ``pool`` spreads the work over workers (default: none), each holding a share of the
    ranks (see :mod:`distcheck.analysis.run`)."""
    pool = pool or SerialPool()
    run = load_run(dirs, pool=pool)
    try:
        while True:
            try:
                facts = gather_facts(run)
                results: list[Finding | Note] = list(consistency(run, config, facts))
                for check in checks:
                    results.extend(check(run, config))
                break
            except DumpError as exc:  # damage found while reading: judge again without that rank
                run.drop(exc)
        findings = [f for f in results if isinstance(f, Finding)]
        notes = [n for n in results if isinstance(n, Note)]
        trainable = {p.name for params, _ in run.readers.distinct("params") for p in params if p.trainable}
        window = LINK_WINDOW * int(run.meta("every", 1) or 1)
        calls = [facts.calls[segment] for segment in sorted(facts.calls)]
        findings = by_training_call(link_causes(findings, trainable, window), calls)
        return Analysis(summary(run, calls), sort_findings(findings), list(run.errors), notes)
    finally:
        run.close()


def consistency(run: Run, config: dict[str, Any], facts: Facts) -> list[Finding | Note]:
    findings: list[Finding | Note] = list(check_ranks(run, facts.ends))
    if not run.readers:
        return findings
    found, notes = comparisons(run, Declaration.parse(config.get("replica_groups")))
    findings.extend(notes)
    findings.extend(gradients_not_recorded(run))
    limit = int(config.get("max_findings_per_code", 5))
    groups = []
    for comparison in found:
        present = [r for r in comparison.group if r in run.readers]
        if len(present) < 2:
            continue
        members, params, cols, mismatch = common_structure(run, present, comparison.names)
        findings.extend(mismatch)
        if len(members) < 2 or not params:
            continue
        groups.append((comparison, members, params, cols, weight_mask(run, members, params, cols),
                       group_steps(run, members)))
    # Every group's classes in one pass over the shares.
    parts = run.on_shards(share_classes, [(members, cols, steps) for _, members, _, cols, _, steps in groups])
    for g, (comparison, members, params, cols, weights, steps) in enumerate(groups):
        classes = merge_classes(steps, len(members), [part[g] for part in parts])
        episodes = describe(run, members, params, cols, scan_group(run, members, params, cols, weights, classes))
        group = {"replica_group": list(comparison.group)}
        findings.extend(replace(f, detail={**f.detail, **group}) for f in episode_findings(
            episodes, params, comparison.label, len(comparison.group), run.meta("parallel_mode"), limit))
    del parts
    findings.extend(data_not_sharded(run, data_parallel_peers(run, found)))
    findings.extend(loss_nonfinite(facts))
    findings.extend(input_nonfinite(facts))
    return findings


def gradients_not_recorded(run: Run) -> list[Note]:
    """A note for the ranks whose probe recorded no gradients on purpose (``meta.gradients``
    says why: sharded modes, or ``--grad-copy-limit``)."""
    why: dict[str, list[int]] = {}
    for rank in sorted(run.readers):
        reason = run.readers.shared("meta", rank).get("gradients")
        if reason:
            why.setdefault(str(reason), []).append(rank)
    return [Note("gradients", tuple(ranks), f"Gradients {reason}. Gradient divergence cannot be told apart from "
                 "update divergence: a gradient that differs shows in the parameters after its update.")
            for reason, ranks in why.items()]


def by_training_call(findings: list[Finding], calls: list[tuple[int, int]]) -> list[Finding]:
    """With more than one training call, say in each finding's detail which call (1-based)
    its step belongs to."""
    if len(calls) < 2:
        return findings
    starts = np.array([first for first, _ in calls])
    out = []
    for f in findings:
        if f.step is not None:
            call = int(np.searchsorted(starts, f.step, side="right"))
            f = replace(f, detail={**f.detail, "training_call": max(call, 1)})
        out.append(f)
    return out


def summary(run: Run, calls: list[tuple[int, int]]) -> dict[str, Any]:
    ranks = {}
    table = run.readers  # read from its columns: no reader is built per rank
    for rank in sorted(table):
        steps = table.steps_of(rank)
        ranks[str(rank)] = {
            "file": table.paths[table.row_of(rank)],
            "status": Status(table.number("status", rank)).label,
            "steps_recorded": len(steps),
            "first_step": int(steps[0]) if len(steps) else None,
            "last_step": int(steps[-1]) if len(steps) else None,
            "hostname": table.shared("attrs", rank).get("hostname"),
        }
    return {
        "dirs": run.dirs,
        "world_size": run.world_size,
        "ranks_found": run.ranks,
        "parallel_mode": run.meta("parallel_mode"),
        "framework": run.meta("framework"),
        "framework_version": run.meta("framework_version"),
        "every": run.meta("every"),
        "sink_size": run.meta("sink_size"),
        "training_calls": [{"first_step": a, "last_step": b} for a, b in calls],
        "ranks": ranks,
    }
