import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from distcheck.digest import digest
from distcheck.recording import ParamInfo, ProbeOptions, Recorder
from distcheck.store import schema
from distcheck.store.reader import DumpError, DumpReader
from distcheck.world import SingleWorld

PARAMS = [ParamInfo("w", (3, 2), "float32", True, True), ParamInfo("n", (), "int64", False, False)]


def _write(path, steps=100, every=1, full_steps=()):
    rec = Recorder.open(str(path), SingleWorld(), PARAMS, {"parallel_mode": "stand_alone"},
                        ProbeOptions(every=every, full_steps=full_steps))
    arrays = []
    for step in range(steps + 1):
        w = np.full((3, 2), step, np.float32)
        n = np.array(step, np.int64)
        arrays.append((w, n))
        rec.record(step, [w, n], None if step == 0 else [w * 2, None], loss=1.0 / (step + 1),
                   batch=[np.arange(step, step + 3)])
    rec.close()
    return arrays


def test_round_trip_across_block_boundaries(tmp_path):
    arrays = _write(tmp_path, steps=130)
    with DumpReader(str(tmp_path / "rank_00000.h5")) as r:
        assert r.finished and r.rank == 0 and r.world_size == 1
        assert r.steps.tolist() == list(range(131))
        assert [p.name for p in r.params] == ["w", "n"] and r.params[0].shape == (3, 2)
        d = r.digests("param", 64, 66)
        assert tuple(d[1, 0]) == digest(arrays[65][0])
        assert tuple(r.digests("grad", 7, 8)[0, 0]) == digest(arrays[7][0] * 2)
        assert r.stats("param", 5, 6)[0, 0, 1] == 5.0  # max
        assert np.isnan(r.stats("grad", 0, 1)).all()  # no grads at step 0
        np.testing.assert_allclose(r.loss()[:3], [1, 0.5, 1 / 3])
        assert len(r.heartbeats()) >= 1


def test_every_k_records_step_zero_and_multiples(tmp_path):
    _write(tmp_path, steps=25, every=10)
    with DumpReader(str(tmp_path / "rank_00000.h5")) as r:
        assert r.steps.tolist() == [0, 10, 20]


def test_full_tensors_at_named_steps(tmp_path):
    arrays = _write(tmp_path, steps=5, full_steps=(3,))
    with DumpReader(str(tmp_path / "rank_00000.h5")) as r:
        np.testing.assert_array_equal(r.full("param", 3, 0), arrays[3][0])
        assert r.full("param", 2, 0) is None


@pytest.mark.parametrize("content,problem", [
    (b"", "empty file"),
    (b"garbage" * 100, "not a readable HDF5 file"),
])
def test_unreadable_files_give_dump_errors(tmp_path, content, problem):
    path = tmp_path / "rank_00000.h5"
    path.write_bytes(content)
    with pytest.raises(DumpError) as err:
        DumpReader(str(path))
    assert problem in str(err.value) and str(path) in str(err.value)


def test_truncated_file_is_refused_or_cut_where_its_data_ends(tmp_path):
    _write(tmp_path, steps=200)
    path = tmp_path / "rank_00000.h5"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    try:
        reader = DumpReader(str(path))
    except DumpError as err:
        assert "rank_00000.h5" in str(err)
        return
    with reader:  # HDF5 reads chunks past the end as zeros: the rows from there on are left out
        assert reader.steps.tolist() == list(range(reader.n_steps)) and reader.n_steps < 201
        assert "rank_00000.h5" in reader.problems[0]


def test_foreign_hdf5_file_is_refused(tmp_path):
    path = tmp_path / "rank_00000.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(DumpError, match="not a distcheck dump"):
        DumpReader(str(path))


def test_newer_format_asks_for_an_upgrade(tmp_path):
    _write(tmp_path, steps=1)
    path = tmp_path / "rank_00000.h5"
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(DumpError, match="upgrade distcheck"):
        DumpReader(str(path))


KILLED = textwrap.dedent("""
    import os, signal, sys, time
    import numpy as np
    from distcheck.recording import ParamInfo, ProbeOptions, Recorder
    from distcheck.world import SingleWorld
    rec = Recorder.open(sys.argv[1], SingleWorld(), [ParamInfo("w", (256,), "float32", True, True)],
                        {}, ProbeOptions(flush_seconds=0.0))
    for step in range(1000):
        rec.record(step, [np.full(256, step, np.float32)], None, loss=float(step))
        if step == 77:
            os.kill(os.getpid(), signal.SIGKILL)
""")


