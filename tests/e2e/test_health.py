"""Real single-device MindSpore trainings (Model.train, GRAPH_MODE, CPU) with one planted
accuracy problem each, attached with `distcheck launch -n 1 --launcher none --activations`."""
import pytest

from e2e.jobs import launch, only

pytestmark = pytest.mark.slow

WEIGHTS = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "head.weight", "head.bias"]


def _health(tmp_path, problem):
    return launch(str(tmp_path), "train_health.py", "--problem", problem, n=1, launcher="none",
                  options=("--activations",))


def test_healthy_run_raises_no_warning(tmp_path):
    result = _health(tmp_path, "none")
    assert result.code == 0 and result.report["findings"] == []


def test_learning_rate_far_too_large(tmp_path):
    result = _health(tmp_path, "lr_huge")
    root = only(result, "update_ratio_large")
    assert root["step"] == 1 and "fc1.weight" in root["params"] and root["caused_by"] is None
    loss = only(result, "loss_nonfinite")
    assert (loss["step"], loss["ranks"], loss["caused_by"]) == (2, [0], "update_ratio_large@1")


def test_learning_rate_zero(tmp_path):
    result = _health(tmp_path, "lr_zero")
    f = only(result, "weights_not_updated")
    assert f["params"] == WEIGHTS and "learning rate is 0" in f["message"]
    assert only(result, "loss_not_decreasing")["caused_by"] == f"weights_not_updated@{f['step']}"


def test_one_layer_initialised_to_zeros(tmp_path):
    result = _health(tmp_path, "zero_init")
    f = only(result, "init_all_zero")
    assert (f["step"], f["params"]) == (0, ["fc2.weight"])


def test_deep_sigmoid_stack_vanishes_in_its_first_layers(tmp_path):
    result = _health(tmp_path, "deep_sigmoid")
    f = only(result, "grad_vanishing")
    assert f["params"][:3] == ["body.0.weight", "body.2.weight", "body.4.weight"]
    assert "head.weight" not in f["params"]


def test_parameter_left_out_of_the_optimizer(tmp_path):
    result = _health(tmp_path, "frozen")
    f = only(result, "frozen_by_accident")
    assert (f["step"], f["params"]) == (0, ["fc1.weight"])
    stuck = only(result, "weights_not_updated")
    assert stuck["params"] == ["fc1.weight"] and stuck["caused_by"] == "frozen_by_accident@0"


def test_dropout_keep_prob_looks_inverted(tmp_path):
    result = _health(tmp_path, "dropout")
    f = only(result, "dropout_keep_prob")
    assert (f["step"], f["params"]) == (0, ["drop"]) and "keeps 10%" in f["message"]


def test_inputs_scaled_by_1000(tmp_path):
    result = _health(tmp_path, "scaled_inputs")
    f = only(result, "input_not_normalized")
    assert f["caused_by"] is None and "standard deviation" in f["message"]


def test_dataset_sorted_by_label(tmp_path):
    result = _health(tmp_path, "sorted_labels")
    f = only(result, "data_not_shuffled")
    assert "100%" in f["message"] and f["caused_by"] is None


def test_weights_too_large_for_their_width_are_the_root_cause_of_the_inf_loss(tmp_path):
    result = _health(tmp_path, "bad_init")
    f = only(result, "init_poor")
    assert f["step"] == 0 and f["caused_by"] is None and "body.0.weight" in f["params"]
    assert only(result, "loss_nonfinite")["caused_by"] == "init_poor@0"


def test_one_layer_with_weight_init_normal_among_defaults_is_healthy(tmp_path):
    result = _health(tmp_path, "mixed_init")
    assert result.code == 0 and result.report["findings"] == []


def test_resnet_style_cnn_with_default_inits_is_healthy(tmp_path):
    result = launch(str(tmp_path), "train_health.py", "--net", "resnet", n=1, launcher="none")
    assert result.code == 0 and result.report["findings"] == []


def test_gradients_scaled_by_a_fixed_loss_scale_are_judged_unscaled(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "scaled").mkdir()
    plain = _health(tmp_path / "plain", "deep_sigmoid")
    scaled = launch(str(tmp_path / "scaled"), "train_health.py", "--problem", "deep_sigmoid", "--loss-scale", "1024",
                    n=1, launcher="none", options=("--activations",))
    # the optimizer receives gradients x1024 and undoes it itself; the rule sees the same magnitudes
    assert only(scaled, "grad_vanishing")["message"] == only(plain, "grad_vanishing")["message"]


