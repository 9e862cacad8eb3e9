"""A short Markdown summary: for ``$GITHUB_STEP_SUMMARY`` or a merge-request comment."""
from __future__ import annotations

from distcheck.analysis import Analysis
from distcheck.findings import Finding, Severity, name_list
from distcheck.report.verdict import verdict

_ICON = {Severity.ERROR: "❌ error", Severity.WARNING: "⚠️ warning", Severity.INFO: "ℹ️ info"}


def render_markdown(analysis: Analysis) -> str:
    run = analysis.run
    lines = [f"### distcheck: {verdict(analysis)}", ""]
    ranks = run.get("ranks", {})
    finished = sum(1 for r in ranks.values() if r["status"] == "finished")
    steps = [r["last_step"] for r in ranks.values() if r["last_step"] is not None]
    lines.append(f"`{', '.join(run['dirs'])}`: {len(run.get('ranks_found', []))} of {run['world_size']} rank(s), "
                 f"{finished} finished cleanly, parallel mode {run.get('parallel_mode') or 'unknown'}"
                 + (f", steps 0..{max(steps)}" if steps else ", no step recorded") + ".")
    lines.append("")
    if analysis.findings:
        lines += ["| | finding | step | ranks | parameters | what |", "|---|---|---|---|---|---|"]
        for f in analysis.findings:
            lines.append(f"| {_ICON[f.severity]} | `{f.code}` | {_cell(f.step)} | {_ranks(f)} | "
                         f"{_escape(name_list(f.params, 4)) if f.params else ''} | {_escape(_first_sentence(f))} |")
        lines.append("")
    for err in analysis.errors:
        lines.append(f"- input error: {_escape(err.message)}")
    for note in analysis.notes:
        lines.append(f"- note: {_escape(note.message)}")
    if analysis.errors or analysis.notes:
        lines.append("")
    lines.append("`distcheck explain CODE` documents each finding; the text or HTML report has the details.")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    return "" if value is None else str(value)


def _ranks(f: Finding) -> str:
    if len(f.ranks) > 8:
        return f"{', '.join(map(str, f.ranks[:8]))} and {len(f.ranks) - 8} more"
    return ", ".join(map(str, f.ranks))


def _first_sentence(f: Finding) -> str:
    head, dot, _ = f.message.partition(". ")
    return head + ("." if dot else "")


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
