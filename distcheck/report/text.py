"""The report for people: root causes first, their symptoms under them."""
from __future__ import annotations

import textwrap

from distcheck.analysis import Analysis
from distcheck.findings import Finding, Severity, name_list
from distcheck.report.verdict import nothing_recorded, verdict, what_was_checked

_LABEL = {Severity.ERROR: "ERROR", Severity.WARNING: "WARNING", Severity.INFO: "info"}


#: Root causes are grouped by where in the run they were seen, in this order.
_GROUPS = (("init", "initialisation"), ("static", "set-up"), ("grad", "gradients"), ("param", "updates"),
           ("buffer", "updates"), ("activation", "activations"), ("loss", "loss"), ("data", "data"),
           ("run", "ranks and the run"))
_COLOUR = {Severity.ERROR: "\033[31m", Severity.WARNING: "\033[33m", Severity.INFO: "\033[36m"}
_RESET = "\033[0m"


def render_text(analysis: Analysis, colour: bool = False) -> str:
    """The report for a terminal: a verdict, then root causes grouped by stage with their
    symptoms under them. ``colour`` adds ANSI colours (for a TTY)."""
    run = analysis.run
    lines = [_paint(verdict(analysis), _worst(analysis.findings), colour), _headline(run)]
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
    elif not roots and run.get("kind") == "diff":
        lines.append("The runs agree within tolerance at every step both recorded.")
    elif nothing_recorded(run):
        lines.append(f"Nothing to judge: {nothing_recorded(run)}.")
    elif not roots:
        lines.append(f"No problems found: {what_was_checked(run)}.")
    labels = dict(_GROUPS)
    order = {stage: i for i, (stage, _) in enumerate(_GROUPS)}
    shown = None
    for f in sorted(roots, key=lambda f: order.get(f.stage, len(order))):  # stable: severity and step kept
        label = labels.get(f.stage, f.stage)
        if label != shown:
            lines.append(f"== {label} ==")
            shown = label
        lines.extend(_subtree(f, symptoms, indent="", colour=colour))
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


def _subtree(f: Finding, symptoms: dict[str, list[Finding]], indent: str, colour: bool) -> list[str]:
    lines = _finding(f, indent, colour)
    for s in symptoms.get(f.key, []):
        lines.append(f"{indent}    which explains:")
        lines.extend(_subtree(s, symptoms, indent + "    ", colour))
    return lines


def _worst(findings: list[Finding]) -> Severity:
    return max((f.severity for f in findings), key=lambda s: s.rank, default=Severity.INFO)


def _paint(text: str, severity: Severity, colour: bool) -> str:
    return f"{_COLOUR[severity]}{text}{_RESET}" if colour else text


def _headline(run: dict) -> str:
    if run.get("kind") == "diff":
        a, b = run["runs"]
        return (f"distcheck diff: {b['dir']} ({b['world_size']} rank(s), {_span(b['last_step'])}) against the "
                f"reference {a['dir']} ({a['world_size']} rank(s), {_span(a['last_step'])})")
    steps = [r["last_step"] for r in run.get("ranks", {}).values() if r["last_step"] is not None]
    span = f", {_span(max(steps) if steps else None)}"
    every = f" every {run['every']} steps" if run.get("every") and run["every"] != 1 else ""
    found = len(run.get("ranks_found", []))
    calls = run.get("training_calls") or []
    spans = ", ".join(f"{c['first_step']}..{c['last_step']}" for c in calls)
    calls_text = f", {len(calls)} training calls (steps {spans})" if len(calls) > 1 else ""
    return (f"distcheck: {', '.join(run['dirs'])}: {found} of {run['world_size']} rank(s), "
            f"parallel mode {run.get('parallel_mode') or 'unknown'}{span}{', recorded' + every if every else ''}"
            f"{calls_text}")


def _span(last_step) -> str:
    return "no step recorded" if last_step is None else f"steps 0..{last_step}"


def _finding(f: Finding, indent: str, colour: bool = False) -> list[str]:
    where = f" at step {f.step}" if f.step is not None else ""
    if "training_call" in f.detail:
        where += f" (training call {f.detail['training_call']})"
    ranks = f" on rank {', '.join(map(str, f.ranks))}" if f.ranks else ""
    head = f"{indent}{_paint(_LABEL[f.severity], f.severity, colour)} {f.code}{where}{ranks}"
    out = [head]
    if f.params:
        out.append(f"{indent}  params: {name_list(f.params, limit=8)}")
    out.extend(textwrap.wrap(f.message, width=78, initial_indent=indent + "  ", subsequent_indent=indent + "  "))
    return out


def _totals(analysis: Analysis) -> str:
    n_err = sum(f.severity is Severity.ERROR for f in analysis.findings)
    n_warn = sum(f.severity is Severity.WARNING for f in analysis.findings)
    tail = f", {len(analysis.errors)} input error(s)" if analysis.errors else ""
    return f"{n_err} error(s), {n_warn} warning(s){tail}."