def test_gradient_accumulation_is_recorded_once_per_update(tmp_path):
    import h5py

    # 80 micro-steps, 4 per update: MindSpore's cur_step_num counts 80, the optimizer runs 20 times
    result = launch(str(tmp_path), "train_accumulate.py", "--accumulate", "4", "--steps", "80", n=1,
                    launcher="none")
    assert result.code == 0 and result.report["findings"] == []  # no update_ratio_small from micro-steps
    with h5py.File(tmp_path / "rank_00000.h5", "r") as f:
        assert f["steps/step"][()].tolist() == list(range(21))
        assert all(h & 2 for h in f["steps/has"][1:])  # every update's accumulated gradients


def test_float16_weights_with_dynamic_loss_scaling(tmp_path):
    import h5py
    import numpy as np

    # Dynamic loss scaling from 2^24 overflows float16 gradients for the first few steps;
    # those skip their update and are recorded as skipped, not as updates.
    result = launch(str(tmp_path), "train_health.py", "--float16", "--dynamic-loss-scale", str(2 ** 24),
                    "--steps", "60", n=1, launcher="none")
    assert result.code == 0 and result.report["findings"] == []
    with h5py.File(tmp_path / "rank_00000.h5", "r") as f:
        skipped = f["skipped/after"][()]
        steps = f["steps/step"][()]
        assert set(x.decode() if isinstance(x, bytes) else x for x in f["params/dtype"][()]) == {"float16"}
        update_norms = f["param/stats"][1:, :, -1]
    assert 0 < len(skipped) < 20 and steps[-1] == 60 - len(skipped)
    assert np.isfinite(update_norms).all() and (update_norms > 0).all()  # float16 updates are measured
    note = [n for n in result.report["notes"] if n["code"] == "updates_skipped"]
    assert len(note) == 1 and f"{len(skipped)} training step(s) skipped" in note[0]["message"]


def test_every_update_skipped_by_loss_scale_overflow(tmp_path):
    result = launch(str(tmp_path), "train_health.py", "--problem", "nan_grad", "--dynamic-loss-scale", "1024",
                    "--steps", "60", n=1, launcher="none")
    f = only(result, "updates_skipped")
    assert "40 of 40 training steps" in f["message"]
    assert result.codes() == ["updates_skipped"]  # not weights_not_updated: no update was recorded


def test_large_weights_take_turns_at_having_their_update_measured(tmp_path):
    # The benchmark's Model.train job: four 1600x1600 weights (10 MB each) take turns; the
    # 1600x64 head and the biases, under 1 MiB, are measured at every recorded step. The
    # turns give the numbers a copy of every parameter gives, at their steps.
    import h5py
    import numpy as np

    norms = {}
    for turns in ("4", "1"):
        out = tmp_path / f"turns{turns}"
        out.mkdir()
        result = launch(str(out), "bench/model_train_job.py", str(out / "times.json"), "--steps", "12", n=1,
                        launcher="none", options=("--update-norm-every", turns))
        assert result.code == 0 and result.report["findings"] == [], result.report["findings"]
        with h5py.File(out / "rank_00000.h5", "r") as f:
            names = [x.decode() if isinstance(x, bytes) else x for x in f["params/name"][()]]
            norms[turns] = f["param/stats"][:, :, -1]
    every, turns = norms["1"], norms["4"]
    rows = len(every)
    assert rows == 13 and turns.shape == every.shape and np.isfinite(every[1:]).all()  # 12 steps and step 0
    big = [i for i, n in enumerate(names) if n.endswith("weight") and not n.startswith("8.")]
    assert len(big) == 4
    seen = []
    for row in range(1, rows):
        measured = np.isfinite(turns[row])
        (turn,) = [b for b in big if measured[b]]  # one big weight per step; the others' norms unknown
        seen.append(turn)
        assert measured.sum() == len(names) - 3
        np.testing.assert_allclose(turns[row][measured], every[row][measured], rtol=1e-5)
    assert all(sorted(seen[i:i + 4]) == sorted(big) for i in range(0, rows - 1, 4))  # each in turn
