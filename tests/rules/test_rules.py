"""Each per-rank rule on synthetic series written through the real recorder, against the
numbers a plain numpy computation gives."""
import numpy as np

from distcheck.config import load_config
from distcheck.findings import Note
from distcheck.rules import static_findings
from rules.series import all_codes, all_findings, healthy_batch, healthy_grads, healthy_params, judge, write


def test_a_healthy_series_raises_nothing(tmp_path):
    write(str(tmp_path), steps=60)
    assert all_codes(str(tmp_path)) == []


def test_noisy_small_batch_losses_are_not_a_divergence(tmp_path):
    # per-rank minibatch losses of a well-fit model: mostly near 0, now and then about 1
    rng = np.random.default_rng(3)
    noisy = rng.choice([0.0014, 0.02, 0.3, 1.08], size=2001, p=[0.5, 0.3, 0.15, 0.05])
    write(str(tmp_path), steps=2000, loss=lambda s: float(noisy[s]))
    assert judge(str(tmp_path), "loss_diverging") == []


def test_loss_diverging_names_the_step_the_median_runs_away(tmp_path):
    def loss(s):
        return 1.0 if s < 20 else 1.0 * 3 ** (s - 19)

    write(str(tmp_path), loss=loss)
    (f,) = judge(str(tmp_path), "loss_diverging")
    # oracle: trailing median over 10 (a quarter of 40) steps above 10x its running minimum (1.0), by > 1.0
    values = np.array([loss(s) for s in range(1, 41)])
    medians = np.array([np.median(values[max(0, i - 9):i + 1]) for i in range(40)])
    assert f.step == 1 + int(np.argmax((medians > 10 * np.minimum.accumulate(medians)) & (medians - 1 > 1)))
    assert f.step == 26


def test_a_loss_trend_is_compared_across_ranks(tmp_path):
    def runaway(start):
        return lambda s: 1.0 if s < start else 3.0 ** (s - start + 1)

    (tmp_path / "job").mkdir()
    (tmp_path / "shard").mkdir()
    for rank in range(3):  # every rank diverges, each a step apart: one finding, at the earliest
        write(str(tmp_path / "job"), loss=runaway(20 + rank), rank=rank, size=3)
    (f,) = all_findings(str(tmp_path / "job"))
    assert (f.code, f.step, f.ranks) == ("loss_diverging", 26, (0, 1, 2)) and "job-wide" in f.message
    for rank in range(3):  # only rank 1's series runs away: its data, not the learning rate
        write(str(tmp_path / "shard"), loss=runaway(20) if rank == 1 else None, rank=rank, size=3)
    (f,) = all_findings(str(tmp_path / "shard"))
    assert (f.code, f.ranks) == ("loss_diverging", (1,)) and "rank(s) 0, 2 at the same steps do not" in f.message


def test_ranks_that_record_no_loss_are_not_counted_against_a_trend(tmp_path):
    # ranks 0 and 1 are non-last pipeline stages (they record no loss); 2 and 3 both run away
    for rank in range(4):
        write(str(tmp_path), rank=rank, size=4,
              loss=(lambda s: None) if rank < 2 else (lambda s: 1.0 if s < 20 else 3.0 ** (s - 19)))
    (f,) = all_findings(str(tmp_path))
    assert (f.code, f.ranks) == ("loss_diverging", (2, 3)) and "job-wide" in f.message
    assert "rank(s) 0, 1 record none" in f.message and "look at the data" not in f.message


def test_a_healthy_loss_that_crosses_zero_is_not_a_divergence(tmp_path):
    # a Gaussian negative log-likelihood: from 2 down through 0 to -2, slowly, with noise
    noise = np.random.default_rng(5).normal(0, 0.05, 301)
    write(str(tmp_path), steps=300, loss=lambda s: max(2.0 - s / 50, -2.0) + float(noise[s]))
    assert judge(str(tmp_path), "loss_diverging") == []
    # the same loss running away from -2 is still caught
    write(str(tmp_path / "b"), steps=300, loss=lambda s: max(2.0 - s / 50, -2.0) if s < 250 else 3.0 ** (s - 249))
    (f,) = judge(str(tmp_path / "b"), "loss_diverging")
    assert 250 < f.step < 270 and "above its lowest, -2" in f.message


