"""Real MindSpore data-parallel jobs launched by mpirun (MPICH from PyPI), the probes
talking through mpi4py."""
import h5py
import pytest

from e2e.jobs import launch, only

pytestmark = pytest.mark.slow


def test_mpirun_job_finds_the_rank_with_another_learning_rate(tmp_path):
    result = launch(str(tmp_path), "train_mlp.py", "--bug", "lr", launcher="mpirun")
    f = only(result, "param_divergence")
    assert (f["step"], f["ranks"]) == (1, [2])
    assert not result.findings("grad_divergence")
    with h5py.File(tmp_path / "rank_00001.h5", "r") as dump:
        assert '"comm": "mpi"' in dump.attrs["meta"]


def test_fail_fast_stops_every_rank_at_step_0(tmp_path):
    result = launch(str(tmp_path), "train_mlp.py", "--bug", "seed", launcher="mpirun",
                    options=("--fail-fast",))
    assert result.code == 3  # the job was stopped
    f = only(result, "init_mismatch")
    assert f["ranks"] == [2]
    ranks = result.report["run"]["ranks"]
    assert {r["status"] for r in ranks.values()} == {"aborted"}
    assert {r["last_step"] for r in ranks.values()} == {0}
    assert "replicas differ at step 0 on rank(s) [2]" in result.stderr
