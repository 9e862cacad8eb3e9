"""Reports: analyse a run, render it, write it, and turn it into an exit code."""
from __future__ import annotations

import os
import sys
from typing import Optional

from distcheck.exits import ExitCode, UsageError


def write_report(run_dirs: list[str], config: dict, fmt: str = "text", output: Optional[str] = None,
                 fail_on: str = "error", workers: int = 1) -> int:
    """Analyse ``run_dirs`` (over ``workers`` processes, or mpirun's), write the report
    to ``output`` (stdout if None) and return the exit code: 2 on input errors, else 1
    on findings at or above ``fail_on``. Under mpirun only rank 0 writes."""
    from distcheck.analysis import ReplicaConfigError, analyze
    from distcheck.analysis.pools import make_pool
    from distcheck.rules import health_checks

    pool = make_pool(workers)
    try:
        analysis = analyze(run_dirs, config, checks=[health_checks], pool=pool)
    except ReplicaConfigError as exc:
        raise UsageError(f"the config does not fit this run: {exc}") from None
    finally:
        pool.close()
    if not pool.writes:  # another MPI process writes
        return _exit_code(analysis, fail_on)
    return finish_report(analysis, fmt, output, fail_on)


def finish_report(analysis, fmt: str, output: Optional[str], fail_on: str) -> int:
    """Render and write ``analysis``, say its input errors, and return the exit code."""
    _emit(render(analysis, fmt, colour=output is None and _colour_terminal()), output)
    for err in analysis.errors:
        print(f"distcheck: input error: {err.message}", file=sys.stderr)
    return _exit_code(analysis, fail_on)


def _exit_code(analysis, fail_on: str) -> int:
    from distcheck.findings import Severity

    if analysis.errors:
        return ExitCode.INPUT
    if fail_on == "never":
        return ExitCode.OK
    floor = Severity(fail_on).rank
    return ExitCode.FINDINGS if any(f.severity.rank >= floor for f in analysis.findings) else ExitCode.OK


#: Every report format, for --format.
FORMATS = ("text", "json", "junit", "markdown", "html")


def render(analysis, fmt: str, colour: bool = False) -> str:
    """The report of ``analysis`` in format ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "json":
        from distcheck.report.json_report import render_json

        return render_json(analysis)
    if fmt == "junit":
        from distcheck.report.junit import render_junit

        return render_junit(analysis)
    if fmt == "markdown":
        from distcheck.report.markdown import render_markdown

        return render_markdown(analysis)
    if fmt == "html":
        from distcheck.report.html import render_html

        return render_html(analysis)
    from distcheck.report.text import render_text

    return render_text(analysis, colour=colour)


def _colour_terminal() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def _emit(text: str, output: Optional[str]) -> None:
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        directory = os.path.dirname(os.path.abspath(output))
        os.makedirs(directory, exist_ok=True)
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise UsageError(f"cannot write the report to {output}: {exc}") from None
