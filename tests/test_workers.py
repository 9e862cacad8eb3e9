"""The analysis spread over workers: local processes (--workers K) and mpirun give the
findings one process gives."""
import json
import os
import pickle
import signal
import subprocess
import sys
import threading

import h5py
import pytest

from distcheck.analysis.pools import MpiPool
from distcheck.store.reader import DumpError
from synthetic import make_run

from test_replicas import HYBRID, _hybrid


def _findings(run_dir, *options, launcher=()):
    proc = subprocess.run([*launcher, sys.executable, "-m", "distcheck", "analyze", str(run_dir), "--format", "json",
                           *options], capture_output=True, text=True, timeout=300)
    # one report, even under mpirun
    assert proc.stdout.count('"schema"') == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    return proc.returncode, [(f["code"], f["step"], f["ranks"], f["params"]) for f in report["findings"]]


@pytest.mark.parametrize("bug", ["nudge", "seed", "bn", "standalone", "unsharded"])
def test_local_workers_find_what_one_process_finds(tmp_path, bug):
    make_run(str(tmp_path), bug, size=3)
    one = _findings(tmp_path)
    assert one[1] and _findings(tmp_path, "--workers", "2") == one == _findings(tmp_path, "--workers", "3")


def test_workers_on_a_hybrid_job_with_several_replica_groups(tmp_path):
    _hybrid(str(tmp_path), bug="seed")
    config = tmp_path / "c.yaml"
    config.write_text("replica_groups: " + json.dumps(HYBRID) + "\n")
    one = _findings(tmp_path, "--config", str(config))
    assert one[1] == [("init_mismatch", 0, [4], ["mid.weight"])]
    assert _findings(tmp_path, "--config", str(config), "--workers", "2") == one


def test_mpirun_spreads_the_analysis_and_rank_0_writes_the_report(tmp_path):
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    if not os.path.exists(mpirun):
        pytest.skip("no mpirun next to this Python (pip install mpich)")
    make_run(str(tmp_path), "nudge", size=3)
    assert _findings(tmp_path, launcher=(mpirun, "-n", "2")) == _findings(tmp_path)


# -- a damaged dump: every engine leaves out the same rank, together -------------------

