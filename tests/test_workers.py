"""The analysis spread over workers: local processes (--workers K) and mpirun give the
findings one process gives."""
import json
import os
import subprocess
import sys

import pytest

from synthetic import make_run

from test_replicas import HYBRID, _hybrid


def _findings(run_dir, *options, launcher=()):
    proc = subprocess.run([*launcher, sys.executable, "-m", "distcheck", "analyze", str(run_dir), "--format", "json",
                           *options], capture_output=True, text=True, timeout=300)
    # one report, even under mpirun
    assert proc.stdout.count('"schema"') == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    return proc.returncode, [(f["code"], f["step"], f["ranks"], f["params"]) for f in report["findings"]]


@pytest.mark.parametrize("bug", ["nudge", "seed", "bn", "standalone"])
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