def test_sigkilled_writer_leaves_a_readable_file_with_every_flushed_step(tmp_path):
    proc = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    with DumpReader(str(tmp_path / "rank_00000.h5")) as r:
        assert r.steps.tolist() == list(range(78))
        assert r.status_name == "running" and not r.finished
        assert r.loss()[77] == 77.0


def test_one_child_validates_every_file_and_a_hang_or_crash_costs_only_that_file(tmp_path, monkeypatch):
    import os
    import time

    from distcheck.store import reader as reader_module
    from distcheck.store import screening as screening_module
    from synthetic import make_run

    make_run(str(tmp_path), "none", size=4)
    validate = reader_module.DumpReader._validate

    def damaged(self):
        if self.path.endswith("rank_00001.h5"):
            time.sleep(60)  # as HDF5 does on some damage: no exception, no return
        if self.path.endswith("rank_00002.h5"):
            os._exit(1)  # as a crash in HDF5 would end it
        validate(self)

    monkeypatch.setattr(reader_module.DumpReader, "_validate", damaged)
    monkeypatch.setattr(screening_module, "OPEN_TIMEOUT", 0.5)
    paths = [str(tmp_path / f"rank_0000{r}.h5") for r in range(4)]
    start = time.monotonic()
    results = []
    with screening_module.Screening(paths, reader_module.validated_state) as screening:
        for i in range(4):
            try:
                results.append(reader_module.DumpReader.validated(paths[i], screening.state(i)).rank)
            except DumpError as exc:
                results.append(exc.problem)
    assert results == [0, "opening the file did not finish in 0.5 s", "opening the file crashed the reader", 3]
    assert time.monotonic() - start < 5


_SERIES = (schema.HAS, schema.LOSS, schema.ROLLUP, schema.SEGMENT, schema.BATCH_DIGEST, schema.TIME)


def _reader_state(reader):
    series = {path: reader.series(path) for path in _SERIES}
    return (reader.rank, reader.params, reader.steps.tolist(), reader.status, reader.attr("hostname"),
            reader.attr("pid"), reader.last_heartbeat(), reader.stacks(), reader.last_alive(),
            {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in series.items()})


def test_workers_keep_shares_of_the_files_and_hand_over_an_index_of_what_one_process_learns(tmp_path, monkeypatch):
    import os
    import time

    from distcheck.analysis.run import load_run
    from distcheck.analysis.pools import ProcessPool
    from distcheck.store import reader as reader_module
    from distcheck.store import screening as screening_module
    from synthetic import make_run

    make_run(str(tmp_path), "none", size=5)
    alone = load_run([str(tmp_path)])
    expected = {r: _reader_state(reader) for r, reader in alone.readers.items()}
    alone.close()
    pool = ProcessPool(2)
    shared = load_run([str(tmp_path)], pool=pool)
    assert not shared.readers._series  # the series stay in the workers; a reader here reads them from its file
    assert {r: _reader_state(reader) for r, reader in shared.readers.items()} == expected
    shared.close()
    pool.close()

    validate = reader_module.DumpReader._validate

    def damaged(self):
        if self.path.endswith("rank_00001.h5"):
            time.sleep(60)  # a hang in one worker's share
        if self.path.endswith("rank_00002.h5"):
            os._exit(1)  # a crash in the other's
        validate(self)

    monkeypatch.setattr(reader_module.DumpReader, "_validate", damaged)
    monkeypatch.setattr(screening_module, "OPEN_TIMEOUT", 0.5)
    pool = ProcessPool(2)
    run = load_run([str(tmp_path)], pool=pool)
    assert run.ranks == [0, 3, 4]
    problems = {e.rank: e.message.split(": ", 1)[1].split(" (")[0] for e in run.errors}
    assert problems == {1: "opening the file did not finish in 0.5 s", 2: "opening the file crashed the reader"}
    run.close()
    pool.close()


def test_a_bounded_number_of_files_stay_open_and_reopen_on_demand(tmp_path, monkeypatch):
    from distcheck.store import open_files
    from distcheck.store import reader as reader_module
    from synthetic import make_run

    make_run(str(tmp_path), "nudge", size=3)
    monkeypatch.setattr(open_files.OPEN_FILES, "limit", 2)
    readers = [reader_module.DumpReader(str(tmp_path / f"rank_0000{r}.h5")) for r in range(3)]
    try:
        for _ in range(2):
            for r in readers:
                assert r.digests("param").shape == (13, 4, 2)
                assert sum(x._h5 is not None for x in readers) <= 2
        assert (readers[2].digests("param", 5, 6) != readers[0].digests("param", 5, 6)).any()  # the nudge
    finally:
        for r in readers:
            r.close()


