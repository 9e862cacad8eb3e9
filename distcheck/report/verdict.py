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
    return "PASS: every replica agreed at every recorded step, and no health rule fired" + \
        (f" ({counts})" if analysis.errors else "")