def test_a_single_loss_spike_is_not_a_divergence(tmp_path):
    write(str(tmp_path), loss=lambda s: 2.0 / s if s != 30 else 50.0)
    assert judge(str(tmp_path), "loss_diverging") == []


def test_loss_not_decreasing(tmp_path):
    write(str(tmp_path), steps=60, loss=lambda s: 1.0 + 0.01 * np.sin(s))
    (f,) = judge(str(tmp_path), "loss_not_decreasing")
    assert f.step == 60
    write(str(tmp_path / "b"), steps=60, loss=lambda s: 1.0 - 0.005 * s)  # 1.0 -> 0.7: decreasing
    assert judge(str(tmp_path / "b"), "loss_not_decreasing") == []


def test_a_short_run_is_too_short_to_judge_a_trend(tmp_path):
    write(str(tmp_path), steps=30, loss=lambda s: 1.0 + 0.01 * np.sin(s))
    (note,) = judge(str(tmp_path), "loss_not_decreasing")
    assert isinstance(note, Note) and "30 finite recorded loss(es), 50 are needed" in note.message


def test_loss_zero(tmp_path):
    write(str(tmp_path), loss=lambda s: 0.0 if s >= 12 else 1.0 / s)
    (f,) = judge(str(tmp_path), "loss_zero")
    assert f.step == 12


def test_a_rare_zero_loss_is_float32_underflow(tmp_path):
    write(str(tmp_path), loss=lambda s: 0.0 if s == 17 else 1.0 / s)  # 1 of 40: 2.5%, never twice in a row
    assert judge(str(tmp_path), "loss_zero") == []
    write(str(tmp_path / "b"), loss=lambda s: 0.0 if s in (17, 18, 19) else 1.0 / s)  # 3 in a row
    assert judge(str(tmp_path / "b"), "loss_zero")[0].step == 17


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


def test_grad_exploding_sustained_and_nonfinite_but_not_one_spike(tmp_path):
    def spike(s):
        g = healthy_grads(s)
        return [x * (100 if s == 25 else 1) for x in g]

    write(str(tmp_path), grads=spike)
    assert judge(str(tmp_path), "grad_exploding") == []  # one spike moves no median of 3

    def explode(s):
        g = healthy_grads(s)
        return [x * (100 if s >= 25 else 1) for x in g]

    write(str(tmp_path / "c"), grads=explode)
    (f,) = judge(str(tmp_path / "c"), "grad_exploding")
    assert f.step == 26 and "stayed high" in f.message  # steps 24, 25, 26: two of three high

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


def test_updates_skipped_by_loss_scale_overflows(tmp_path):
    (tmp_path / "settling").mkdir()
    (tmp_path / "stuck").mkdir()
    # a dynamic loss scale settling: the first 8 steps and one later step overflow
    write(str(tmp_path / "settling"), steps=200, skipped=lambda t: t <= 8 or t == 150)
    (note,) = judge(str(tmp_path / "settling"), "updates_skipped")
    assert isinstance(note, Note) and note.message.startswith("9 training step(s) skipped their update")
    assert "weights_not_updated" not in all_codes(str(tmp_path / "settling"))
    # from step 60 on, every other step overflows: 70 of the 180 steps after the first 20
    write(str(tmp_path / "stuck"), steps=200, skipped=lambda t: t >= 60 and t % 2 == 0)
    (f,) = judge(str(tmp_path / "stuck"), "updates_skipped")
    assert f.step == 59 and f.message.startswith("71 of 180 training steps after the first 20 (39%)")


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


