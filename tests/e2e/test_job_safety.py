"""A probe never hurts a healthy job, whatever the job does with fork and signals.

Real 2-rank msrun jobs of ``train_mlp.py`` under ``distcheck launch``: each must end as
it would under plain msrun (exit 0, every rank done), and its dumps must say finished
with every step and the loss, and raise no finding."""
import os

import h5py
import numpy as np
import pytest

from e2e.jobs import launch

pytestmark = pytest.mark.slow


def _dump(run_dir, rank):
    with h5py.File(os.path.join(run_dir, f"rank_{rank:05d}.h5"), "r", swmr=True) as f:
        return (int(f["status"][0]), f["status_message"][0].decode(), [int(s) for s in f["steps/step"][()]],
                f["steps/loss"][()])


def _assert_healthy(result, run_dir, last_step):
    assert result.code == 0, result.stderr[-3000:]
    assert result.report["findings"] == [], result.report["findings"]
    for rank in (0, 1):
        log = open(os.path.join(run_dir, "logs", f"worker_{rank}.log")).read()
        assert f"rank {rank} done" in log, log[-3000:]
        status, message, steps, loss = _dump(run_dir, rank)
        assert (status, message) == (1, ""), (rank, status, message)  # finished
        assert steps == list(range(last_step + 1)), (rank, steps)
        assert np.isfinite(loss[1:]).all(), (rank, loss)  # the loss of every step (step 0 has none)
        ranks = result.report["run"]["ranks"]
        assert ranks[str(rank)]["status"] == "finished" and ranks[str(rank)]["last_step"] == last_step


def test_helpers_forked_by_the_job_and_ended_by_it_do_not_touch_the_rank(tmp_path):
    # After step 4 each rank forks a multiprocessing worker (fork context) and ends it with
    # terminate(), then an os.fork() child that runs the atexit hooks as it exits (it then
    # crashes in MindSpore's own hook, as it does without distcheck).
    result = launch(str(tmp_path), "train_mlp.py", "--fork-helpers", "4", n=2)
    _assert_healthy(result, str(tmp_path), 12)
    for rank in (0, 1):
        log = open(os.path.join(tmp_path, "logs", f"worker_{rank}.log")).read()
        assert f"rank {rank} helpers ended: worker -15, child" in log, log[-3000:]


def test_a_preemption_handler_of_the_script_decides_and_the_rank_finishes(tmp_path):
    # Each rank installs its own SIGTERM handler after step 1; a SIGTERM arrives at step 5;
    # the script saves a checkpoint and stops training cleanly after that step.
    result = launch(str(tmp_path), "train_mlp.py", "--preempt", "5", n=2)
    for rank in (0, 1):
        assert os.path.getsize(tmp_path / f"preempted_rank_{rank}.ckpt") > 0
    _assert_healthy(result, str(tmp_path), 5)
    assert not [f for f in result.report["findings"] if f["code"] == "rank_stopped"]
