"""``distcheck diff`` of the 6-rank hybrid job (``scripts/train_hybrid.py``: ``mid`` split in
2 shards, 3 data-parallel pairs) against its one-device equivalent: each sharded
parameter rebuilt whole from its shards by the replica groups the dumps record; quiet
when correct, and a bug in one shard's reduction, which every rank of that shard's group
shares, found and named. One launch per run, shared by the assertions."""
import json
import os
import subprocess
import sys

import pytest

from e2e.jobs import ROOT, launch

pytestmark = pytest.mark.slow

CONFIG = os.path.join(ROOT, "configs", "hybrid-2x3.yaml")


def _run(tmp_path_factory, name, *args, n=6):
    out = tmp_path_factory.mktemp(name)
    options = ("--config", CONFIG) if n > 1 else ()
    result = launch(str(out), "train_hybrid.py", *args, n=n, launcher="msrun" if n > 1 else "none", options=options)
    assert result.code == 0 and result.report["run"]["ranks_found"] == list(range(n)), result.stderr[-3000:]
    return str(out)


def _diff(*args):
    proc = subprocess.run([sys.executable, "-m", "distcheck", "diff", *args, "--format", "json"],
                          capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return _run(tmp_path_factory, "one_device", n=1)


def test_the_correct_hybrid_agrees_with_its_one_device_equivalent(tmp_path_factory, reference):
    code, report = _diff(reference, _run(tmp_path_factory, "hybrid"))
    assert code == 0 and report["findings"] == [], report["findings"]
    notes = {n["code"]: n["message"] for n in report["notes"]}
    assert "the same 6 parameter(s), shapes and dtypes; rebuilt whole from shards: mid.bias, mid.weight" in \
        notes["diff_comparable"]
    assert "with rank 0 of" in notes["diff_comparable"] and "(6 rank(s))" in notes["diff_comparable"]
    # The global batch is the union of the 3 pairs' batches (ranks 0, 2, 4), not of all 6 ranks.
    assert "the same global batch at step 1 (by its statistics: 768 input values)" in notes["diff_batch"]


def test_one_shard_summed_over_its_group_is_named_with_its_ranks_and_factor(tmp_path_factory, reference):
    code, report = _diff(reference, _run(tmp_path_factory, "shard_sum", "--bug", "shard-sum", "--bug-shard", "1"))
    shard = [f for f in report["findings"] if f["code"] == "diff_shard"]
    assert code == 1 and len(shard) == 1, report["findings"]
    f = shard[0]
    assert (f["step"], f["ranks"], f["params"]) == (1, [1, 3, 5], ["mid.weight", "mid.bias"])
    assert f["detail"]["pieces"][0]["factor"] == pytest.approx(3.0, rel=1e-3)
    assert "one shard differs, the one held by ranks 1, 3, 5" in f["message"]
    assert "summed over the group instead of averaged" in f["message"]
    others = [g for g in report["findings"] if g["code"] != "diff_shard"]
    assert others and all(g["caused_by"] == "diff_shard@1" for g in others)
    grads = [g for g in others if g["code"] == "diff_grad"]
    assert grads[0]["step"] == 1 and grads[0]["params"] == ["mid.weight", "mid.bias"]  # fc1 and head agree


def test_a_model_parallel_backward_that_sums_the_pair_is_a_factor_of_the_shard_count(tmp_path_factory, reference):
    code, report = _diff(reference, _run(tmp_path_factory, "tp_backward", "--bug", "tp-backward"))
    f = [f for f in report["findings"] if f["code"] == "diff_shard"][0]
    assert code == 1 and (f["step"], f["params"]) == (1, ["mid.weight", "mid.bias"])
    assert f["detail"]["pieces"][0]["factor"] == pytest.approx(2.0, rel=1e-3)
    assert f["detail"]["pieces"][0]["shard_ranks"] is None
    assert "every shard's gradient is 2x" in f["message"] and "number of shards (2)" in f["message"]
