"""The recorder's life cycle: flushing on time, signals, restarted step counters,
progress that survives SIGKILL, and ranks that agree their probes work."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from distcheck.recording import ParamInfo, ProbeOptions, Recorder, rendezvous
from distcheck.recording.step_numbering import StepNumbering
from distcheck.store.progress_file import read_progress
from distcheck.store.reader import DumpReader
from distcheck.store.schema import Phase, Status
from distcheck.world import SingleWorld

PARAMS = [ParamInfo("w", (3, 2), "float32", True, True)]


def _child(code: str, tmp_path, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python (signals and exits must not touch pytest)."""
    prelude = textwrap.dedent(f"""
        import os, signal, sys, time
        import numpy as np
        from distcheck.recording import ParamInfo, ProbeOptions, Recorder
        from distcheck.world import SingleWorld
        RUN = {str(tmp_path)!r}
        PARAMS = [ParamInfo("w", (3, 2), "float32", True, True)]
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


def _steps_on_disk(path: str) -> list:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import h5py
        with h5py.File({path!r}, "r", swmr=True) as f:
            print(",".join(str(int(s)) for s in f["steps/step"][()]))
    """)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [int(s) for s in out.stdout.strip().split(",") if s]


def test_rows_reach_the_disk_within_flush_seconds_without_further_steps(tmp_path):
    rec = Recorder.open(str(tmp_path), SingleWorld(), PARAMS, {}, ProbeOptions(flush_seconds=0.3))
    for step in range(3):
        rec.record(step, [np.full((3, 2), step, np.float32)])
    path = str(tmp_path / "rank_00000.h5")
    time.sleep(1.0)  # no more records: only the heartbeat thread can write them now
    assert _steps_on_disk(path) == [0, 1, 2]
    rec.close()


def test_sigterm_during_append_closes_the_dump_without_deadlock(tmp_path):
    # The signal arrives while the training thread holds the writer's lock; the handler
    # takes no lock, the signal thread closes the dump once the lock is free, and the
    # process ends by SIGTERM as it would without distcheck.
    result = _child("""
        rec = Recorder.open(RUN, SingleWorld(), PARAMS, {}, ProbeOptions())
        for step in range(5):
            rec.step_done(step, update=step > 0)
            rec.record(step, [np.full((3, 2), step, np.float32)])
        writer = rec.writer
        with writer._lock:  # as inside append
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)
        time.sleep(30)
        print("not terminated")
    """, tmp_path)
    assert result.returncode == -signal.SIGTERM, result.stdout + result.stderr
    with DumpReader(str(tmp_path / "rank_00000.h5")) as r:
        assert r.status == Status.TERMINATED and r.status_signal == signal.SIGTERM
        assert r.steps.tolist() == [0, 1, 2, 3, 4]
        assert "after step 4" in r.status_message


def test_a_script_sigterm_handler_still_runs_and_the_dump_closes_at_exit(tmp_path):
    result = _child("""
        signal.signal(signal.SIGTERM, lambda s, f: sys.exit(7))
        rec = Recorder.open(RUN, SingleWorld(), PARAMS, {}, ProbeOptions())
        rec.record(0, [np.zeros((3, 2), np.float32)])
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    """, tmp_path)
    assert result.returncode == 7, result.stderr
    with DumpReader(str(tmp_path / "rank_00000.h5")) as r:
        assert r.status == Status.TERMINATED and r.steps.tolist() == [0]


def test_an_uncaught_exception_is_the_abort_message(tmp_path):
    result = _child("""
        rec = Recorder.open(RUN, SingleWorld(), PARAMS, {}, ProbeOptions())
        rec.record(0, [np.zeros((3, 2), np.float32)])
        raise RuntimeError("AllReduce failed")
    """, tmp_path)
    assert result.returncode == 1
    with DumpReader(str(tmp_path / "rank_00000.h5")) as r:
        assert r.status == Status.ABORTED and "RuntimeError: AllReduce failed" in r.status_message


def test_progress_survives_sigkill(tmp_path):
    result = _child("""
        rec = Recorder.open(RUN, SingleWorld(), PARAMS, {}, ProbeOptions(flush_seconds=60))
        for step in range(1, 40):
            rec.step_done(step)
            rec.record(step, [np.full((3, 2), step, np.float32)])
        rec.enter(__import__("distcheck.store.schema", fromlist=["Phase"]).Phase.CALLBACKS)
        os.kill(os.getpid(), signal.SIGKILL)
    """, tmp_path)
    assert result.returncode == -signal.SIGKILL
    record = read_progress(str(tmp_path), 0)
    assert (record.step, record.phase) == (39, Phase.CALLBACKS)
    with DumpReader(str(tmp_path / "rank_00000.h5")) as r:
        assert r.status == Status.RUNNING and r.n_steps < 39  # rows since the last flush are lost


