import numpy as np
import pytest
import xxhash

from distcheck.digest import STAT_NAMES, digest, stats


def _oracle_stats(a: np.ndarray) -> np.ndarray:
    x = a.astype(np.float64).ravel()
    finite = x[np.isfinite(x)]
    nan, inf = np.isnan(x).sum(), np.isinf(x).sum()
    if finite.size:
        lo, hi, mean = finite.min(), finite.max(), finite.mean()
    else:
        lo = hi = mean = np.nan
    l2 = np.nan if nan else (np.inf if inf else np.sqrt((finite ** 2).sum()))
    return np.array([lo, hi, mean, l2, nan, inf])


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int8", "int32", "int64", "uint8", "bool"])
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 5), (2, 0, 4)])
def test_digest_is_xxh3_of_raw_bytes_and_stats_match_numpy(dtype, shape):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal(shape) * 10).astype(dtype)
    lo, hi = digest(a)
    assert (hi << 64) | lo == xxhash.xxh3_128_intdigest(a.tobytes())
    if a.size:
        np.testing.assert_allclose(stats(a), _oracle_stats(a), rtol=2e-3, equal_nan=True)
    else:
        assert stats(a)[3] == 0 and np.isnan(stats(a)[0])


def test_digest_is_bit_exact():
    a = np.zeros(4, np.float32)
    b = a.copy()
    b[2] = -0.0  # equal as numbers, different bits
    assert digest(a) != digest(b)
    c = a.copy()
    c.view(np.uint32)[1] ^= 1  # one flipped bit
    assert digest(a) != digest(c)
    assert digest(a) == digest(a.copy())


def test_non_contiguous_arrays_hash_their_values():
    a = np.arange(20, dtype=np.float32).reshape(4, 5)
    assert digest(a.T) == digest(np.ascontiguousarray(a.T))


def test_nonfinite_values_are_counted_and_skipped_in_min_max_mean():
    a = np.array([1.0, np.nan, np.inf, -2.0, np.nan], np.float32)
    s = dict(zip(STAT_NAMES, stats(a)))
    assert (s["nan"], s["inf"], s["min"], s["max"], s["mean"]) == (2, 1, -2.0, 1.0, -0.5)
    assert np.isnan(s["l2"])
    only_inf = dict(zip(STAT_NAMES, stats(np.array([np.inf, 1.0]))))
    assert only_inf["l2"] == np.inf and only_inf["nan"] == 0


def test_l2_does_not_overflow_float32():
    a = np.full(4, 3e38, np.float32)
    np.testing.assert_allclose(stats(a)[3], np.sqrt(4) * 3e38, rtol=1e-6)


def test_bfloat16_bits_are_widened_for_stats():
    values = np.array([1.0, -2.5, 0.15625], np.float32)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)  # exact in bfloat16
    s = stats(bits, "bfloat16")
    np.testing.assert_allclose(s[:4], _oracle_stats(values)[:4], rtol=1e-6)
    assert digest(bits) == digest(bits.copy())