def _run_analyze(run_dir, *options, launcher=(), timeout=120):
    """(exit code, stdout, stderr) of ``distcheck analyze``; a run that does not end in
    ``timeout`` seconds (an MPI process waiting in a collective the others skipped) is
    killed with its whole process group and fails the test."""
    proc = subprocess.Popen([*launcher, sys.executable, "-m", "distcheck", "analyze", str(run_dir), "--format", "json",
                             *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"distcheck analyze {' '.join(options)} under {launcher or 'no launcher'} hung for {timeout} s: "
                    + err[-2000:])
    return proc.returncode, out, err


def _corrupt_chunk_index(path, dataset):
    """Damage that validation cannot see: the index entry of ``dataset``'s first chunk now
    points past the end of the file, so its shape reads fine and its data does not."""
    with h5py.File(path, "r") as f:
        where = int(f[dataset].id.get_chunk_info(0).byte_offset).to_bytes(8, "little")
    data = bytearray(open(path, "rb").read())
    at = data.find(where)
    assert at > 0 and data.find(where, at + 1) < 0, "the chunk address is not unique in the file"
    data[at:at + 8] = (4 * len(data)).to_bytes(8, "little")
    open(path, "wb").write(data)


def _damage(run_dir, rank, how):
    path = os.path.join(run_dir, f"rank_{rank:05d}.h5")
    if how == "truncated":  # validation fails
        os.truncate(path, os.path.getsize(path) // 2)
    else:  # validation passes; the health rules ("param/stats") or the vote ("param/digest") fail on reading
        _corrupt_chunk_index(path, how)
    return path


def _outcome(run_dir, *options, launcher=()):
    code, out, err = _run_analyze(run_dir, *options, launcher=launcher)
    assert "Traceback" not in err, err[-3000:]
    assert out.count('"schema"') == 1, out[-2000:] + err[-2000:]
    report = json.loads(out)
    return (code, [(f["code"], f["step"], f["ranks"], f["params"]) for f in report["findings"]],
            [(e["rank"], e["message"]) for e in report["errors"]], err)


# Under mpirun -n 2 the health rules of ranks 0-1 run on process 0, of rank 2 on process 1.
@pytest.mark.parametrize("how,rank,bug", [("param/stats", 1, "nudge"), ("param/stats", 2, "none"),
                                          ("param/digest", 1, "nudge"), ("truncated", 1, "nudge")])
def test_a_damaged_dump_is_left_out_alike_by_every_engine(tmp_path, how, rank, bug):
    make_run(str(tmp_path), bug, size=3)
    path = _damage(str(tmp_path), rank, how)
    one = _outcome(tmp_path)
    code, findings, errors, err = one
    assert code == 2 and [r for r, _ in errors] == [rank] and path in errors[0][1]
    assert f"distcheck: input error: {path}" in err
    assert ("rank_missing", None, [rank], []) in findings
    if bug == "nudge":
        assert ("param_divergence", 5, [0, 2], ["dense2.weight"]) in findings  # rank 1 left out: no majority
    assert _outcome(tmp_path, "--workers", "2")[:3] == one[:3]
    mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
    if not os.path.exists(mpirun):
        pytest.skip("no mpirun next to this Python (pip install mpich)")
    under_mpi = _outcome(tmp_path, launcher=(mpirun, "-n", "2"))
    assert under_mpi[:3] == one[:3]
    assert under_mpi[3].count(f"distcheck: input error: {path}") == 1  # said once, by the process that writes


class _ThreadComm:
    """An MPI communicator for processes played by threads (``Get_size``, ``Get_rank``,
    ``allgather`` of picklable objects); a process missing from an all-gather breaks the
    barrier after a few seconds instead of hanging the test."""

    def __init__(self, rank, size, barrier, slots):
        self.rank, self.size, self._barrier, self._slots = rank, size, barrier, slots

    @classmethod
    def world(cls, size):
        barrier, slots = threading.Barrier(size), [None] * size
        return [cls(r, size, barrier, slots) for r in range(size)]

    def Get_size(self):
        return self.size

    def Get_rank(self):
        return self.rank

    def allgather(self, obj):
        self._slots[self.rank] = pickle.loads(pickle.dumps(obj))
        self._barrier.wait(timeout=5)
        out = list(self._slots)
        self._barrier.wait(timeout=5)
        return out


def _on_every_process(comms, body):
    """``body(pool)`` on an :class:`MpiPool` per fake process: what each returned or raised."""
    outcomes = [None] * len(comms)

    def one(comm):
        try:
            outcomes[comm.rank] = ("returned", body(MpiPool(comm)))
        except Exception as exc:
            outcomes[comm.rank] = ("raised", exc)

    threads = [threading.Thread(target=one, args=(c,)) for c in comms]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return outcomes


def _read(task):
    if task in (1, 2):
        raise DumpError(f"rank_0000{task}.h5", "damaged data in param/stats")
    return task * 10


def test_mpi_processes_all_raise_the_first_failure_of_a_map_and_stay_in_step():
    def body(pool):
        try:
            pool.map(_read, [0, 1, 2, 3, 4])
        except DumpError as exc:
            failed = exc.path
        else:
            failed = None
        return failed, pool.map(_read, [0, 3, 4, 5])  # the next map still meets every process

    outcomes = _on_every_process(_ThreadComm.world(2), body)
    # task 1 fails on process 1, task 2 on process 0: both raise task 1's error
    assert outcomes == [("returned", ("rank_00001.h5", [0, 30, 40, 50]))] * 2


def test_mpi_processes_hear_of_a_failure_that_does_not_pickle():
    class Unpicklable(Exception):
        def __reduce__(self):
            raise TypeError("no")

    def body(pool):
        def fail_on_1(task):
            if task == 1:
                raise Unpicklable("bad luck")
            return task
        return pool.map(fail_on_1, [0, 1])

    outcomes = _on_every_process(_ThreadComm.world(2), body)
    assert isinstance(outcomes[1][1], Unpicklable)
    assert outcomes[0][0] == "raised" and "Unpicklable: bad luck" in str(outcomes[0][1])
