"""``distcheck diff`` of real jobs against their one-device reference (``scripts/train_reference.py``):
quiet on a correct 2-rank run whose rounding drift shows, and each bug on which every rank
agrees found at step 1 and named. One launch per run, shared by the assertions."""
import json
import subprocess
import sys

import pytest

from e2e.jobs import launch

pytestmark = pytest.mark.slow

LONG = ("--lr", "0.2", "--steps", "300")  # drifts past rtol 1e-3 by rounding alone (from step ~134)
SHORT = ("--lr", "0.2", "--steps", "12")


def _run(tmp_path_factory, name, *args, n=2, options=()):
    out = tmp_path_factory.mktemp(name)
    result = launch(str(out), "train_reference.py", *args, n=n, launcher="msrun" if n > 1 else "none",
                    options=options)
    assert result.code in (0, 1) and result.report["run"]["ranks_found"] == list(range(n)), result.stderr[-3000:]
    return str(out)


def _diff(*args):
    proc = subprocess.run([sys.executable, "-m", "distcheck", "diff", *args, "--format", "json"],
                          capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return _run(tmp_path_factory, "ref", *LONG, n=1)


@pytest.fixture(scope="module")
def noise(tmp_path_factory):
    return _run(tmp_path_factory, "noise", *LONG, n=1, options=("--perturb",))


def test_correct_two_rank_run_is_quiet_where_a_fixed_tolerance_raises_false_alarms(tmp_path_factory, reference,
                                                                                  noise):
    run = _run(tmp_path_factory, "dp", *LONG)
    code, report = _diff(reference, run, "--rtol", "1e-3", "--atol", "1e-6")  # the old fixed tolerance
    assert code == 1 and {f["code"] for f in report["findings"]} >= {"diff_grad", "diff_param"}
    for extra in ((), ("--noise", noise)):
        code, report = _diff(reference, run, *extra)
        assert code == 0 and report["findings"] == [], report["findings"]
        notes = {n["code"]: n["message"] for n in report["notes"]}
        assert "the same 4 parameter(s), shapes and dtypes" in notes["diff_comparable"]
        assert "the same global batch at step 1" in notes["diff_batch"]
        assert "drift apart by rounding from step" in notes["diff_drift"]
        assert ("measured from the noise run" if extra else "the default for float32") in notes["diff_envelope"]


def test_summed_gradients_are_a_factor_of_the_world_size_at_step_1(tmp_path_factory, reference):
    code, report = _diff(reference, _run(tmp_path_factory, "sum", *SHORT, "--bug", "sum"))
    factor = [f for f in report["findings"] if f["code"] == "diff_factor"]
    assert code == 1 and len(factor) == 1 and factor[0]["step"] == 1
    assert factor[0]["detail"]["factor"] == pytest.approx(2.0, rel=1e-5)
    assert "2x" in factor[0]["message"] and "summed over the ranks instead of averaged" in factor[0]["message"]
    assert all(f["caused_by"] == "diff_factor@1" for f in report["findings"] if f["code"] != "diff_factor")


def test_a_loss_scaled_by_the_world_size_is_told_from_summed_gradients(tmp_path_factory, reference):
    code, report = _diff(reference, _run(tmp_path_factory, "scaled", *SHORT, "--bug", "loss-scale"))
    factor = [f for f in report["findings"] if f["code"] == "diff_factor"][0]
    assert code == 1 and factor["step"] == 1 and factor["detail"]["loss_ratio"] == pytest.approx(2.0, rel=1e-5)
    assert "loss is multiplied by the world size" in factor["message"]
    assert "instead of averaged" not in factor["message"]


def test_a_learning_rate_scaled_twice_is_a_factor_of_the_updates_not_the_gradients(tmp_path_factory, reference):
    code, report = _diff(reference, _run(tmp_path_factory, "lr", *SHORT, "--bug", "lr-twice"))
    (update,) = [f for f in report["findings"] if f["code"] == "diff_update_factor"]
    assert code == 1 and update["step"] == 1 and update["detail"]["factor"] == pytest.approx(4.0, rel=1e-4)
    assert "scaled by the world size twice" in update["message"]
    assert not [f for f in report["findings"] if f["code"] in ("diff_factor", "diff_grad") and f["step"] == 1]


def test_every_rank_reading_one_shard_is_named_at_step_1(tmp_path_factory, reference):
    code, report = _diff(reference, _run(tmp_path_factory, "same", *SHORT, "--bug", "same-shard"))
    batch = [f for f in report["findings"] if f["code"] == "diff_batch"]
    assert code == 1 and len(batch) == 1 and batch[0]["step"] == 1
    assert "Ranks 0, 1 read identical batches: the data are not split" in batch[0]["message"]
    assert not [f for f in report["findings"] if f["code"] == "diff_factor"]


def test_batchnorm_over_local_batches_is_named_as_the_explanation(tmp_path_factory):
    ref = _run(tmp_path_factory, "bnref", *SHORT, "--bug", "bn", n=1)
    code, report = _diff(ref, _run(tmp_path_factory, "bn", *SHORT, "--bug", "bn"))
    bn = [f for f in report["findings"] if f["code"] == "diff_batchnorm"]
    assert code == 1 and len(bn) == 1 and bn[0]["step"] == 1
    assert "BatchNorm without synchronisation (bn)" in bn[0]["message"] and "SyncBatchNorm" in bn[0]["message"]
    assert not [f for f in report["findings"] if f["code"] in ("diff_factor", "diff_batch")]


ACTS = ("--lr", "0.2", "--steps", "6", "--hidden-layers", "2")


def test_the_first_layer_whose_output_differs_is_the_one_after_batchnorm(tmp_path_factory):
    ref = _run(tmp_path_factory, "actbnref", *ACTS, "--bug", "bn", n=1, options=("--activations",))
    code, report = _diff(ref, _run(tmp_path_factory, "actbn", *ACTS, "--bug", "bn", options=("--activations",)))
    act = [f for f in report["findings"] if f["code"] == "diff_activation"]
    assert code == 1 and len(act) == 1 and act[0]["step"] == 1, report["findings"]
    assert act[0]["detail"]["layer"] == "relu" and act[0]["caused_by"] == "diff_batchnorm@1"
    assert "before any gradient" in act[0]["message"] and "the layers before it agree: relu1" in act[0]["message"]


def test_summed_gradients_leave_the_forward_pass_of_step_1_alone(tmp_path_factory):
    ref = _run(tmp_path_factory, "actref", *ACTS, n=1, options=("--activations",))
    code, report = _diff(ref, _run(tmp_path_factory, "actsum", *ACTS, "--bug", "sum", options=("--activations",)))
    assert code == 1 and not [f for f in report["findings"] if f["code"] == "diff_activation"]
    note = [n["message"] for n in report["notes"] if n["code"] == "diff_activation"]
    assert note and note[0].startswith("The forward pass agrees at step 1, where the runs part: every layer's "
                                       "output (relu1, relu) is within the envelope")
