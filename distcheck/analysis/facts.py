"""What one pass over each share of a run learns of its ranks, for the checks across
ranks: how each rank ended, where its loss and its input batches first held NaN or Inf,
and the steps of its training calls. Each rank's reader is built once for all of it: a
run of ten thousand ranks is walked once, not once per check."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from distcheck.analysis.liveness import RankEnd, rank_end
from distcheck.analysis.run import Run
from distcheck.store import schema


@dataclass
class Facts:
    ends: dict[int, RankEnd] = field(default_factory=dict)  # in the order of the run's ranks
    #: series ("loss", "inputs") -> rank -> (its first non-finite step, the value there)
    first_bad: dict[str, dict[int, tuple[int, float]]] = field(default_factory=dict)
    #: training call (segment) -> (first, last) step any rank recorded in it
    calls: dict[int, tuple[int, int]] = field(default_factory=dict)

    def add(self, other: "Facts") -> None:
        self.ends.update(other.ends)
        for series, firsts in other.first_bad.items():
            self.first_bad.setdefault(series, {}).update(firsts)
        for segment, (lo, hi) in other.calls.items():
            old_lo, old_hi = self.calls.get(segment, (lo, hi))
            self.calls[segment] = (min(old_lo, lo), max(old_hi, hi))


def gather_facts(run: Run) -> Facts:
    """The facts of every rank of ``run``, learnt where each share is held."""
    facts = Facts()
    for part in run.on_shards(_facts_of_share):
        facts.add(part)
    facts.ends = {r: facts.ends[r] for r in run.readers}
    return facts


def _facts_of_share(share: Run, _) -> Facts:
    facts = Facts(first_bad={series: {} for series in _BAD_ROWS})
    for rank, reader in share.readers.items():
        facts.ends[rank] = rank_end(reader)
        for series, bad_rows in _BAD_ROWS.items():
            mask, value = bad_rows(reader)
            bad = np.flatnonzero(mask)
            if len(bad):
                facts.first_bad[series][rank] = (int(reader.steps[bad[0]]), float(value[bad[0]]))
        if reader.n_steps:
            segments, steps = reader.segments(), reader.steps
            mine = Facts()
            for segment in np.unique(segments):
                inside = steps[segments == segment]
                mine.calls[int(segment)] = (int(inside[0]), int(inside[-1]))
            facts.add(mine)
    return facts


def _bad_losses(reader) -> tuple[np.ndarray, np.ndarray]:
    return ((reader.has() & schema.HAS_LOSS) != 0) & ~np.isfinite(reader.loss()), reader.loss()


def _bad_inputs(reader) -> tuple[np.ndarray, np.ndarray]:
    counts = reader.input_counts()[:, :2].sum(axis=1)
    return ((reader.has() & schema.HAS_BATCH) != 0) & (counts > 0), counts


#: Per series, a rank's non-finite rows (a boolean row mask) and a value per row.
_BAD_ROWS = {"loss": _bad_losses, "inputs": _bad_inputs}
