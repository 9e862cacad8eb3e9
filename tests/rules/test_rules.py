"""Each per-rank rule on synthetic series written through the real recorder, against the
numbers a plain numpy computation gives."""
import numpy as np

from distcheck.config import load_config
from distcheck.rules import static_findings
from rules.series import all_codes, healthy_batch, healthy_grads, healthy_params, judge, write


def test_a_healthy_series_raises_nothing(tmp_path):
    write(str(tmp_path))
    assert all_codes(str(tmp_path)) == []


def test_loss_diverging_names_the_first_runaway_step(tmp_path):
    write(str(tmp_path), loss=lambda s: 1.0 if s < 20 else 1.0 * 3 ** (s - 19))
    (f,) = judge(str(tmp_path), "loss_diverging")
    # oracle: first step whose loss exceeds 10x the running minimum (1.0) by more than 1.0
    assert f.step == 22  # 3**3 = 27 > 10


def test_a_single_jump_counts_as_divergence(tmp_path):
    write(str(tmp_path), loss=lambda s: 2.0 / s if s != 30 else 50.0)
    (f,) = judge(str(tmp_path), "loss_diverging")
    assert f.step == 30


def test_loss_not_decreasing(tmp_path):
    write(str(tmp_path), loss=lambda s: 1.0 + 0.01 * np.sin(s))
    (f,) = judge(str(tmp_path), "loss_not_decreasing")
    assert f.step == 40
    write(str(tmp_path / "b"), loss=lambda s: 1.0 - 0.005 * s)  # 1.0 -> 0.8: decreasing
    assert judge(str(tmp_path / "b"), "loss_not_decreasing") == []


def test_loss_zero(tmp_path):
    write(str(tmp_path), loss=lambda s: 0.0 if s >= 12 else 1.0 / s)
    (f,) = judge(str(tmp_path), "loss_zero")
    assert f.step == 12


def test_grad_vanishing_by_relative_and_absolute_rms(tmp_path):
    def grads(s):
        g = healthy_grads(s)
        return [g[0] * 1e-5, g[1], g[2]]

    write(str(tmp_path), grads=grads)
    (f,) = judge(str(tmp_path), "grad_vanishing")
    assert f.params == ("l1.weight",)
    # oracle: RMS of N(0, 0.1) * 1e-5 is ~1e-6, above 1e-7 but 1e-5 of the others
    assert judge(str(tmp_path), "grad_vanishing", relative=1e-9) == []
    assert judge(str(tmp_path), "grad_vanishing", relative=1e-9, absolute=1e-5)[0].params == ("l1.weight",)


def test_grad_exploding_spike_and_nonfinite(tmp_path):
    def spike(s):
        g = healthy_grads(s)
        return [x * (100 if s == 25 else 1) for x in g]

    write(str(tmp_path), grads=spike)
    (f,) = judge(str(tmp_path), "grad_exploding")
    assert f.step == 25 and "jumped" in f.message

    def nan(s):
        g = healthy_grads(s)
        if s >= 7:
            g[2][0, 0] = np.nan
        return g

    write(str(tmp_path / "b"), grads=nan)
    (f,) = judge(str(tmp_path / "b"), "grad_exploding")
    assert f.step == 7 and f.params == ("l2.weight",)


def test_weights_not_updated_names_each_frozen_parameter(tmp_path):
    def params(s):
        p = healthy_params(s)
        return [p[0], p[1], healthy_params(0)[2]]

    write(str(tmp_path), params=params)
    (f,) = judge(str(tmp_path), "weights_not_updated")
    assert f.params == ("l2.weight",)