def test_every_dataset_of_a_real_dump_is_documented(tmp_path):
    import os
    import re

    from synthetic import make_run

    make_run(str(tmp_path), "nudge", full_steps=(2,))
    doc = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "format.md")).read()
    documented = set(re.findall(r"`([a-z_]+(?:/[a-z_<>]+)*)`", doc))
    found = []
    with h5py.File(tmp_path / "rank_00000.h5", "r") as f:
        f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
        attributes = list(f.attrs)
    assert len(found) > 30
    missing = [name for name in found if re.sub(r"/\d+$", "/<p>", name) not in documented]
    assert missing == [], f"datasets not in docs/format.md: {missing}"
    assert [a for a in attributes if a not in documented] == []
    assert "(N, P, 7)" in doc  # the statistic columns: six of the tensor, and the update norm


def test_counts_are_exact_integers_beyond_float32(tmp_path):
    n = 2**24 + 1  # float32 holds 16777216 here: one NaN would be lost
    info = [ParamInfo("big", (n,), "float32", True, True)]
    rec = Recorder.open(str(tmp_path), SingleWorld(), info, {"parallel_mode": "stand_alone"}, ProbeOptions())
    weights = np.zeros(n, np.float32)
    grads = np.full(n, np.nan, np.float32)
    inputs = np.full(n, np.inf, np.float32)
    rec.record(0, [weights])
    rec.record(1, [weights], [grads], batch=[inputs])
    rec.close()
    with DumpReader(str(tmp_path / "rank_00000.h5")) as r:
        assert r.counts("grad")[1, 0].tolist() == [n, 0]
        assert r.counts("param")[1, 0].tolist() == [0, 0]
        assert r.input_counts()[1].tolist() == [0, n, n]
        assert r.stats("grad")[1, 0, 4] == 2**24  # what the float32 statistics alone say


def test_dumps_written_before_integer_counts_still_read(tmp_path):
    _write(tmp_path, steps=3)
    path = str(tmp_path / "rank_00000.h5")
    with h5py.File(path, "a") as f:
        for name in ("param/counts", "grad/counts", "steps/input_counts"):
            del f[name]
    with DumpReader(path) as r:
        assert r.n_steps == 4 and r.counts("param").shape == (4, 2, 2)
        assert r.counts("param").sum() == 0 and r.input_counts().shape == (4, 3)


def _outcome(call):
    """What a read gives (its type, dtype, shape and values), or the error it raises."""
    try:
        value = call()
    except Exception as exc:
        return type(exc).__name__, str(exc)
    array = np.asarray(value)
    return type(value).__name__, array.dtype.str, array.shape, array.tolist()


def test_validation_reads_answer_as_h5py_high_level_objects_do(tmp_path):
    """Validation reads through h5py's low-level API: its answers, errors included, must be
    those of the high-level calls the reader made before."""
    from distcheck.store.reader import _attr, _Datasets

    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as f:
        f["big_endian"] = np.arange(6, dtype=">f8").reshape(3, 2)
        f["flags"] = np.array([True, False, True])
        f.create_dataset("names", data=["a", "bé"], dtype=h5py.string_dtype())
        f["fixed"] = np.array([b"xy", b"z"], dtype="S4")
        f["scalar"] = np.int64(3)
        f.create_dataset("no_rows", shape=(0, 4), maxshape=(None, 4), dtype="f4")
        f["pairs"] = np.zeros(2, [("a", "i4"), ("b", "f8")])
        f.create_group("group")
        f["dangling"] = h5py.SoftLink("/nowhere")
        f.attrs.update({"text": "distcheck.dump", "bytes": np.bytes_(b"x"), "number": 7, "real": 2.5,
                        "array": np.arange(3), "empty": h5py.Empty("f8")})
    with h5py.File(path, "r") as f:
        datasets = _Datasets(f)
        for name in ("big_endian", "flags", "names", "fixed", "scalar", "no_rows", "pairs", "group", "dangling",
                     "missing"):
            assert datasets.has(name) == (name in f), name
            assert _outcome(lambda: datasets.shape(name)) == _outcome(lambda: h5py.h5d.open(f.id, name.encode()).shape)
            assert _outcome(lambda: datasets.high_level_shape(name)) == _outcome(lambda: f[name].shape), name
            for selection in ((), 0, 2, -1, slice(0, 2), slice(1, 1), slice(0, 9), np.array([0, 1])):
                assert _outcome(lambda: datasets.read(name, selection)) == _outcome(lambda: f[name][selection]), \
                    (name, selection)
        for name in ("text", "bytes", "number", "real", "array", "empty", "missing"):
            assert _outcome(lambda: _attr(f["/"], name, "default")) == _outcome(lambda: f.attrs.get(name, "default"))
            assert _outcome(lambda: _attr(f["/"], name)) == _outcome(lambda: f.attrs[name]), name
