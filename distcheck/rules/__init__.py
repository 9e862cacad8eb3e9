"""Training-health rules, and the documentation of every finding code.

Importing this package registers every rule in :data:`RULES`. :func:`health_checks`
runs the per-rank rules on each rank of a run and merges what ranks share.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from distcheck.analysis.run import Run
from distcheck.findings import Finding, Note
from distcheck.rules import activations, consistency, data, gradients, init, loss, static, weights  # noqa: F401
from distcheck.rules.rankdata import RankData
from distcheck.rules.registry import RULES, Rule

__all__ = ["RULES", "Rule", "health_checks", "static_findings"]

_STATIC = ("frozen_by_accident", "bn_in_eval_mode", "dropout_keep_prob")


def health_checks(run: Run, config: dict[str, Any]) -> list[Finding | Note]:
    """Every enabled per-rank rule on every readable rank; equal findings (and notes)
    merged across ranks."""
    settings = config.get("rules", {})
    disabled = set(settings.get("disable") or ())
    merged: dict[tuple, Finding | Note] = {}
    for rank, reader in sorted(run.readers.items()):
        rank_data = RankData(reader)
        for code, r in RULES.items():
            if r.cross_rank or code in disabled:
                continue
            for f in r.check(rank_data, settings.get(code) or {}):
                key = (f.code, f.message) if isinstance(f, Note) else (f.code, f.step, f.params)
                old = merged.get(key)
                if old is None:
                    merged[key] = f
                else:
                    merged[key] = replace(old, ranks=tuple(sorted(set(old.ranks) | set(f.ranks))))
    return list(merged.values())


class _Setup:
    """What the static rules read of a rank: its number and its set-up description."""

    def __init__(self, setup: dict, rank: int) -> None:
        self.static, self.rank = setup, rank


def static_findings(setup: dict, rank: int, config: dict[str, Any]) -> list[Finding]:
    """The static rules on a training set-up description (``meta.static``), e.g. in the job."""
    settings = config.get("rules", {})
    disabled = set(settings.get("disable") or ())
    view = _Setup(setup, rank)
    out: list[Finding] = []
    for code in _STATIC:
        if code not in disabled:
            out.extend(RULES[code].check(view, settings.get(code) or {}))
    return out
