import numpy as np
import pytest

from distcheck.difference import compare_tensors, infer_from_stats, popcount
from distcheck.digest import stats

WIDTHS = {"float16": (np.float16, np.uint16, 16), "bfloat16": (None, np.uint16, 16),
          "float32": (np.float32, np.uint32, 32)}


def _tensor(dtype: str, n: int = 257) -> np.ndarray:
    values = np.random.default_rng(0).normal(0, 0.1, n).astype(np.float32)
    if dtype == "bfloat16":
        return (values.view(np.uint32) >> 16).astype(np.uint16)  # bfloat16 bits, as the probe keeps them
    return values.astype(WIDTHS[dtype][0])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_every_single_bit_flip_is_named_with_its_bit_and_field(dtype):
    clean = _tensor(dtype)
    _, unsigned, width = WIDTHS[dtype]
    mantissa = {"float16": 10, "bfloat16": 7, "float32": 23}[dtype]
    for bit in range(width):
        flipped = clean.copy()
        flipped.view(unsigned)[37] ^= unsigned(1 << bit)
        kind = compare_tensors(flipped, clean, dtype)
        assert (kind.kind, kind.bit, kind.differing, kind.size) == ("bit_flip", bit, 1, clean.size)
        want = "mantissa" if bit < mantissa else "sign" if bit == width - 1 else "exponent"
        assert kind.field == want and kind.hardware_suspect and "node" in kind.advice()


def test_two_bits_in_one_element_is_one_element_not_a_bit_flip():
    clean = _tensor("float32")
    other = clean.copy()
    other.view(np.uint32)[3] ^= np.uint32(0b101)
    assert compare_tensors(other, clean).kind == "one_element"


def test_systematic_differences_are_software():
    clean = _tensor("float32")
    for other, kind in ((clean * np.float32(2), "scaled"), (clean + np.float32(0.5), "offset"),
                        (clean + np.random.default_rng(1).normal(0, 1, clean.size).astype(np.float32),
                         "every_element")):
        found = compare_tensors(other, clean)
        assert found.kind == kind and not found.hardware_suspect and "software" in found.advice()
    assert compare_tensors(clean * np.float32(2), clean).factor == pytest.approx(2.0)


def test_a_few_elements_and_equal_tensors():
    clean = np.zeros(10_000, np.float32)
    other = clean.copy()
    other[[5, 900, 7000]] = 1.0
    assert compare_tensors(other, clean).kind == "few_elements"
    assert compare_tensors(clean, clean.copy()) is None
    assert compare_tensors(clean, clean[:10]) is None


def test_popcount_against_python():
    words = np.random.default_rng(2).integers(0, 2**63, 100, dtype=np.uint64)
    assert popcount(words).tolist() == [bin(int(w)).count("1") for w in words]


def test_inferred_kind_from_statistics():
    clean = np.random.default_rng(3).normal(0, 1, 100_000).astype(np.float32)
    flipped = clean.copy()
    flipped.view(np.uint32)[10] ^= np.uint32(1 << 30)  # the highest exponent bit: one huge element
    few = infer_from_stats(stats(flipped), stats(clean), clean.size)
    assert (few.kind, few.exact) == ("few_elements", False) and "l2" in few.moved
    assert "Inferred" in few.describe()
    shifted = infer_from_stats(stats(clean + np.float32(0.3)), stats(clean), clean.size)
    assert shifted.kind == "every_element" and "mean" in shifted.moved
    assert infer_from_stats(stats(clean), stats(clean), clean.size).kind == "unknown"


def test_an_element_turned_nan_or_inf_is_a_few_elements_from_the_counts():
    clean = np.random.default_rng(4).normal(0, 1, 1000).astype(np.float32)
    for bad in (np.nan, np.inf):
        other = clean.copy()
        other[17] = bad
        found = infer_from_stats(stats(other), stats(clean), clean.size)
        assert found.kind == "few_elements" and found.moved[0] in ("NaN count", "Inf count")


def test_every_statistic_moving_a_little_is_every_element_not_a_few():
    clean = np.random.default_rng(5).normal(0, 1, 512).astype(np.float32)
    moved = clean * np.float32(1.01) + np.float32(1e-3)
    found = infer_from_stats(stats(moved), stats(clean), clean.size)
    assert found.kind == "every_element" and {"min", "max", "mean", "l2"} <= set(found.moved)
    tiny = clean.copy()
    tiny.view(np.uint32)[7] ^= np.uint32(1)  # the lowest mantissa bit: no statistic moves
    found = infer_from_stats(stats(tiny), stats(clean), clean.size)
    assert found.kind == "unknown" and "below the statistics' resolution" in found.describe()
