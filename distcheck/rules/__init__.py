"""Training-health rules, and the documentation of every finding code.

Importing this package registers every rule in :data:`RULES`. :func:`health_checks`
runs the per-rank rules on each rank of a run and merges what ranks share.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

from distcheck.analysis.progress import ProgressBar
from distcheck.analysis.run import Run
from distcheck.analysis.pools import Pool, SerialPool, chunks
from distcheck.analysis.workers import shared_run, sharing
from distcheck.findings import Finding, Note
from distcheck.rules import activations, consistency, data, diff, gradients, init, loss, static, weights  # noqa: F401
from distcheck.rules.rankdata import RankData
from distcheck.rules.registry import RULES, Rule

__all__ = ["RULES", "Rule", "health_checks", "static_findings"]

_STATIC = ("frozen_by_accident", "bn_in_eval_mode", "dropout_keep_prob")


def health_checks(run: Run, config: dict[str, Any], pool: Optional[Pool] = None) -> list[Finding | Note]:
    """Every enabled per-rank rule on every readable rank (spread over ``pool`` by rank);
    equal findings (and notes) merged across ranks."""
    pool = pool or SerialPool()
    tasks = [(run.dirs, part, config) for part in chunks(run.ranks, pool.size)]
    with sharing(run):
        parts = pool.map(_judge_ranks, tasks)
    merged: dict[tuple, Finding | Note] = {}
    for part in parts:
        for f in part:
            key = (f.code, f.message) if isinstance(f, Note) else (f.code, f.step, f.params)
            old = merged.get(key)
            if old is None:
                merged[key] = f
            else:
                merged[key] = replace(old, ranks=tuple(sorted(set(old.ranks) | set(f.ranks))))
    return _across_ranks(list(merged.values()), run.ranks)


def _judge_ranks(task: tuple[list[str], list[int], dict[str, Any]]) -> list[Finding | Note]:
    dirs, ranks, config = task
    run = shared_run(dirs)
    settings = config.get("rules", {})
    disabled = set(settings.get("disable") or ())
    out: list[Finding | Note] = []
    with ProgressBar("health rules", len(ranks)) as bar:
        for rank in ranks:
            rank_data = RankData(run.readers[rank])
            for code, r in RULES.items():
                if not r.cross_rank and code not in disabled:
                    out.extend(r.check(rank_data, settings.get(code) or {}))
            bar.advance()
    return out


#: Rules on a series every rank has its own of (its minibatch losses, its gradients'
#: norm): one finding per code for the job, saying whether every rank saw it.
_TRENDS = ("loss_diverging", "loss_not_decreasing", "loss_zero", "grad_exploding")


def _across_ranks(results: list[Finding | Note], ranks: list[int]) -> list[Finding | Note]:
    """Merge each trend code's per-rank findings into the earliest, and compare the ranks:
    a trend on every rank has a job-wide cause; on a few, those ranks' data."""
    out: list[Finding | Note] = []
    trends: dict[str, list[Finding]] = {}
    for f in results:
        if isinstance(f, Finding) and f.code in _TRENDS:
            trends.setdefault(f.code, []).append(f)
        else:
            out.append(f)
    for code, found in trends.items():
        found.sort(key=lambda f: (f.step if f.step is not None else -1, f.ranks))
        first = found[0]
        seen = sorted({r for f in found for r in f.ranks})
        if len(ranks) < 2:
            out.append(first)
            continue
        others = [r for r in ranks if r not in seen]
        if not others:
            where = f" Every rank's series shows it (rank {first.ranks[0]} first): a job-wide cause."
        else:
            where = (f" Only rank(s) {', '.join(map(str, seen))} show it; the same series of rank(s) "
                     f"{', '.join(map(str, others))} at the same steps do not: look at the data those ranks read.")
        out.append(replace(first, ranks=tuple(seen), message=first.message + where))
    return out


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
