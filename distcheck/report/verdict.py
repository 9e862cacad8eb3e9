"""The one-line verdict every report opens with."""
from __future__ import annotations

from distcheck.analysis import Analysis
from distcheck.findings import Severity


def verdict(analysis: Analysis) -> str:
    errors = [f for f in analysis.findings if f.severity is Severity.ERROR]
    warnings = [f for f in analysis.findings if f.severity is Severity.WARNING]
    if not analysis.run.get("ranks_found"):
        return "NO DATA: no rank could be analysed"
    counts = f"{len(errors)} error(s), {len(warnings)} warning(s)"
    if analysis.errors:
        counts += f", {len(analysis.errors)} input error(s)"
    empty = nothing_recorded(analysis.run)
    if empty:
        return f"NO DATA: {empty} ({counts})"
    if errors:
        first = errors[0]
        where = f" at step {first.step}" if first.step is not None else ""
        ranks = f" on rank {', '.join(map(str, first.ranks[:8]))}{' ...' if len(first.ranks) > 8 else ''}" \
            if first.ranks else ""
        return f"FAIL: {counts}; first {first.code}{where}{ranks}"
    if warnings:
        return f"PASS with warnings: {counts}"
    if analysis.run.get("kind") == "diff":
        return "PASS: the runs agree within tolerance at every step both recorded"
    return f"PASS: {what_was_checked(analysis.run)}" + (f" ({counts})" if analysis.errors else "")


def what_was_checked(run: dict) -> str:
    """What a clean analysis of ``run`` (its summary) means: on one device there are no
    replicas, so only the health rules judged it."""
    if run.get("world_size") == 1:
        return "one device, so no replicas to compare; no health rule fired on its recorded steps"
    return "every replica agreed at every recorded step, and no health rule fired"


def nothing_recorded(run: dict) -> str:
    """Why nothing could be judged, when no rank (of either run, for a diff) recorded a
    step; "" otherwise."""
    if run.get("kind") == "diff":
        empty = [side["dir"] for side in run.get("runs", []) if side.get("last_step") is None]
        return f"no rank of {' or '.join(empty)} recorded a step, so nothing was compared" if empty else ""
    ranks = run.get("ranks", {})
    if ranks and all(not info.get("steps_recorded") for info in ranks.values()):
        return "no rank recorded a step, so nothing was checked"
    return ""
