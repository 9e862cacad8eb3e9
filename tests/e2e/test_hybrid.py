"""A real hand-written hybrid job under msrun: 2-way model parallel x 3-way data parallel
on 6 ranks (scripts/train_hybrid.py), its replica groups declared in
configs/hybrid-2x3.yaml and passed with `distcheck launch --config`."""
import os

import pytest

from e2e.jobs import ROOT, launch, only

pytestmark = pytest.mark.slow

CONFIG = os.path.join(ROOT, "configs", "hybrid-2x3.yaml")


def _hybrid(tmp_path, *script_args, fail_fast=False):
    options = ("--config", CONFIG, *(("--fail-fast",) if fail_fast else ()))
    return launch(str(tmp_path), "train_hybrid.py", *script_args, n=6, options=options)


def test_a_healthy_hybrid_job_is_quiet_and_fail_fast_lets_it_run(tmp_path):
    result = _hybrid(tmp_path, fail_fast=True)
    assert result.code == 0 and result.report["findings"] == [], result.stderr[-3000:]
    assert all(r["status"] == "finished" and r["last_step"] == 12 for r in result.report["run"]["ranks"].values())


def test_a_seeded_replica_of_a_shard_is_named_alone_and_fail_fast_stops_at_step_0(tmp_path):
    result = _hybrid(tmp_path, "--bug", "seed", fail_fast=True)
    f = only(result, "init_mismatch")
    assert (f["step"], f["ranks"], f["params"]) == (0, [4], ["mid.weight"])
    assert "[0, 2, 4] (declared)" in f["message"]
    stop = only(result, "job_stopped")
    assert stop["step"] == 0 and "--fail-fast" in stop["message"]
    assert result.code == 3 and result.codes() == ["init_mismatch", "job_stopped"]


def test_a_nudged_replicated_parameter_is_named_alone(tmp_path):
    result = _hybrid(tmp_path, "--bug", "nudge", "--bug-step", "5")
    f = only(result, "param_divergence")
    assert (f["step"], f["ranks"], f["params"]) == (5, [4], ["head.weight"])
    assert result.codes() == ["param_divergence"]
