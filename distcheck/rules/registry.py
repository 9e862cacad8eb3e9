"""The rule registry: one decorated function per code, its docstring its documentation.

A rule is ``check(rank: RankData, settings: dict) -> list[Finding]`` and judges one
rank's dump; the runner applies it to every rank and merges what ranks share. A rule
returns findings; it never prints, and never raises to signal a problem.

Codes whose logic needs every rank at once (the cross-rank consistency analysis in
:mod:`distcheck.analysis`) are registered with ``check=None`` so that ``distcheck rules``
and ``distcheck explain`` cover them too.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Optional

from distcheck.findings import Finding, Severity


@dataclass(frozen=True)
class Rule:
    code: str
    severity: Severity
    stage: str
    summary: str
    doc: str
    check: Optional[Callable[..., list[Finding]]]
    #: What the code compares: "per rank" (a rule), "cross-rank" (the consistency
    #: analysis) or "two runs" (``distcheck diff``).
    scope: str = "per rank"

    @property
    def cross_rank(self) -> bool:
        return self.check is None


RULES: dict[str, Rule] = {}


def rule(code: str, severity: Severity, stage: str, summary: str):
    """Register the decorated function as the rule ``code``."""

    def register(fn: Callable[..., list[Finding]]) -> Callable[..., list[Finding]]:
        _add(Rule(code, severity, stage, summary, inspect.cleandoc(fn.__doc__ or ""), fn))
        return fn

    return register


def document(code: str, severity: Severity, stage: str, summary: str, doc: str, scope: str = "cross-rank") -> None:
    """Register a code computed elsewhere: by the consistency analysis, or by ``diff``
    (``scope="two runs"``)."""
    _add(Rule(code, severity, stage, summary, inspect.cleandoc(doc), None, scope))


def _add(r: Rule) -> None:
    if r.code in RULES:
        raise ValueError(f"rule code {r.code} registered twice")
    RULES[r.code] = r


def finding(code: str, step: Optional[int], ranks, params, message: str, **extra) -> Finding:
    """A finding of a registered code, with the rule's severity and stage."""
    r = RULES[code]
    return Finding(code, r.severity, r.stage, step, tuple(ranks), tuple(params), message, **extra)
