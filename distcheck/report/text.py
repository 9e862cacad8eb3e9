"""The report for people: root causes first, their symptoms under them."""
from __future__ import annotations

import textwrap

from distcheck.analysis import Analysis
from distcheck.findings import Finding, Severity, name_list

_LABEL = {Severity.ERROR: "ERROR", Severity.WARNING: "WARNING", Severity.INFO: "info"}


def render_text(analysis: Analysis) -> str:
    run = analysis.run
    lines = [_headline(run)]
    for err in analysis.errors:
        lines.append(f"  input error: {err.message}")
    if run.get("sink_size"):
        lines.append(f"  note: dataset sinking with sink_size {run['sink_size']}: steps are recorded once per "
                     "sink, so a divergence is located to within that many steps.")
    for note in analysis.notes:
        ranks = f" (rank {', '.join(map(str, note.ranks))})" if note.ranks else ""
        lines.append(f"  note: {note.message}{ranks}")
    lines.append("")
    roots, symptoms = _cause_tree(analysis.findings)
    if not run.get("ranks_found"):
        lines.append("No rank could be analysed, so nothing can be said about this run.")
    elif not roots:
        lines.append("No problems found: every replica agreed at every recorded step, and no health rule fired.")
    for f in roots:
        lines.extend(_subtree(f, symptoms, indent=""))
        lines.append("")
    lines.append(_totals(analysis))
    return "\n".join(lines).rstrip() + "\n"


def _cause_tree(findings: list[Finding]) -> tuple[list[Finding], dict[str, list[Finding]]]:
    """Root findings, most severe tree first, and each finding's direct symptoms."""
    by_key = {f.key: f for f in findings}
    symptoms: dict[str, list[Finding]] = {}
    roots = []
    for f in findings:
        if f.caused_by and f.caused_by in by_key:
            symptoms.setdefault(f.caused_by, []).append(f)
        else:
            roots.append(f)

    def worst(f: Finding) -> int:
        return max([f.severity.rank, *(worst(s) for s in symptoms.get(f.key, []))])

    roots.sort(key=lambda f: (-worst(f), f.step if f.step is not None else -1))
    return roots, symptoms


def _subtree(f: Finding, symptoms: dict[str, list[Finding]], indent: str) -> list[str]:
    lines = _finding(f, indent)
    for s in symptoms.get(f.key, []):
        lines.append(f"{indent}    which explains:")
        lines.extend(_subtree(s, symptoms, indent + "    "))
    return lines


def _headline(run: dict) -> str:
    steps = [r["last_step"] for r in run.get("ranks", {}).values() if r["last_step"] is not None]
    span = f", steps 0..{max(steps)}" if steps else ""
    every = f" every {run['every']} steps" if run.get("every") and run["every"] != 1 else ""
    found = len(run.get("ranks_found", []))
    calls = run.get("training_calls") or []
    spans = ", ".join(f"{c['first_step']}..{c['last_step']}" for c in calls)
    calls_text = f", {len(calls)} training calls (steps {spans})" if len(calls) > 1 else ""
    return (f"distcheck: {', '.join(run['dirs'])}: {found} of {run['world_size']} rank(s), "
            f"parallel mode {run.get('parallel_mode') or 'unknown'}{span}{', recorded' + every if every else ''}"
            f"{calls_text}")


def _finding(f: Finding, indent: str) -> list[str]:
    where = f" at step {f.step}" if f.step is not None else ""
    if "training_call" in f.detail:
        where += f" (training call {f.detail['training_call']})"
    ranks = f" on rank {', '.join(map(str, f.ranks))}" if f.ranks else ""
    head = f"{indent}{_LABEL[f.severity]} {f.code}{where}{ranks}"
    out = [head]
    if f.params:
        out.append(f"{indent}  params: {name_list(f.params, limit=8)}")
    out.extend(textwrap.wrap(f.message, width=100, initial_indent=indent + "  ", subsequent_indent=indent + "  "))
    return out


def _totals(analysis: Analysis) -> str:
    n_err = sum(f.severity is Severity.ERROR for f in analysis.findings)
    n_warn = sum(f.severity is Severity.WARNING for f in analysis.findings)
    tail = f", {len(analysis.errors)} input error(s)" if analysis.errors else ""
    return f"{n_err} error(s), {n_warn} warning(s){tail}."
