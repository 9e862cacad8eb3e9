"""When jobs fail: real msrun and mpirun jobs that crash, stall, are stopped from outside,
or whose probe fails. Each asserts who is blamed, at which step, and what is left behind."""
import os
import re
import signal
import subprocess
import sys
import time

import h5py
import psutil
import pytest

from distcheck.store.progress_file import read_progress
from e2e.jobs import finish, launch, only, start, wait_for_steps

pytestmark = pytest.mark.slow


def _statuses(run_dir, ranks=3):
    out = {}
    for r in range(ranks):
        with h5py.File(os.path.join(run_dir, f"rank_{r:05d}.h5"), "r", swmr=True) as f:
            out[r] = (int(f["status"][0]), int(f["status_signal"][0]), [int(s) for s in f["steps/step"][()]])
    return out


def test_killed_rank_is_named_alone_with_its_true_last_step(tmp_path):
    # Default flush (2 s): the steps since the last flush are known from the progress file.
    result = launch(str(tmp_path), "train_mlp.py", "--bug", "kill", "--bug-step", "6", env={"MS_NODE_TIMEOUT": "5"})
    assert result.code == 3  # the job failed; the report still covers what was recorded
    f = only(result, "rank_stopped")
    assert f["ranks"] == [2] and f["step"] == 6
    assert "killed by signal 9 (SIGKILL), after step 6" in f["message"]
    assert re.search(r"rank(s 0, 1| 0) waited for it in step 7", f["message"])  # ranks that ended alike: said once
    statuses = _statuses(str(tmp_path))
    for rank in (0, 1):  # the others' files hold every step they completed, though msrun SIGKILLed them
        assert read_progress(str(tmp_path), rank).step == 6
        assert statuses[rank][2] == list(range(7)), statuses[rank]
    assert result.codes() == ["rank_stopped"]


def test_stalled_rank_is_named_with_the_line_where_it_was_stuck(tmp_path):
    # Rank 1 never returns from a callback after step 5; ranks 0 and 2 wait in the step-6
    # AllReduce until it times out (about 20-30 s on CPU), and msrun blames a waiting rank.
    result = launch(str(tmp_path), "train_mlp.py", "--bug", "stall", "--bug-step", "5", "--bug-rank", "1",
                    timeout=400)
    assert result.code == 3
    f = only(result, "rank_stalled")
    assert f["ranks"] == [1] and f["step"] == 5
    assert "train_mlp.py:" in f["message"] and "in on_train_step_end" in f["message"]
    assert "in the training script's callbacks" in f["message"]
    assert not result.findings("rank_stopped")


def test_stall_timeout_stops_the_job_and_names_the_stalled_rank(tmp_path):
    t0 = time.monotonic()
    result = launch(str(tmp_path), "train_mlp.py", "--bug", "stall", "--bug-step", "4", "--bug-rank", "2",
                    options=("--stall-timeout", "12"))
    assert result.code == 3
    f = only(result, "rank_stalled")
    assert f["ranks"] == [2] and f["step"] == 4
    assert "train_mlp.py:" in f["message"]
    assert "stopped the job after 12 s without progress" in f["message"]
    statuses = _statuses(str(tmp_path))
    assert {s[0] for s in statuses.values()} == {3}  # every rank terminated, its dump closed
    assert time.monotonic() - t0 < 120


def _stop_from_outside(tmp_path, launcher):
    proc = start(str(tmp_path), "train_mlp.py", "--steps", "100000", "--step-delay", "0.02", launcher=launcher)
    try:
        wait_for_steps(str(tmp_path), 3, 10)
        tree = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        result = finish(proc, timeout=90)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert elapsed < 60, elapsed
    assert result.code == 143
    left = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not left, [psutil.Process(p).cmdline() for p in left]
    f = only(result, "job_stopped")
    assert f["ranks"] == [] and "no rank is to blame" in f["message"]
    assert [x for x in result.report["findings"] if x["severity"] == "error"] == []
    shown = subprocess.run([sys.executable, "-m", "distcheck", "watch", str(tmp_path), "--once"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout.count("terminated") == 3, shown.stdout + shown.stderr
    for rank, (status, signum, steps) in _statuses(str(tmp_path)).items():
        assert (status, signum) == (3, signal.SIGTERM), rank  # terminated, by SIGTERM
        completed = read_progress(str(tmp_path), rank).step
        assert steps[-1] >= completed - 1 and steps == list(range(steps[-1] + 1)), rank


def test_sigterm_to_launch_stops_every_process_and_closes_every_dump(tmp_path):
    _stop_from_outside(tmp_path, "msrun")


def test_sigterm_to_launch_under_mpirun(tmp_path):
    _stop_from_outside(tmp_path, "mpirun")


@pytest.mark.parametrize("fault,step", [("world:1", None), ("record@5:1", 5)])
def test_probe_failure_on_one_rank_does_not_hurt_training(tmp_path, fault, step):
    result = launch(str(tmp_path), "train_mlp.py", env={"DISTCHECK_FAULTS": fault})
    assert result.code == 0, result.stderr[-3000:]
    assert "rank 1 done" in open(os.path.join(tmp_path, "logs", "worker_1.log")).read()
    f = only(result, "probe_failed")
    assert f["ranks"] == [1] and "planted fault" in f["message"]
    assert result.codes() == ["probe_failed"]
    ranks = result.report["run"]["ranks"]
    assert ranks["0"]["last_step"] == ranks["2"]["last_step"] == 12  # the others recorded to the end
    if step is not None:
        assert ranks["1"]["last_step"] == step - 1
