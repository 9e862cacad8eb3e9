"""Real msrun data-parallel jobs (3 ranks, CPU, GRAPH_MODE) attached through ``distcheck launch``
with no change to the training script; each asserts the exact findings."""
import pytest

from e2e.jobs import launch, only
from test_reports import check_every_format

pytestmark = pytest.mark.slow

PARAMS = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]


def test_clean_run_has_no_error_or_warning(tmp_path):
    result = launch(str(tmp_path), "train_mlp.py")
    assert result.code == 0, result.stderr[-3000:]
    assert result.report["findings"] == []
    assert result.report["run"]["ranks_found"] == [0, 1, 2]
    assert {r["status"] for r in result.report["run"]["ranks"].values()} == {"finished"}
    assert result.report["run"]["ranks"]["1"]["last_step"] == 12
    assert "computed with numpy" not in result.stderr  # the one-pass kernel was built and used
    assert check_every_format(tmp_path)["findings"] == []  # JSON, JUnit, Markdown, HTML, text


def test_seed_mismatch_names_the_rank(tmp_path):
    result = launch(str(tmp_path), "train_mlp.py", "--bug", "seed")
    assert result.code == 1
    f = only(result, "init_mismatch")
    assert (f["step"], f["ranks"], f["params"]) == (0, [2], PARAMS)
    assert result.codes() == ["init_mismatch"]  # the root cause, not a pile of symptoms


def test_stand_alone_mode_diverges_gradients_at_step_1(tmp_path):
    result = launch(str(tmp_path), "train_mlp.py", "--bug", "standalone")
    f = only(result, "grad_divergence")
    assert (f["step"], f["ranks"], f["params"]) == (1, [0, 1, 2], PARAMS)
    assert "stand_alone" in f["message"]
    assert only(result, "param_divergence")["caused_by"] == "grad_divergence@1"


def test_other_learning_rate_diverges_the_update_not_the_gradients(tmp_path):
    result = launch(str(tmp_path), "train_mlp.py", "--bug", "lr")
    f = only(result, "param_divergence")
    assert (f["step"], f["ranks"], f["params"]) == (1, [2], PARAMS)
    assert "gradients of that step agreed" in f["message"]
    assert not result.findings("grad_divergence")


def test_one_nudged_parameter_is_named_alone(tmp_path):
    result = launch(str(tmp_path), "train_mlp.py", "--bug", "nudge", "--bug-step", "7")
    f = only(result, "param_divergence")
    assert (f["step"], f["ranks"], f["params"]) == (7, [2], ["fc1.weight"])
    assert result.codes() == ["param_divergence"]
    assert [g["code"] for g in check_every_format(tmp_path)["findings"]] == ["param_divergence"]


def test_nonfinite_loss_names_the_rank_it_was_born_on(tmp_path):
    result = launch(str(tmp_path), "train_mlp.py", "--bug", "nan", "--bug-step", "4")
    f = only(result, "loss_nonfinite")
    assert (f["step"], f["ranks"]) == (4, [2])
    cause = only(result, "input_nonfinite")  # the Inf in rank 2's batch is the root
    assert (cause["step"], cause["ranks"]) == (4, [2]) and f["caused_by"] == "input_nonfinite@4"


def test_batchnorm_without_sync_is_a_warning_only(tmp_path):
    result = launch(str(tmp_path), "train_mlp.py", "--bug", "bn")
    assert result.code == 0
    f = only(result, "buffer_divergence")
    assert f["severity"] == "warning" and f["step"] == 1
    assert f["params"] == ["bn.moving_mean", "bn.moving_variance"]
    assert result.codes() == ["buffer_divergence"]


def test_unsharded_data(tmp_path):
    result = launch(str(tmp_path), "train_mlp.py", "--bug", "unsharded")
    f = only(result, "data_not_sharded")
    assert (f["step"], f["ranks"]) == (1, [0, 1, 2])


def test_long_healthy_run_with_small_batches_raises_no_error(tmp_path):
    # 2,000 steps of batch 8 on 2 ranks: per-rank minibatch losses swing widely.
    result = launch(str(tmp_path), "train_mlp.py", "--steps", "2000", "--batch-size", "8", n=2, timeout=600)
    assert result.code == 0, result.report["findings"]
    assert [f for f in result.report["findings"] if f["severity"] != "info"] == []


def test_a_frozen_weight_that_differs_is_an_init_mismatch_not_a_buffer(tmp_path):
    result = launch(str(tmp_path), "train_mlp.py", "--bug", "frozen")
    f = only(result, "init_mismatch")
    assert (f["step"], f["ranks"], f["params"]) == (0, [2], ["fc1.weight"])
    assert "frozen" in f["message"] and not result.findings("buffer_divergence")


def test_a_frozen_weight_written_to_mid_run_on_one_rank_is_an_error_not_a_buffer(tmp_path):
    result = launch(str(tmp_path), "train_mlp.py", "--bug", "frozen_nudge")
    f = only(result, "param_divergence")
    assert (f["severity"], f["step"], f["ranks"], f["params"]) == ("error", 5, [2], ["fc1.weight"])
    assert "frozen" in f["message"] and not result.findings("buffer_divergence")


def test_a_second_model_train_call_continues_the_record_as_a_segment(tmp_path):
    import h5py

    result = launch(str(tmp_path), "train_mlp.py", "--train-calls", "2", n=2)
    assert result.code == 0 and result.report["findings"] == []
    with h5py.File(tmp_path / "rank_00001.h5", "r") as f:
        assert f["steps/step"][()].tolist() == list(range(25))  # the second call's updates are steps 13..24
        assert f["steps/segment"][()].tolist() == [0] * 13 + [1] * 12
        assert f["status"][0] == 1  # finished


def test_a_finding_says_which_training_call_it_belongs_to(tmp_path):
    # two calls of 12 steps; the nudge lands before the 17th update, the 5th of the second call
    result = launch(str(tmp_path), "train_mlp.py", "--train-calls", "2", "--bug", "nudge", "--bug-step", "17")
    f = only(result, "param_divergence")
    assert (f["step"], f["ranks"], f["detail"]["training_call"]) == (17, [2], 2)
    assert result.report["run"]["training_calls"] == [{"first_step": 0, "last_step": 12},
                                                      {"first_step": 13, "last_step": 24}]


def test_gradients_above_the_copy_limit_are_not_copied_and_the_report_says_so(tmp_path):
    from distcheck.store import schema
    from distcheck.store.reader import DumpReader

    result = launch(str(tmp_path), "train_mlp.py", "--bug", "lr", options=("--grad-copy-limit", "1K"))
    f = only(result, "param_divergence")  # still found, from the parameters alone
    assert (f["step"], f["ranks"], f["params"]) == (1, [2], PARAMS)
    assert result.codes() == ["param_divergence"]
    note = next(n for n in result.report["notes"] if n["code"] == "gradients")
    assert note["ranks"] == [0, 1, 2] and "above the limit of 1 KiB (--grad-copy-limit)" in note["message"]
    with DumpReader(str(tmp_path / schema.file_name(0))) as dump:
        assert dump.n_steps and not (dump.has() & schema.HAS_GRADS).any()
        assert "--grad-copy-limit" in dump.meta["gradients"]