def test_update_ratios_against_a_numpy_oracle(tmp_path):
    write(str(tmp_path))
    p = [healthy_params(s)[0].astype(np.float64) for s in range(41)]
    oracle = np.median([np.linalg.norm(p[s] - p[s - 1]) / np.linalg.norm(p[s]) for s in range(1, 41)])
    (f,) = judge(str(tmp_path), "update_ratio_small", threshold=oracle * 1.01)
    assert "l1.weight" in f.params
    assert f"l1.weight {oracle:.2g}" in f.message
    below = judge(str(tmp_path), "update_ratio_small", threshold=oracle * 0.99)
    assert all("l1.weight" not in f.params for f in below)
    (f,) = judge(str(tmp_path), "update_ratio_large", threshold=oracle * 0.5)
    assert "l1.weight" in f.params


def test_init_all_zero_skips_biases(tmp_path):
    def params(s):
        p = healthy_params(s)
        return [np.zeros_like(p[0]) if s == 0 else p[0], np.zeros(16, np.float32), p[2]]

    write(str(tmp_path), params=params)
    (f,) = judge(str(tmp_path), "init_all_zero")
    assert f.params == ("l1.weight",) and f.step == 0


def test_init_poor_compares_variance_times_fan_in(tmp_path):
    write(str(tmp_path))  # std 1/sqrt(fan_in) in both layers: balanced
    assert judge(str(tmp_path), "init_poor") == []

    def params(s):
        p = healthy_params(s)
        return [p[0], p[1], p[2] * 10]  # 100x the variance

    write(str(tmp_path / "b"), params=params)
    (f,) = judge(str(tmp_path / "b"), "init_poor")
    assert f.params == ("l2.weight", "l1.weight")


def test_input_not_normalized(tmp_path):
    write(str(tmp_path), batch=lambda s: [healthy_batch(s)[0] * 1000, healthy_batch(s)[1]])
    (f,) = judge(str(tmp_path), "input_not_normalized")
    assert "standard deviation" in f.message


def test_class_imbalance(tmp_path):
    def batch(s):
        x, y = healthy_batch(s)
        y = np.where(np.arange(32) < 30, 0, y)  # class 0 dominates
        y[31] = 3
        return [x, y.astype(np.int32)]

    write(str(tmp_path), batch=batch)
    (f,) = judge(str(tmp_path), "class_imbalance")
    assert "class 0" in f.message


def test_data_not_shuffled(tmp_path):
    write(str(tmp_path), batch=lambda s: [healthy_batch(s)[0], np.full(32, (s * 4) // 41, np.int32)])
    (f,) = judge(str(tmp_path), "data_not_shuffled")
    assert "100%" in f.message


def test_activation_rules(tmp_path):
    acts = [("block.0", "sigmoid"), ("block.1", "relu"), ("block.2", "tanh")]
    table = {0: [0.8, 0.0, 0.5, 1.0], 1: [0.95, 0.95, 0.0, 2.0], 2: [0.1, 0.0, 0.0, 0.9]}
    write(str(tmp_path), activations=acts, act_stats=lambda s, i: np.array(table[i], np.float32))
    (sat,) = judge(str(tmp_path), "activation_saturated")
    (dead,) = judge(str(tmp_path), "dead_relu")
    assert sat.params == ("block.0",) and dead.params == ("block.1",)


def test_static_rules_on_a_setup_description():
    static = {"network_training": True,
              "params": [{"name": "a.weight", "requires_grad": True, "in_optimizer": True},
                         {"name": "b.weight", "requires_grad": True, "in_optimizer": False}],
              "batchnorms": [{"cell": "bn", "training": False, "use_batch_statistics": None}],
              "dropouts": [{"cell": "drop", "keep_prob": 0.1}, {"cell": "ok", "keep_prob": 0.9}],
              "optimizer": {"class": "Momentum", "learning_rate": 0.1, "weight_decay": 0.0}}
    found = {f.code: f for f in static_findings(static, 0, load_config())}
    assert found["frozen_by_accident"].params == ("b.weight",)
    assert found["bn_in_eval_mode"].params == ("bn",)
    assert found["dropout_keep_prob"].params == ("drop",)
