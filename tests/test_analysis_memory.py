"""The analysis keeps a few kilobytes per rank, whatever the number of ranks.

Measured with tracemalloc on small synthetic runs, so that a design that keeps Python
objects per rank (a reader, its parameter table, its series) shows at once, without
writing ten thousand files.
"""
import gc
import os
import shutil
import tracemalloc
from types import SimpleNamespace

import h5py
import numpy as np

from distcheck.analysis.divergence import _vote_classes
from distcheck.analysis.run import load_run
from distcheck.analysis.structure import Comparison, data_parallel_peers
from distcheck.store import schema
from distcheck.store.schema import ParamInfo
from distcheck.store.writer import DumpWriter
from distcheck.vote import outlier_mask

STEPS, PARAMS = 10, 30


def _write_run(path, ranks: int) -> None:
    """``ranks`` dumps of one job: one written, the others copies renumbered."""
    os.makedirs(path)
    first = os.path.join(path, schema.file_name(0))
    infos = [ParamInfo(f"block{i}.dense.weight", (16, 16), "float32", True, True) for i in range(PARAMS)]
    writer = DumpWriter(first, infos, {"rank": 0, "world_size": ranks, "meta": '{"parallel_mode": "data_parallel"}'})
    digests = np.arange(PARAMS * 2, dtype=np.uint64).reshape(PARAMS, 2)
    stats = np.ones((PARAMS, len(schema.STAT_COLUMNS)), np.float32)
    for step in range(STEPS):
        writer.append(step, {schema.digests_path("param"): digests, schema.stats_path("param"): stats,
                             schema.digests_path("grad"): digests, schema.stats_path("grad"): stats,
                             schema.LOSS: 1.0, schema.HAS: schema.HAS_PARAMS | schema.HAS_LOSS})
    writer.close()
    for rank in range(1, ranks):
        other = os.path.join(path, schema.file_name(rank))
        shutil.copyfile(first, other)
        with h5py.File(other, "r+") as f:
            f.attrs["rank"] = rank


def _kept_per_rank(path) -> float:
    """Bytes the loaded run holds, per rank."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run = load_run([str(path)], screen_files=False)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(run.readers) == len(os.listdir(path)) and not run.errors
    run.close()
    return held / len(run.readers)


def test_a_loaded_run_keeps_a_few_kilobytes_per_rank(tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    _write_run(small, 100)
    _write_run(large, 400)
    per_rank_small, per_rank_large = _kept_per_rank(small), _kept_per_rank(large)
    # 10 steps of small series and a 30-parameter table: the table is shared by every
    # rank, the series are a few hundred bytes; a reader object per rank was ~10 KB.
    assert per_rank_large < 3000, per_rank_large
    print(f"per rank: {per_rank_small:.0f} B of 100, {per_rank_large:.0f} B of 400")
    # What grows with the ranks is the per-rank part only (the shared part divides away).
    grown = (per_rank_large * 400 - per_rank_small * 100) / 300
    assert grown < 3000, grown


def _share(share, _):
    """What a worker holds: its ranks, and the bytes of their columns."""
    return sorted(share.readers), share.readers.kept_bytes()


def test_over_workers_each_holds_its_share_and_the_caller_an_index_without_series(tmp_path):
    from distcheck.analysis.pools import ProcessPool

    _write_run(tmp_path / "run", 60)
    whole = load_run([str(tmp_path / "run")])
    pool = ProcessPool(3)
    try:
        run = load_run([str(tmp_path / "run")], pool=pool)
        shares = run.on_shards(_share)
        assert [ranks for ranks, _ in shares] == [list(range(i, 60, 3)) for i in range(3)]
        # The series are in the workers, a third each; here, only how each rank ended and its steps.
        assert sum(held for _, held in shares) == whole.readers.kept_bytes()
        assert run.readers.kept_bytes() < whole.readers.kept_bytes() / 3
        run.close()
    finally:
        pool.close()
        whole.close()


def test_data_parallel_peers_of_thousands_of_ranks_need_no_set_per_rank():
    ranks = 4000
    run = SimpleNamespace(readers={r: None for r in range(ranks)})
    found = [Comparison(tuple(range(ranks)))]
    tracemalloc.start()
    try:
        peers = data_parallel_peers(run, found)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peers == [list(range(ranks))]
    assert peak < 16 << 20, peak  # a set of peers per rank: 4000 x 4000 entries, over 500 MB


def test_a_vote_by_classes_of_equal_ranks_is_the_vote_of_every_rank():
    rng = np.random.default_rng(7)
    for _ in range(200):
        classes = int(rng.integers(1, 6))
        counts = rng.integers(1, 5, classes)
        digests = rng.integers(0, 3, (classes, 3, 4, 2)).astype(np.uint64)  # few values: ties and majorities
        present = rng.random((classes, 3, 4)) < 0.85
        outliers, majority = _vote_classes(digests, present, counts)
        every = np.repeat(np.arange(classes), counts)
        want_outliers, want_majority = outlier_mask(digests[every], present[every])
        assert np.array_equal(outliers[every], want_outliers)
        assert np.array_equal(majority, want_majority)