def test_restarted_step_counters_continue_as_new_segments():
    n = StepNumbering()
    assert [n.run_step(0, update=False), n.run_step(1), n.run_step(2), n.run_step(3)] == [0, 1, 2, 3]
    assert [n.run_step(1), n.run_step(2)] == [4, 5] and n.segment == 1  # a loop counting from 1 again
    n.begin_segment()  # a second training call: its state before the first update is step 5
    assert [n.run_step(0, update=False), n.run_step(1), n.run_step(2)] == [5, 6, 7] and n.segment == 2


def test_a_loop_that_counts_its_first_update_as_zero():
    n = StepNumbering()
    assert [n.run_step(0, update=False), n.run_step(0), n.run_step(1), n.run_step(2)] == [0, 1, 2, 3]
    assert n.segment == 0


def test_repeated_step_labels_never_make_a_file_unreadable(tmp_path):
    rec = Recorder.open(str(tmp_path), SingleWorld(), PARAMS, {}, ProbeOptions())
    labels = [0, 1, 2, 3, 1, 2, 3]  # an epoch loop whose counter restarts
    for i, label in enumerate(labels):
        step = rec.step_done(label, update=i > 0)
        rec.record(step, [np.full((3, 2), i, np.float32)])
    again = Recorder.open(str(tmp_path), SingleWorld(), PARAMS, {}, ProbeOptions())  # a second training call
    assert again is rec
    for i, label in enumerate([0, 1, 2]):
        rec.record(rec.step_done(label, update=i > 0), [np.full((3, 2), 10 + i, np.float32)])
    rec.close()
    with DumpReader(str(tmp_path / "rank_00000.h5")) as r:
        assert r.steps.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8]  # the second call's step 0 is step 6
        assert r.segments().tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2]
        assert not r.problems


def test_a_rank_whose_probe_failed_is_seen_by_the_others(tmp_path):
    rendezvous.announce(str(tmp_path), ok=True)
    ok, why = rendezvous.all_ready(str(tmp_path), expected=1, timeout=1)
    assert ok
    rendezvous.announce(str(tmp_path), ok=False, why="cannot set up communication")
    ok, why = rendezvous.all_ready(str(tmp_path), expected=2, timeout=1)
    assert not ok and "cannot set up communication" in why


def test_a_rank_that_never_arrives_ends_the_wait(tmp_path):
    rendezvous.announce(str(tmp_path), ok=True)
    t0 = time.monotonic()
    ok, why = rendezvous.all_ready(str(tmp_path), expected=3, timeout=0.5)
    assert not ok and "1 of 3" in why and time.monotonic() - t0 < 5


@pytest.mark.parametrize("fault", ["open", "record@2", "flush"])
def test_planted_failures_stop_recording_and_say_why(tmp_path, fault, monkeypatch):
    monkeypatch.setenv("DISTCHECK_FAULTS", fault)
    rec = Recorder.open(str(tmp_path), SingleWorld(), PARAMS, {}, ProbeOptions(flush_seconds=0.2))
    for step in range(5):
        rec.record(step, [np.full((3, 2), step, np.float32)])
        time.sleep(0.15)
    rec.close()
    path = tmp_path / "rank_00000.h5"
    if fault == "open":
        assert not path.exists() and not rec.enabled
        return
    with DumpReader(str(path)) as r:
        assert r.status == Status.RECORDING_STOPPED and "planted fault" in r.status_message
        if fault == "record@2":
            assert r.steps.tolist() == [0, 1]


def test_strict_makes_probe_errors_fatal(tmp_path, monkeypatch):
    from distcheck.recording import ProbeError

    monkeypatch.setenv("DISTCHECK_FAULTS", "record@1")
    rec = Recorder.open(str(tmp_path), SingleWorld(), PARAMS, {}, ProbeOptions(strict=True))
    rec.record(0, [np.zeros((3, 2), np.float32)])
    with pytest.raises(ProbeError, match="planted fault"):
        rec.record(1, [np.zeros((3, 2), np.float32)])


def test_half_precision_parameters_get_update_norms(tmp_path):
    params = [ParamInfo("h", (4,), "float16", True, True), ParamInfo("b", (4,), "bfloat16", True, True)]
    rec = Recorder.open(str(tmp_path), SingleWorld(), params, {}, ProbeOptions())
    values = [np.array([1, 2, 3, 4], np.float16), np.array([1, 2, 3, 4], np.float32)]
    for step in range(3):
        h = (values[0] + np.float16(0.5) * step).astype(np.float16)
        b = ((values[1] + 0.5 * step).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)  # bf16 bits
        rec.record(step, [h, b])
    rec.close()
    with DumpReader(str(tmp_path / "rank_00000.h5")) as r:
        delta = r.stats("param")[:, :, -1]
    assert np.isnan(delta[0]).all()
    np.testing.assert_allclose(delta[1:], 1.0)  # each step moves 4 values by 0.5: L2 = 1


