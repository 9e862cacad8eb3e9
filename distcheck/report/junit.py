"""JUnit XML, the test-report format CI systems read (GitHub Actions, GitLab, Jenkins).

One test suite per run. Each check is a test case, one per replica group for the
cross-rank checks: it passes when that check found no error there, and each error
finding is a failing case of its own, its message the finding's. Warnings and notes
are kept as the cases' system output, so a warning never fails a build by itself. A
one-device run has no replicas, so the checks that compare them are not listed.
"""
from __future__ import annotations

import time
import xml.etree.ElementTree as ET

from distcheck.analysis import Analysis
from distcheck.findings import Finding, Severity
from distcheck.rules import RULES


#: The checks that compare replicas: not run, so not listed, on one device.
_REPLICA_CODES = ("init_mismatch", "grad_divergence", "param_divergence", "buffer_divergence", "data_not_sharded",
                  "structure_mismatch", "replica_groups_unknown")


def render_junit(analysis: Analysis) -> str:
    run = analysis.run
    suite = ET.Element("testsuite", name=f"distcheck {' '.join(run['dirs'])}",
                       timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"))
    cases = 0
    failures = 0
    by_code: dict[str, list[Finding]] = {}
    for f in analysis.findings:
        by_code.setdefault(f.code, []).append(f)
    diffing = run.get("kind") == "diff"
    one_device = not diffing and run.get("world_size") == 1
    for code, rule in sorted(RULES.items()):
        if code.startswith("diff_") != diffing:  # a diff's checks, or an analysis's
            continue
        if one_device and code in _REPLICA_CODES and code not in by_code:  # no replicas to compare
            continue
        found = by_code.get(code, [])
        groups = sorted({tuple(f.detail.get("replica_group", ())) for f in found}) or [()]
        for group in groups:
            mine = [f for f in found if tuple(f.detail.get("replica_group", ())) == group]
            where = f" [replica group {', '.join(map(str, group))}]" if group else ""
            errors = [f for f in mine if f.severity is Severity.ERROR]
            for f in errors:
                case = _case(suite, rule.stage, f"{code}{where} at step {f.step}" if f.step is not None
                             else f"{code}{where}")
                failure = ET.SubElement(case, "failure", message=_one_line(f), type=code)
                failure.text = f.message
                cases, failures = cases + 1, failures + 1
            if not errors:
                case = _case(suite, rule.stage, f"{code}{where}")
                cases += 1
                others = [f for f in mine if f.severity is not Severity.ERROR]
                if others:
                    ET.SubElement(case, "system-out").text = "\n".join(
                        f"{f.severity.value}: {_one_line(f)}\n{f.message}" for f in others)
    if analysis.errors:
        case = _case(suite, "run", "input")
        error = ET.SubElement(case, "error", message=analysis.errors[0].message, type="input_error")
        error.text = "\n".join(e.message for e in analysis.errors)
        cases += 1
    if analysis.notes:
        ET.SubElement(suite, "system-out").text = "\n".join(f"note: {n.message}" for n in analysis.notes)
    suite.set("tests", str(cases))
    suite.set("failures", str(failures))
    suite.set("errors", "1" if analysis.errors else "0")
    root = ET.Element("testsuites", name="distcheck", tests=str(cases), failures=str(failures),
                      errors=suite.get("errors"))
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _case(suite: ET.Element, stage: str, name: str) -> ET.Element:
    return ET.SubElement(suite, "testcase", classname=f"distcheck.{stage}", name=name, time="0")


def _one_line(f: Finding) -> str:
    ranks = f" on rank {', '.join(map(str, f.ranks))}" if f.ranks else ""
    step = f" at step {f.step}" if f.step is not None else ""
    return f"{f.code}{step}{ranks}"
