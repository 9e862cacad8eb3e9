"""What the probe installs in a process (signal handlers, the wake-up channel, atexit,
the open dump) never acts on behalf of a forked child, never overrides the script's own
signal handlers, and never leaves half-written rows."""
import os
import resource
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from distcheck.store import schema
from distcheck.store.reader import DumpReader
from distcheck.store.schema import ParamInfo, Status
from distcheck.store.writer import DumpWriter

PARAMS = [ParamInfo("w", (3, 2), "float32", True, True)]


def _child(code: str, tmp_path, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python (signals, forks and exits must not touch pytest)."""
    prelude = textwrap.dedent(f"""
        import os, signal, sys, time
        import numpy as np
        from distcheck.recording import ParamInfo, ProbeOptions, Recorder
        from distcheck.world import SingleWorld
        RUN = {str(tmp_path)!r}
        PARAMS = [ParamInfo("w", (3, 2), "float32", True, True)]

        def train(rec, steps):
            for step in steps:
                rec.step_done(step, update=step > 0)
                rec.record(step, [np.full((3, 2), step, np.float32)], loss=1.0 / (step + 1))
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


def _dump(tmp_path) -> DumpReader:
    return DumpReader(str(tmp_path / "rank_00000.h5"))


def test_a_forked_child_neither_wakes_the_parent_nor_closes_its_dump(tmp_path):
    # One child is ended with SIGTERM (multiprocessing's terminate()), one exits normally
    # (atexit, then HDF5 closing its open files), one forked by os.fork() gets SIGTERM.
    result = _child("""
        import hashlib, multiprocessing
        rec = Recorder.open(RUN, SingleWorld(), PARAMS, {}, ProbeOptions())
        train(rec, range(3))
        rec.writer.flush()
        path = os.path.join(RUN, "rank_00000.h5")
        before = hashlib.sha1(open(path, "rb").read()).hexdigest()

        def serve(ready):
            ready.set()
            time.sleep(60)

        ctx = multiprocessing.get_context("fork")
        ready = ctx.Event()
        worker = ctx.Process(target=serve, args=(ready,))
        worker.start()
        ready.wait(30)
        worker.terminate()
        worker.join(30)

        pid = os.fork()
        if pid == 0:  # the handlers and wake-up fd of before distcheck are back
            inherited = signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL or signal.set_wakeup_fd(-1) != -1
            sys.exit(3 if inherited else 0)  # a normal exit: atexit runs
        exited = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

        pid = os.fork()
        if pid == 0:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
            os._exit(4)
        killed = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

        time.sleep(1.0)  # a wrongly woken watcher would have ended this process by now
        unchanged = hashlib.sha1(open(path, "rb").read()).hexdigest() == before
        print(worker.exitcode, exited, killed, unchanged)
        train(rec, range(3, 6))
        rec.end_segment()
    """, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["-15", "0", "-15", "True"], result.stdout + result.stderr
    with _dump(tmp_path) as r:
        assert (r.status, r.status_message) == (Status.FINISHED, "")
        assert r.steps.tolist() == list(range(6))


def test_a_forked_child_may_record_on_its_own(tmp_path):
    result = _child("""
        rec = Recorder.open(RUN, SingleWorld(), PARAMS, {}, ProbeOptions())
        train(rec, range(2))
        pid = os.fork()
        if pid == 0:
            child = Recorder.open(os.path.join(RUN, "child"), SingleWorld(), PARAMS, {}, ProbeOptions())
            assert child is not rec
            train(child, range(3))
            child.end_segment()
            sys.exit(0)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        train(rec, range(2, 4))
        rec.end_segment()
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    with _dump(tmp_path) as r:
        assert r.status == Status.FINISHED and r.steps.tolist() == [0, 1, 2, 3]
    with DumpReader(str(tmp_path / "child" / "rank_00000.h5")) as r:
        assert r.status == Status.FINISHED and r.steps.tolist() == [0, 1, 2]


@pytest.mark.parametrize("installed", ["before", "after"])
def test_a_signal_the_script_handles_itself_ends_in_a_clean_finish(tmp_path, installed):
    # The script's handler only notes the signal (a preemption notice); training then
    # stops cleanly. Installed after distcheck's, it replaces it and decides alone.
    own = "signal.signal(signal.SIGTERM, lambda s, f: print('noted', flush=True))"
    result = _child(f"""
        {own if installed == "before" else ""}
        rec = Recorder.open(RUN, SingleWorld(), PARAMS, {{}}, ProbeOptions())
        {own if installed == "after" else ""}
        train(rec, range(3))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1.0)  # the watcher thread has been woken by now
        train(rec, range(3, 5))
        rec.end_segment()
    """, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["noted"]
    with _dump(tmp_path) as r:
        assert (r.status, r.status_message, r.status_signal) == (Status.FINISHED, "", 0)
        assert r.steps.tolist() == [0, 1, 2, 3, 4]


def test_a_script_handler_that_passes_the_signal_on_ends_the_process_by_it(tmp_path):
    result = _child("""
        rec = Recorder.open(RUN, SingleWorld(), PARAMS, {}, ProbeOptions())
        before = signal.getsignal(signal.SIGTERM)

        def note_and_pass_on(signum, frame):
            print("noted", flush=True)
            before(signum, frame)

        signal.signal(signal.SIGTERM, note_and_pass_on)
        train(rec, range(3))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        print("not terminated")
    """, tmp_path)
    assert result.returncode == -signal.SIGTERM, result.stdout + result.stderr
    assert result.stdout.split() == ["noted"]
    with _dump(tmp_path) as r:
        assert r.status == Status.TERMINATED and r.status_signal == signal.SIGTERM
        assert r.steps.tolist() == [0, 1, 2]


def test_the_watcher_wakes_on_a_descriptor_above_1023(tmp_path):
    # select() cannot watch descriptors from 1024 on; the watcher must still wake.
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 1200:
        pytest.skip("this machine allows fewer than 1200 open files")
    result = _child("""
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
        held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # every low descriptor taken
        rec = Recorder.open(RUN, SingleWorld(), PARAMS, {}, ProbeOptions())
        train(rec, range(3))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        print("not terminated")
    """, tmp_path)
    assert result.returncode == -signal.SIGTERM, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    with _dump(tmp_path) as r:  # only the watcher thread closes the dump as terminated
        assert r.status == Status.TERMINATED and r.steps.tolist() == [0, 1, 2]


def test_an_interrupted_flush_leaves_no_row_and_the_next_writes_each_row_once(tmp_path, monkeypatch):
    path = str(tmp_path / "rank_00000.h5")
    writer = DumpWriter(path, PARAMS, {"rank": 0, "world_size": 1}, flush_seconds=60)
    for step in range(3):
        writer.append(step, {schema.LOSS: 1.0 + step})
    write = h5py.Dataset.__setitem__

    def interrupted(ds, key, value):  # a KeyboardInterrupt between a resize and its write
        if ds.name == "/" + schema.LOSS:
            raise KeyboardInterrupt
        write(ds, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        writer.flush()
    monkeypatch.setattr(h5py.Dataset, "__setitem__", write)
    lengths = {p: writer._file[p].shape[0] for p in schema.step_layout(len(PARAMS), 0)}
    assert set(lengths.values()) == {0}, lengths  # nothing half-written on disk
    writer.append(3, {schema.LOSS: 4.0})
    writer.close()
    with DumpReader(path) as r:
        assert r.status == Status.FINISHED
        assert r.steps.tolist() == [0, 1, 2, 3]
        assert r.series(schema.LOSS).tolist() == [1.0, 2.0, 3.0, 4.0]
    with h5py.File(path, "r") as f:
        assert {f[p].shape[0] for p in schema.step_layout(len(PARAMS), 0)} == {4}
