"""Findings: what the analysis and the rules report, in one schema.

A finding is a frozen record with a stable ``code``. Everything that judges a run
(the cross-rank consistency analysis and the health rules) returns findings; nothing
prints or raises to signal a problem.
"""
from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any, Optional


class Severity(str, enum.Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return {"info": 0, "warning": 1, "error": 2}[self.value]


@dataclass(frozen=True)
class Finding:
    """One problem, reported at its first occurrence.

    ``stage`` says where in the run it was seen: ``init``, ``grad``, ``param``,
    ``buffer``, ``loss``, ``data``, ``run`` (the dumps themselves) or ``static``.
    ``caused_by`` names the finding (``code@step``) that explains this one, when the
    analysis can tell; the text report then shows it under its root cause.
    """

    code: str
    severity: Severity
    stage: str
    step: Optional[int]
    ranks: tuple[int, ...]
    params: tuple[str, ...]
    message: str
    caused_by: Optional[str] = None
    detail: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def key(self) -> str:
        return f"{self.code}@{self.step}" if self.step is not None else self.code

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["severity"] = self.severity.value
        out["ranks"] = list(self.ranks)
        out["params"] = list(self.params)
        if not self.detail:
            del out["detail"]
        return out


@dataclass(frozen=True)
class Note:
    """What a rule could not judge, and why: shown beside the findings, never a problem.

    A rule returns it instead of staying silent, so that "no finding" is never mistaken
    for "checked and fine" (a 30-step run is too short to judge a trend).
    """

    code: str
    ranks: tuple[int, ...]
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "ranks": list(self.ranks), "message": self.message}


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Most severe first; within a severity, earliest step first."""

    def order(f: Finding) -> tuple:
        step = f.step if f.step is not None else -1
        return (-f.severity.rank, step, f.code)

    return sorted(findings, key=order)


def rank_list(ranks, limit: int = 8) -> str:
    """``0, 3, 5`` for a few ranks; for many, runs of consecutive ranks as ``0..4095``
    and at most ``limit`` parts: a message about ten thousand ranks stays a line."""
    ranks = [int(r) for r in ranks]
    if len(ranks) <= limit:
        return ", ".join(map(str, ranks))
    parts, start = [], 0
    for i in range(1, len(ranks) + 1):
        if i == len(ranks) or ranks[i] != ranks[i - 1] + 1:
            run = ranks[start:i]
            parts.extend([f"{run[0]}..{run[-1]}"] if len(run) > 2 else map(str, run))
            start = i
    if len(parts) <= limit:
        return ", ".join(parts)
    return f"{', '.join(parts[:limit])} and more ({len(ranks)} ranks in all)"


def name_list(names: tuple[str, ...] | list[str], limit: int = 6) -> str:
    """``a, b, c and 4 more``: a short list for messages."""
    names = list(names)
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])} and {len(names) - limit} more"
