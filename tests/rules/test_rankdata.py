"""What RankData reads of a dump, and its shared derivations, against plain numpy."""
import collections
import warnings

import numpy as np

from distcheck.analysis.run import load_run
from distcheck.config import load_config
from distcheck.rules import RULES
from distcheck.rules.rankdata import RankData, row_nanmedians
from rules.series import healthy_batch, write


def test_every_rule_together_reads_each_series_of_a_rank_once(tmp_path):
    write(str(tmp_path), batch=lambda s: [healthy_batch(s)[0], np.full(32, s % 4, np.int32)])
    run = load_run([str(tmp_path)])
    try:
        reader = run.readers[0]
        reads = collections.Counter()
        for name in ("stats", "digests", "input_stats", "label_stats", "label_counts", "skipped", "act_stats"):
            def counted(*args, _read=getattr(reader, name), _name=name):
                reads[(_name, *args[:1])] += 1
                return _read(*args)
            setattr(reader, name, counted)
        rank = RankData(reader)
        settings = load_config()["rules"]
        for code, rule in RULES.items():
            if not rule.cross_rank:
                rule.check(rank, settings.get(code) or {})
    finally:
        run.close()
    # one pass over the parameters' statistics serves step 0 and the update ratios; a short
    # run's digests are read whole; no activation taps, so their series is not read
    assert reads == {("stats", "param"): 1, ("stats", "grad"): 1, ("digests", "param"): 1, ("input_stats",): 1,
                     ("label_stats",): 1, ("label_counts",): 1, ("skipped",): 1}


def test_row_medians_are_numpys_nanmedian():
    rng = np.random.default_rng(7)
    for width in (1, 2, 3, 20, 601):
        rows = np.round(rng.lognormal(size=(50, width)), 1)  # ties
        rows[rng.random(rows.shape) < 0.3] = np.nan
        rows[0] = np.nan  # an all-NaN row
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the all-NaN row
            expected = np.nanmedian(rows, axis=1)
        assert np.array_equal(row_nanmedians(rows), expected, equal_nan=True)
