"""One unit in the last place: the perturbation behind a noise run (``distcheck launch --perturb``).

A noise run is the reference run again with its weights moved by one ulp, the smallest
change the dtype can hold, before step 0 and after every update (as another reduction
order rounds differently at every step). Nothing else differs, so how far it drifts from the
reference, step by step, is what rounding alone does to this training: the envelope
:mod:`distcheck.reference.envelope` judges other runs with.

Every finite, non-zero element moves, up or down at random. Random signs because the
rounding differences the envelope stands for (another reduction order, another split of
the batch) are of either sign and spread over every element; one-sided moves would add a
systematic shift of each parameter's mean that rounding does not make. Zeros stay zero
(one ulp of zero is a subnormal number, which kernels may flush), and so do NaN and Inf.
The signs come from a fixed seed and the parameter's index, so every rank of a
data-parallel job perturbs its replica identically and the replicas stay equal.
"""
from __future__ import annotations

import numpy as np

#: The perturbation's seed: fixed, so that every rank and every run perturbs alike.
SEED = 17


def one_ulp_apart(values: np.ndarray, index: int, seed: int = SEED, step: int = 0) -> np.ndarray:
    """A copy of the float array ``values`` with each finite non-zero element moved by
    one ulp, up or down (signs drawn from ``seed``, ``index``, the parameter's index, and
    ``step``, the update after which it is applied: 0 before the first)."""
    values = np.asarray(values)
    if values.dtype.kind != "f":
        raise TypeError(f"one_ulp_apart needs a floating array, got {values.dtype}")
    up = np.random.default_rng([seed, index, step]).integers(0, 2, values.shape).astype(bool)
    target = np.where(up, np.inf, -np.inf).astype(values.dtype)
    moved = np.nextafter(values, target)
    keep = ~np.isfinite(values) | (values == 0)
    return np.where(keep, values, moved).astype(values.dtype)


def bfloat16_one_ulp_apart(bits: np.ndarray, index: int, seed: int = SEED, step: int = 0) -> np.ndarray:
    """:func:`one_ulp_apart` for bfloat16 values held as their uint16 bits (numpy has no
    bfloat16): the result's bits."""
    bits = np.asarray(bits, np.uint16)
    up = np.random.default_rng([seed, index, step]).integers(0, 2, bits.shape).astype(bool)
    negative = (bits & 0x8000) != 0
    magnitude = bits & 0x7FFF
    # Away from zero: the magnitude's bits grow by one; toward zero: they shrink by one.
    away = up != negative
    moved = np.where(away, bits.astype(np.int32) + 1, bits.astype(np.int32) - 1).astype(np.uint16)
    keep = (magnitude == 0) | (magnitude >= 0x7F80)  # zeros, Inf and NaN
    moved = np.where(away & (magnitude == 0x7F7F), bits, moved)  # the largest finite stays
    return np.where(keep, bits, moved).astype(np.uint16)