def test_labels_are_never_token_ids_or_masks():
    from distcheck.recording.summaries import labels_of

    ids = np.zeros((4, 16), np.int32)  # (N, L) token ids
    mask = np.ones((4, 16), np.int32)  # (N, L) attention mask
    y = np.array([0, 1, 2, 3], np.int32)
    assert labels_of([ids, mask, y]) is y
    assert labels_of([ids, mask]) is None  # no labels rather than a mask
    column = y.reshape(4, 1)
    assert labels_of([ids, column]) is column
    assert labels_of([ids, mask, y], "0") is ids and labels_of([ids, mask, y], "none") is None


def test_a_second_call_whose_update_count_goes_on_keeps_its_numbers():
    n = StepNumbering()
    assert [n.run_step(0, update=False), n.run_step(1), n.run_step(2)] == [0, 1, 2]
    n.begin_segment()  # the same Model trained again: its capture's update count continues
    assert [n.run_step(2, update=False), n.run_step(3), n.run_step(4)] == [2, 3, 4] and n.segment == 1


def test_update_norms_from_views_of_live_memory(tmp_path):
    # On CPU the probe hands over views of the parameters, which the next update changes in place.
    params = [ParamInfo("w", (1000,), "float32", True, True), ParamInfo("d", (3,), "float64", True, True)]
    rec = Recorder.open(str(tmp_path), SingleWorld(), params, {}, ProbeOptions())
    live = [np.zeros(1000, np.float32), np.zeros(3, np.float64)]
    for step in range(4):
        rec.record(step, live)
        live[0] += np.float32(0.1) * (step + 1)  # in place, as an optimizer does
        live[1] += 1.0
    rec.close()
    with DumpReader(str(tmp_path / "rank_00000.h5")) as r:
        delta = r.stats("param")[:, :, -1]
    np.testing.assert_allclose(delta[1:, 0], [0.1 * s * np.sqrt(1000) for s in (1, 2, 3)], rtol=1e-5)
    np.testing.assert_allclose(delta[1:, 1], np.sqrt(3))


@pytest.mark.parametrize("kernel", [True, False])
def test_large_parameters_take_turns_at_having_their_update_measured(kernel, monkeypatch):
    from distcheck.recording import summaries, update_norms

    if not kernel:
        _numpy_path(monkeypatch)
    mib = update_norms.TURN_BYTES // 4  # float32 elements in 1 MiB
    sizes = (3 * mib, 2 * mib, mib, mib, 10)  # four large parameters, dealt into 3 turns, and a small one
    infos = [ParamInfo(f"p{i}", (n,), "float32", True, True) for i, n in enumerate(sizes)]
    live = [np.zeros(n, np.float32) for n in sizes]  # views of live memory, updated in place
    previous = update_norms.Previous(turns=3)
    measured = []
    for row in range(8):
        _, stat_rows = summaries.summarise(infos, live, "param", previous=previous)
        measured.append(stat_rows[:, -1])
        for i, a in enumerate(live):
            a += np.float32(i + 1)  # parameter i moves by i + 1 per element
    expected_norm = [(i + 1) * np.sqrt(n) for i, n in enumerate(sizes)]
    turn = {0: 0, 1: 1, 2: 2, 3: 2}  # the largest first, each to the lightest group
    for row, norms in enumerate(measured):
        for i, norm in enumerate(norms):
            due = row > 0 and (i == 4 or turn[i] == row % 3)
            if due:
                assert norm == pytest.approx(expected_norm[i], rel=1e-5), (row, i)
            else:
                assert np.isnan(norm), (row, i)
    kept = sum(b.nbytes for i, b in previous._buffer.items() if i != 4)
    assert kept == sum(4 * n for n in sizes[:4])  # views, one per parameter ...
    arena = {b.base.ctypes.data if b.base is not None else None for i, b in previous._buffer.items() if i != 4}
    assert len(arena) == 1 and previous._buffer[0].base.nbytes == 3 * update_norms.TURN_BYTES  # ... into one buffer


