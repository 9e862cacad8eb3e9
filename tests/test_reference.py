"""Units of ``distcheck diff`` against a reference: the one-ulp perturbation, the envelope,
shard reassembly and global batches against numpy, and the factor finder."""
import numpy as np
import pytest

from distcheck.digest import STAT_NAMES
from distcheck.reference import envelope as env
from distcheck.reference.factors import Factor, common_factor, describe, find_factor
from distcheck.reference.shards import combine_inputs, combine_shards
from distcheck.reference.ulp import bfloat16_one_ulp_apart, one_ulp_apart


def _stats(a: np.ndarray, delta: np.ndarray) -> np.ndarray:
    finite = a[np.isfinite(a)]
    return np.array([finite.min(), finite.max(), a.mean(dtype=np.float64), np.sqrt((a.astype(np.float64) ** 2).sum()),
                     np.isnan(a).sum(), np.isinf(a).sum(), np.sqrt((delta.astype(np.float64) ** 2).sum())])


def test_shard_statistics_rebuild_the_whole_tensor_as_numpy_computes_it():
    rng = np.random.default_rng(0)
    whole = rng.standard_normal((6, 10)).astype(np.float32)
    delta = rng.standard_normal((6, 10)).astype(np.float32) * 1e-3
    pieces = [slice(0, 1), slice(1, 4), slice(4, 6)]  # uneven shards
    shards = np.stack([_stats(whole[p], delta[p]) for p in pieces])
    got = combine_shards(shards, [whole[p].size for p in pieces])
    want = _stats(whole, delta)
    assert STAT_NAMES == ("min", "max", "mean", "l2", "nan", "inf")
    np.testing.assert_allclose(got, want, rtol=1e-12)
    whole[0, 0], whole[5, 1] = np.nan, np.inf
    shards = np.stack([_stats(whole[p], delta[p]) for p in pieces])
    got = combine_shards(shards, [whole[p].size for p in pieces])
    assert (got[4], got[5]) == (1, 1)


