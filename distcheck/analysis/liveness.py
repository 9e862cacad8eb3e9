"""Ranks that never wrote, or stopped before the others: crashes and hangs.

A rank's dump says how it ended (finished, aborted, or still "running" when it was
killed without warning), its last recorded step, and its last sign of life (a
heartbeat, written every few seconds even while the rank waits in a collective).
A rank whose heartbeats stop while the others' go on died first; ranks that keep
beating without recording steps were stuck.
"""
from __future__ import annotations

from distcheck.analysis.run import Run
from distcheck.findings import Finding, Severity

#: Heartbeat gaps shorter than this (seconds) do not order deaths.
SILENCE_MARGIN = 5.0


def check_ranks(run: Run) -> list[Finding]:
    findings = []
    missing = [r for r in range(run.world_size) if r not in run.readers]
    if missing:
        reasons = [f"rank {r}: {run.unreadable_ranks[r]}" for r in missing if r in run.unreadable_ranks]
        absent = [r for r in missing if r not in run.unreadable_ranks]
        parts = []
        if absent:
            parts.append(f"no dump for rank(s) {', '.join(map(str, absent))} of a world of {run.world_size}: "
                         "the rank never reached training (a crash at start-up, or a node's run directory "
                         "was not given)")
        parts.extend(reasons)
        findings.append(Finding("rank_missing", Severity.ERROR, "run", None, tuple(missing), (),
                                "; ".join(parts) + "."))
    stopped = _stopped(run)
    if stopped is not None:
        findings.append(stopped)
    return findings


def _stopped(run: Run):
    readers = run.readers
    if not readers:
        return None
    last = {r: (int(rd.steps[-1]) if rd.n_steps else -1) for r, rd in readers.items()}
    finished = {r for r, rd in readers.items() if rd.finished}
    unfinished = sorted(set(readers) - finished)
    if not unfinished:
        return None
    top = max(last.values())
    behind = [r for r in unfinished if last[r] < top]
    first = _first_silent(run)
    if behind or finished:
        ranks = sorted(set(behind) | (set(unfinished) if finished else set()), key=lambda r: (last[r], r))
    elif first is not None:
        ranks = [first[0]]  # all stopped at the same step: the one that fell silent first is the suspect
    else:
        ranks = unfinished
    alive = {r: readers[r].last_alive() for r in ranks}
    describe = "; ".join(f"rank {r} last recorded step {last[r] if last[r] >= 0 else 'none'} "
                         f"({readers[r].status_name}{': ' + readers[r].status_message if readers[r].status_message else ''})"
                         for r in ranks)
    if finished:
        head = f"{len(ranks)} rank(s) stopped before the end while other ranks finished at step {top}"
    elif behind:
        head = f"rank(s) {', '.join(map(str, behind))} stopped before the others (the furthest reached step {top})"
    else:
        head = f"no rank finished cleanly; all {len(unfinished)} stopped at step {top}"
    tail = ""
    if first is not None:
        tail = (f" Rank {first[0]} went silent first: its last sign of life came {first[1]:.0f} s before "
                "the others'. Look at its log for the crash; the others probably waited for it in a collective.")
    message = f"{head}: {describe}.{tail}"
    step = min(last[r] for r in ranks)
    return Finding("rank_stopped", Severity.ERROR, "run", step if step >= 0 else None, tuple(ranks), (), message,
                   detail={"last_step": {str(r): last[r] for r in ranks},
                           "last_alive": {str(r): alive[r] for r in ranks}})


def _first_silent(run: Run):
    """(rank, seconds of lead) for the rank whose signs of life ended clearly first."""
    alive = {r: rd.last_alive() for r, rd in run.readers.items() if not rd.finished}
    alive = {r: t for r, t in alive.items() if t is not None}
    others = {r: t for r, t in ((r, rd.last_alive()) for r, rd in run.readers.items()) if t is not None}
    if not alive or len(others) < 2:
        return None
    rank = min(alive, key=alive.get)
    rest = [t for r, t in others.items() if r != rank]
    lead = min(rest) - alive[rank]
    return (rank, lead) if lead > SILENCE_MARGIN else None
