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
    from distcheck.analysis.workers import make_pool
    from distcheck.findings import Severity
    from distcheck.rules import health_checks

    pool = make_pool(workers)
    try:
        analysis = analyze(run_dirs, config, checks=[health_checks], pool=pool)
    except ReplicaConfigError as exc:
        raise UsageError(f"the config does not fit this run: {exc}") from None
    if fmt == "json":
        from distcheck.report.json_report import render_json

        text = render_json(analysis)
    else:
        from distcheck.report.text import render_text

        text = render_text(analysis)
    if pool.writes:
        _emit(text, output)
        for err in analysis.errors:
            print(f"distcheck: input error: {err.message}", file=sys.stderr)
    if analysis.errors:
        return ExitCode.INPUT
    if fail_on == "never":
        return ExitCode.OK
    floor = Severity(fail_on).rank
    return ExitCode.FINDINGS if any(f.severity.rank >= floor for f in analysis.findings) else ExitCode.OK


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