def test_update_turns_start_again_when_the_parameters_change():
    from distcheck.recording import summaries, update_norms

    infos = [ParamInfo("w", (update_norms.TURN_BYTES,), "float32", True, True)]
    previous = update_norms.Previous(turns=2)
    norms = []
    for shape in ((update_norms.TURN_BYTES // 4,),) * 3 + ((update_norms.TURN_BYTES // 2,),) * 3:
        norms.append(summaries.summarise(infos, [np.full(shape, len(norms), np.float32)], "param",
                                         previous=previous)[1][0, -1])
    # one large parameter: one turn, so every step after the first of each layout
    assert np.isnan(norms[0]) and np.isnan(norms[3])
    assert np.isfinite([norms[1], norms[2], norms[4], norms[5]]).all()


def test_tensors_summarised_in_parallel_batches_give_the_serial_result(monkeypatch):
    from distcheck.recording import summaries, summary_threads, update_norms

    rng = np.random.default_rng(0)
    infos = [ParamInfo(f"p{i}", (n,), "float32", True, True) for i, n in enumerate((10, 50_000, 3, 70_000, 1))]
    steps = [[rng.standard_normal(i.shape).astype(np.float32) for i in infos] for _ in range(3)]
    results = []
    for batch_bytes in (1 << 40, 1):  # one batch, then one tensor a batch
        monkeypatch.setattr(summary_threads, "BATCH_BYTES", batch_bytes)
        previous = update_norms.Previous()
        results.append([summaries.summarise(infos, values, "param", previous=previous) for values in steps])
    for (d1, s1), (d2, s2) in zip(*results):
        assert np.array_equal(d1, d2) and np.array_equal(s1, s2, equal_nan=True)
    assert np.isfinite(results[1][2][1][:, -1]).all()  # update norms from the second step on


def _numpy_path(monkeypatch):
    from distcheck.recording import fused

    monkeypatch.setattr(fused, "_tried", True)
    monkeypatch.setattr(fused, "_library", None)


def _stored(values: np.ndarray, dtype: str) -> np.ndarray:
    """``values`` as the probe hands them over: bfloat16 as the high 16 bits of float32."""
    if dtype == "bfloat16":
        return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return values.astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_the_one_pass_kernels_agree_with_numpy(dtype, monkeypatch):
    from distcheck.recording import fused, summaries, update_norms

    assert fused.library() is not None, fused.why_not()  # built when distcheck was installed
    rng = np.random.default_rng(1)
    sizes = (1, 63, 64, 65, 1000, 4096, 300_001)  # around the lane width and the 16 KB block, and many blocks
    infos = [ParamInfo(f"p{i}", (n,), dtype, True, True) for i, n in enumerate(sizes)]
    values = [[rng.standard_normal(n) * 3 + 1 for n in sizes] for _ in range(3)]
    values[2][3][7] = np.nan  # a NaN and an Inf: counted by the numpy fallback either way
    values[2][4][0] = np.inf
    steps = [[_stored(v, dtype) for v in step] for step in values]
    steps[1].append(_stored(np.arange(10.0), dtype)[::2])  # not contiguous: the numpy path
    steps[0].append(_stored(np.arange(5.0), dtype))
    steps[2].append(_stored(np.arange(5.0) * 2, dtype))
    infos.append(ParamInfo("strided", (5,), dtype, True, True))
    results = []
    for use_numpy in (False, True):
        if use_numpy:
            _numpy_path(monkeypatch)
        previous = update_norms.Previous()
        results.append([summaries.summarise(infos, [v.copy() for v in step], "param", previous=previous)
                        for step in steps])
        kept = [previous.kept(i) for i in range(len(infos))]
        assert all(k.tobytes() == v.tobytes() for k, v in zip(kept, steps[2]))  # the kept copy, bit for bit
    rtol = 1e-12 if dtype == "float64" else 1e-4
    for (d1, s1), (d2, s2) in zip(*results):
        assert np.array_equal(d1, d2)  # the kernel's xxh3-128 is the xxhash package's, bit for bit
        assert np.array_equal(s1[:, :2], s2[:, :2], equal_nan=True)  # min and max exactly
        np.testing.assert_allclose(s1, s2, rtol=rtol, atol=1e-6)
    assert results[0][2][1][3, 4] == 1 and results[0][2][1][4, 5] == 1  # NaN and Inf counts
    monkeypatch.undo()
    grads = summaries.summarise(infos, [v.copy() for v in steps[0]], "grad")  # no kept copy: the other kernel
    assert np.array_equal(grads[0], results[1][0][0])
    np.testing.assert_allclose(grads[1][:, :-1], results[1][0][1][:, :-1], rtol=rtol, atol=1e-6)


def test_without_the_compiled_kernels_the_recorder_still_measures_updates(tmp_path, monkeypatch):
    _numpy_path(monkeypatch)
    test_update_norms_from_views_of_live_memory(tmp_path)


def test_the_kernel_widens_every_float16_exactly():
    from distcheck.recording import fused

    assert fused.library() is not None, fused.why_not()
    for bits in range(65536):  # every float16: normals, subnormals, signed zeros, Inf and NaN
        half = np.array([bits], np.uint16).view(np.float16)
        want = float(half.astype(np.float32)[0])
        lo, _, total, _, _ = fused.digest_and_summary(half)[1]
        if np.isnan(want):
            assert np.isnan(total), bits
        else:
            assert lo == want and np.signbit(lo) == np.signbit(want), bits