def _v(w):  # oracle: variance x fan-in
    return float(np.var(w.astype(np.float64)) * w.shape[1])


def test_init_poor_quiet_within_the_standard_band(tmp_path):
    write(str(tmp_path))  # std 1/sqrt(fan_in) in both layers: v = 1, LeCun
    assert judge(str(tmp_path), "init_poor") == []

    def small(s):  # weight_init="normal" (std 0.01) in a shallow net: shrinks about 1e-2, trains fine
        p = healthy_params(s)
        rng = np.random.default_rng(5)
        return [rng.normal(0, 0.01, (16, 8)).astype(np.float32) if s == 0 else p[0], p[1],
                rng.normal(0, 0.01, (4, 16)).astype(np.float32) if s == 0 else p[2]]

    write(str(tmp_path / "s"), params=small)
    assert judge(str(tmp_path / "s"), "init_poor") == []


def test_init_poor_compounds_the_excess_gain_over_a_chain(tmp_path):
    def params(s):
        p = healthy_params(s)
        return [p[0] * 3, p[1], p[2] * 8]  # v = 9 and 64: excess sqrt(9/2) x sqrt(64/2) = 12

    write(str(tmp_path), params=params)
    (f,) = judge(str(tmp_path), "init_poor")
    w = params(0)
    gain = np.sqrt(_v(w[0]) / 2) * np.sqrt(_v(w[2]) / 2)
    assert gain > 10 and f.params == ("l1.weight", "l2.weight")
    assert f"{gain:.3g}x over 2 layer(s)" in f.message
    assert judge(str(tmp_path), "init_poor", max_gain=gain * 1.01) == []
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


def test_labels_that_start_at_1_are_balanced(tmp_path):
    def batch(s):  # classes 1..4, uniform: there is no class 0
        return [healthy_batch(s)[0], np.random.default_rng(s).integers(1, 5, 32).astype(np.int32)]

    write(str(tmp_path), batch=batch)
    assert judge(str(tmp_path), "class_imbalance") == []
    # declared: 5 classes (0..4), so class 0 exists and was never seen
    (f,) = judge(str(tmp_path), "class_imbalance", classes=5)
    assert "class 0 0 times" in f.message and "of 5 classes" in f.message
    (note,) = judge(str(tmp_path), "class_imbalance", classes="five")
    assert isinstance(note, Note) and "must be the number of classes" in note.message


def test_class_balance_is_not_judged_on_too_few_labels_per_class(tmp_path):
    # 24 batches of 32 uniform labels over 64 classes: some class is never seen by chance.
    write(str(tmp_path), steps=24, batch=lambda s: [healthy_batch(s)[0],
                                                    np.random.default_rng(s).integers(0, 64, 32).astype(np.int32)])
    (note,) = judge(str(tmp_path), "class_imbalance")
    assert isinstance(note, Note) and "768 labels over 64 classes, 50 per class are needed" in note.message


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


def test_vectorised_running_levels_match_a_plain_loop():
    from distcheck.rules.gradients import _levels
    from distcheck.rules.loss import rolling_median

    rng = np.random.default_rng(5)
    norm = rng.lognormal(size=300)
    norm[[7, 40, 41, 200]] = [np.nan, np.inf, np.nan, np.nan]
    window, span = 50, 3
    level, recent = _levels(norm, window, span)
    for i in range(len(norm)):
        if i < span - 1:
            assert np.isnan(level[i]) and np.isnan(recent[i])
            continue
        last = norm[i - span + 1:i + 1]
        history = norm[max(0, i - span + 1 - window):i - span + 1]
        history = history[np.isfinite(history)]
        if np.all(np.isfinite(last)) and len(history):
            assert level[i] == np.median(history) and recent[i] == np.median(last)
        else:
            assert np.isnan(level[i])
    values = rng.lognormal(size=100)
    assert np.array_equal(rolling_median(values, 20), [np.median(values[max(0, i - 19):i + 1]) for i in range(100)])
