"""Training-health rules, and the documentation of every finding code.

Importing this package registers every rule in :data:`RULES`. :func:`health_checks`
runs the per-rank rules on each rank of a run and merges what ranks share.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from distcheck.analysis.progress_bar import ProgressBar
from distcheck.analysis.run import Run
from distcheck.findings import Finding, Note, rank_list
from distcheck.rules import activations, consistency, data, diff, gradients, init, loss, static, weights  # noqa: F401
from distcheck.rules.rankdata import RankData
from distcheck.rules.registry import RULES, Rule

__all__ = ["RULES", "Rule", "health_checks", "static_findings"]

_STATIC = ("frozen_by_accident", "bn_in_eval_mode", "dropout_keep_prob")


def health_checks(run: Run, config: dict[str, Any]) -> list[Finding | Note]:
    """Every enabled per-rank rule on every readable rank (on the run's shares, see
    :meth:`Run.on_shards`); equal findings (and notes) merged across ranks."""
    judged: list[tuple[int, Finding | Note]] = []
    recorded: dict[str, set[int]] = {}  # series -> the ranks that recorded it
    for part, series in run.on_shards(_judge_share, config):
        judged.extend(part)
        for name, ranks in series.items():
            recorded.setdefault(name, set()).update(ranks)
    judged.sort(key=lambda pair: pair[0])  # as one pass over the ranks in order would find them
    merged: dict[tuple, Finding | Note] = {}
    for _, f in judged:
        key = (f.code, f.message) if isinstance(f, Note) else (f.code, f.step, f.params)
        old = merged.get(key)
        if old is None:
            merged[key] = f
        else:
            merged[key] = replace(old, ranks=tuple(sorted(set(old.ranks) | set(f.ranks))))
    return _across_ranks(list(merged.values()), run.ranks, recorded)


def _judge_share(share: Run, config: dict[str, Any]
                 ) -> tuple[list[tuple[int, Finding | Note]], dict[str, list[int]]]:
    """The findings of the share's ranks, each with its rank, and which of them recorded
    each trend's series."""
    settings = config.get("rules", {})
    disabled = set(settings.get("disable") or ())
    out: list[tuple[int, Finding | Note]] = []
    series: dict[str, list[int]] = {"loss": [], "grad": []}
    ranks = sorted(share.readers)
    with ProgressBar("health rules", len(ranks)) as bar:
        for rank in ranks:
            rank_data = RankData(share.readers[rank])
            for code, r in RULES.items():
                if not r.cross_rank and code not in disabled:
                    out.extend((rank, f) for f in r.check(rank_data, settings.get(code) or {}))
            if (rank_data.loss_mask & (rank_data.steps > 0)).any():
                series["loss"].append(rank)
            if rank_data.grad_mask.any():
                series["grad"].append(rank)
            bar.advance()
    return out, series


#: Rules on a series every rank has its own of (its minibatch losses, its gradients'
#: norm), and that series: one finding per code for the job, saying whether every rank
#: that records the series saw it.
_TRENDS = {"loss_diverging": "loss", "loss_not_decreasing": "loss", "loss_zero": "loss", "grad_exploding": "grad"}
_SERIES = {"loss": "loss", "grad": "gradients"}


def _across_ranks(results: list[Finding | Note], all_ranks: list[int], recorded: dict[str, set[int]]
                  ) -> list[Finding | Note]:
    """Merge each trend code's per-rank findings into the earliest, and compare the ranks
    that record its series (a non-last pipeline stage records no loss; a rank whose
    gradient copy was refused, no gradients): a trend on every one has a job-wide cause;
    on a few, those ranks' data."""
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
        series = _TRENDS[code]
        ranks = sorted(recorded.get(series, set()) | set(seen))
        if len(ranks) < 2:
            out.append(first)
            continue
        shown, recording = set(seen), set(ranks)
        others = [r for r in ranks if r not in shown]
        silent = [r for r in all_ranks if r not in recording]
        if not others and not silent:
            where = f" Every rank's series shows it (rank {first.ranks[0]} first): a job-wide cause."
        elif not others:
            where = (f" Every rank that records its {_SERIES[series]} shows it (rank {first.ranks[0]} first; rank(s) "
                     f"{rank_list(silent)} record none): a job-wide cause.")
        else:
            where = (f" Only rank(s) {rank_list(seen)} show it; the same series of rank(s) "
                     f"{rank_list(others)} at the same steps do not: look at the data those ranks read."
                     + (f" (Rank(s) {rank_list(silent)} record no {_SERIES[series]}.)" if silent else ""))
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
