"""A run directory holds one job: a real 2-rank msrun job is not written over a 3-rank one."""
import subprocess

import pytest

from distcheck.store.sidecars import read_job
from e2e.jobs import _argv_env, launch

pytestmark = pytest.mark.slow


def test_a_used_run_directory_is_refused_and_overwrite_starts_afresh(tmp_path):
    out = str(tmp_path)
    first = launch(out, "train_mlp.py", "--steps", "4", n=3)
    assert first.code == 0 and first.report["run"]["ranks_found"] == [0, 1, 2], first.stderr[-3000:]
    first_id = read_job(out)["job_id"]

    argv, env = _argv_env(out, "train_mlp.py", ("--steps", "4"), 2, "msrun", (), None)
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=out)
    assert refused.returncode == 2 and refused.stdout == ""
    assert f"{out} already holds a run" in refused.stderr and "--overwrite" in refused.stderr
    assert "Traceback" not in refused.stderr and read_job(out)["job_id"] == first_id  # nothing started

    second = launch(out, "train_mlp.py", "--steps", "4", n=2, options=("--overwrite",))
    assert second.code == 0, second.stderr[-3000:]
    assert second.report["run"]["ranks_found"] == [0, 1] and second.report["run"]["world_size"] == 2
    assert second.report["findings"] == [] and second.report["errors"] == []
    assert read_job(out)["job_id"] not in ("", first_id)