def test_a_batch_split_over_ranks_combines_to_the_global_batch():
    rng = np.random.default_rng(1)
    batch = rng.standard_normal((16, 5)) * 3 + 1
    rows = []
    for r in range(2):
        part = batch[r::2]
        rows.append([part.min(), part.max(), part.mean(), part.std(), 0, 0, part.size])
    got = combine_inputs(np.array(rows))
    np.testing.assert_allclose(got, [batch.min(), batch.max(), batch.mean(), batch.std(), 0, 0, batch.size],
                               rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_one_ulp_moves_each_nonzero_finite_value_to_its_neighbour(dtype):
    values = np.array([1.0, -2.5, 0.0, np.inf, np.nan, 3e-3, -7.0] * 20, dtype)
    moved = one_ulp_apart(values, index=3)
    finite = np.isfinite(values) & (values != 0)
    up, down = np.nextafter(values, dtype(np.inf)), np.nextafter(values, dtype(-np.inf))
    assert ((moved == up) | (moved == down))[finite].all()
    assert (moved[finite] > values[finite]).any() and (moved[finite] < values[finite]).any()
    assert moved[values == 0].tolist() == [0.0] * 20 and np.isinf(moved[3]) and np.isnan(moved[4])
    np.testing.assert_array_equal(moved, one_ulp_apart(values, index=3))  # every rank alike
    assert not np.array_equal(moved, one_ulp_apart(values, index=3, step=1))  # new signs each step


def test_bfloat16_bits_move_by_one_ulp():
    as_float = np.array([1.0, -1.0, 0.0, -0.0, np.inf, 3.5], np.float32)
    bits = (as_float.view(np.uint32) >> 16).astype(np.uint16)
    moved = bfloat16_one_ulp_apart(bits, index=0)
    back = (moved.astype(np.uint32) << 16).view(np.float32)
    steps = np.abs(moved.astype(np.int32) - bits.astype(np.int32))  # neighbours differ by one in their bits
    assert steps.tolist() == [1, 1, 0, 0, 0, 1]
    assert back[2] == 0 and back[3] == 0 and np.isinf(back[4]) and np.isfinite(back[[0, 1, 5]]).all()


def test_measured_envelope_is_monotone_pooled_and_never_below_the_floor():
    ref = np.array([[1.0, 10.0], [1.0, 10.0], [1.0, 10.0], [1.0, 10.0]])
    noise = np.array([[1.0, 10.0], [1.001, 10.0], [1.0, 10.0], [1.0, 10.0]])  # drifts, then comes back
    bounds = env.measured(ref, noise, np.abs(ref), env.EPSILON["float32"])
    floor = env.FLOOR_ULPS * env.EPSILON["float32"] * np.abs(ref)
    np.testing.assert_allclose(bounds.allowed[0], floor[0])  # no drift yet: the floor
    np.testing.assert_allclose(bounds.allowed[1:, 0], env.SAFETY * 1e-3, rtol=1e-6)  # kept once seen
    np.testing.assert_allclose(bounds.allowed[1:, 1], env.SAFETY * 1e-3 * 10, rtol=1e-6)  # pooled: 1e-3 relative
    assert (np.diff(bounds.allowed, axis=0) >= 0).all()


def test_default_envelope_grows_with_the_step_and_gives_up_at_100_percent():
    steps = np.array([0, 1, 100, 169, 170, 400])
    bounds = env.default(steps, np.ones(len(steps)), env.EPSILON["float32"])
    eps = env.EPSILON["float32"]
    np.testing.assert_allclose(bounds.allowed[:4], env.FLOOR_ULPS * eps * np.exp2(steps[:4] / 10))
    assert np.isinf(bounds.allowed[4:]).all() and env.saturation_step(steps, eps) == 170
    bf16 = env.epsilon("bfloat16")  # a floor of 4 ulps (3%), doubling: 100% from step 50
    assert env.saturation_step(np.arange(100), bf16) == 50


def test_outside_ignores_values_one_side_did_not_record():
    bounds = env.fixed(np.ones(3), 0.0, 0.1)
    assert env.outside(np.array([1.0, np.nan, 1.0]), np.array([1.5, 1.0, 1.05]), bounds).tolist() == [True, False,
                                                                                                        False]


def test_a_common_factor_is_found_and_named_with_its_causes():
    ref = np.array([[np.nan] * 3, [0.5, 0.25, 2.0], [0.4, 0.2, 1.5]])
    run = ref * 2
    loss_ref, loss_run = np.array([np.nan, 1.3, 1.2]), np.array([np.nan, 1.3, 1.2])
    f = find_factor(np.array([0, 1, 2]), ref, run, loss_ref, loss_run)
    assert (f.step, f.value, f.through, f.loss_ratio) == (1, 2.0, 2, 1.0)
    text = describe(f, 1, 2, gradients_mean_run=False)
    assert "2x" in text and "summed over the ranks instead of averaged" in text and "gradients_mean=False" in text
    scaled = describe(Factor(1, 2.0, 0.0, 2.0, 1), 1, 2, None)
    assert "loss is multiplied by the world size" in scaled and "instead of averaged" not in scaled
    assert common_factor(np.array([1.0, 2.0]), np.array([1.0, 2.0])) is None  # no factor
    assert common_factor(np.array([1.0, 2.0]), np.array([2.0, 3.0])) is None  # not one factor


def _grad_stats(a: np.ndarray) -> np.ndarray:
    return _stats(a, np.zeros_like(a))


@pytest.mark.parametrize("shard, factor", [(1, 3.0), (0, 0.5), (2, 2.0)])
def test_one_scaled_shard_is_found_with_its_factor(shard, factor):
    from distcheck.reference.pieces import scaled_piece

    rng = np.random.default_rng(shard)
    whole = rng.standard_normal((6, 8)).astype(np.float32)
    pieces = [whole[0:2], whole[2:4], whole[4:6]]
    reference = _grad_stats(whole)
    run = np.stack([_grad_stats(p * (factor if j == shard else 1)) for j, p in enumerate(pieces)])
    found = scaled_piece(reference, run, [p.size for p in pieces])
    assert found.shard == shard and found.factor == pytest.approx(factor, rel=1e-5)
    every = np.stack([_grad_stats(p * 2) for p in pieces])
    assert scaled_piece(reference, every, [p.size for p in pieces]).shard is None
    assert scaled_piece(reference, np.stack([_grad_stats(p) for p in pieces]), [16] * 3) is None  # agrees
    other = np.stack([_grad_stats(p + (0.3 if j == shard else 0)) for j, p in enumerate(pieces)])
    assert scaled_piece(reference, other, [p.size for p in pieces]) is None  # no factor: no story


def test_a_scaled_piece_is_named_by_the_layout():
    from distcheck.reference.pieces import name_factor

    assert "summed over the group instead of averaged" in name_factor(3.0, 3, 2)
    assert "divided by the group size once too often" in name_factor(1 / 3, 3, 2)
    assert "number of shards (2)" in name_factor(2.0, 3, 2)
    assert "Likely causes" in name_factor(1.7, 3, 2)


def test_the_first_tap_outside_its_envelope_at_the_first_parting_step_is_named():
    from distcheck.reference.layers import first_layer

    steps = np.arange(4)
    ref = np.tile(np.array([0.5, 0.5, 1.0, 4.0]), (4, 2, 1))
    run = ref.copy()
    run[2:, 1, 2] = 1.1  # the second tap's mean from step 2
    run[3:, 0, 3] = 5.0  # the first tap's largest output from step 3
    parting = first_layer(steps, ["a", "b"], ref, run, lambda name, a, scale: env.fixed(scale, 1e-3, 0.0))
    assert (parting.step, parting.taps, parting.statistic) == (2, ["b"], "mean output")
    assert first_layer(steps, ["a", "b"], ref, ref.copy(), lambda n, a, s: env.fixed(s, 1e-3, 0.0)) is None
