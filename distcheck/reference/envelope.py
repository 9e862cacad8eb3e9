"""How far two correct runs may drift apart at each step: the tolerance of ``distcheck diff``.

Two correct runs of one training differ by rounding: another reduction order (one device
against N ranks), another split of the batch. The differences start at a few units in the
last place (ulps) and, when training is chaotic (a high learning rate), grow about
exponentially, step after step, until the runs are unrelated samples of the same training.
A fixed relative tolerance is therefore wrong at both ends: too loose at step 1, where a
bug shows as a difference of 100% against a rounding noise of 1e-7, and too tight after
a few hundred steps (rtol 1e-3 raised false alarms from step 134 of a correct 400-step run
at learning rate 0.2).

**Measured** (``diff --noise NOISE``): NOISE is the reference run again with its initial
weights one ulp apart (``distcheck launch --perturb``). At each step, for each statistic
(loss; each parameter's L2 norm, mean and update norm; each gradient's L2 norm), the
allowed difference is

    SAFETY x max( running max over steps <= s of |REF - NOISE|,
                  running max of the largest relative drift of that statistic over all
                  parameters x this parameter's scale )

and never below the floor below. Why so:

- *monotone in step*: rounding differences only grow; a noise run that happens to come
  back close to the reference at step s (a sign change, a statistic crossing zero) says
  nothing about how far another correct run may be;
- *pooled over parameters*: the weights of one network are coupled, so a trajectory that
  has drifted by a relative amount in one parameter may have drifted as much in any;
  this keeps a parameter the noise run happened to leave close from raising a false alarm;
- *SAFETY = 10*: the noise run is perturbed by one ulp before step 0 and after every
  update (a reduction order rounds differently at every step; perturbed once, the noise
  run drifted up to 40x less far than a correct 2-rank run). So perturbed, on the example
  job (``scripts/train_reference.py``, lr 0.2, 2 ranks against 1 device) the correct run
  stayed within 1x to 3x of the noise run's drift; 10 leaves room for another seed. A bug
  at step 1 is still 10^4 to 10^6 times outside (a factor 2 is a relative difference of 1).

**Default** (no noise run): a relative tolerance of FLOOR_ULPS ulps of the dtype at step 0,
doubling every DOUBLING_STEPS steps (rounding differences doubled every ~11 steps in the
example above). From the step where it reaches 100% on, nothing is judged (the allowed
difference is unbounded); the report says so.

**Floor**: FLOOR_ULPS ulps of the dtype (fewer for float16 and bfloat16) times the statistic's scale (its own magnitude, or
for a mean, the tensor's RMS, as a mean near zero is rounded on the scale of its terms).
Two runs that differ only by reduction order agree to within a few ulps at step 1; a
difference within the floor is no difference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

SAFETY = 10.0
FLOOR_ULPS = 64
#: Fewer ulps in the short dtypes, whose ulp is large already (4 bfloat16 ulps are 3%).
FLOOR_ULPS_BY_DTYPE = {"float16": 8, "bfloat16": 4}
DOUBLING_STEPS = 10.0
#: Machine epsilon (one ulp of 1.0) per dtype name.
EPSILON = {"float64": 2.0 ** -52, "float32": 2.0 ** -23, "float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}


def epsilon(dtype: str) -> float:
    """The floor's relative size in ``dtype``: FLOOR_ULPS ulps of 1.0 (fewer in float16 and
    bfloat16, see FLOOR_ULPS_BY_DTYPE), divided by FLOOR_ULPS so that the functions below
    can multiply by it; float32's for a dtype that is not a float."""
    return EPSILON.get(dtype, EPSILON["float32"]) * FLOOR_ULPS_BY_DTYPE.get(dtype, FLOOR_ULPS) / FLOOR_ULPS


@dataclass(frozen=True)
class Bounds:
    """Allowed absolute differences of one series: ``floor`` (rounding, no difference)
    and ``allowed`` (the envelope), both shaped like the series."""

    floor: np.ndarray
    allowed: np.ndarray


def floor(scale: np.ndarray, eps) -> np.ndarray:
    """FLOOR_ULPS ulps of ``scale`` (``eps`` a scalar or broadcastable array)."""
    return FLOOR_ULPS * np.asarray(eps, np.float64) * np.nan_to_num(np.abs(scale))


def running_max(values: np.ndarray) -> np.ndarray:
    """Running maximum along the first axis (steps), NaN counting as 0."""
    return np.maximum.accumulate(np.nan_to_num(np.asarray(values, np.float64), nan=0.0), axis=0)


def measured(ref: np.ndarray, noise: np.ndarray, scale: np.ndarray, eps, pool_axis: Optional[int] = 1) -> Bounds:
    """The envelope of one series (steps first) from a noise run's values aligned on the
    same steps; ``scale`` is each value's magnitude for relative terms; ``pool_axis`` is the
    axis of parameters, pooled over for the relative drift (None: a series of scalars)."""
    ref, noise = np.asarray(ref, np.float64), np.asarray(noise, np.float64)
    scale = np.nan_to_num(np.abs(np.asarray(scale, np.float64)))
    with np.errstate(invalid="ignore"):
        drift = np.abs(ref - noise)
        relative = np.where(scale > 0, drift / np.where(scale > 0, scale, 1), 0.0)
    relative = np.nan_to_num(relative, nan=0.0, posinf=0.0)
    if pool_axis is not None and relative.ndim > pool_axis:
        relative = np.max(relative, axis=pool_axis, keepdims=True) if relative.shape[pool_axis] else relative
    low = floor(scale, eps)
    allowed = SAFETY * np.maximum(running_max(drift), running_max(relative) * scale)
    return Bounds(low, np.maximum(allowed, low))


def default(steps: np.ndarray, scale: np.ndarray, eps) -> Bounds:
    """The envelope without a noise run: :func:`default_relative` times the scale;
    unbounded from the step where that reaches 100%."""
    scale = np.nan_to_num(np.abs(np.asarray(scale, np.float64)))
    rel = default_relative(steps, eps).reshape((-1,) + (1,) * (scale.ndim - 1))
    allowed = np.where(rel >= 1.0, np.inf, np.maximum(rel * scale, floor(scale, eps)))
    return Bounds(floor(scale, eps), allowed)


def default_relative(steps: np.ndarray, eps) -> np.ndarray:
    """FLOOR_ULPS ulps at step 0, doubling every DOUBLING_STEPS steps, at most 1 (100%)."""
    steps = np.asarray(steps, np.float64)
    with np.errstate(over="ignore"):
        return np.minimum(1.0, FLOOR_ULPS * np.max(eps) * np.exp2(steps / DOUBLING_STEPS))


def saturation_step(steps: np.ndarray, eps) -> Optional[int]:
    """The first of ``steps`` at which the default envelope reaches 100%, or None."""
    full = np.flatnonzero(default_relative(steps, eps) >= 1.0)
    return int(steps[full[0]]) if len(full) else None


def fixed(scale: np.ndarray, rtol: float, atol: float) -> Bounds:
    """``|a - b| <= atol + rtol * |b|`` (``--rtol``/``--atol``), the same at every step."""
    allowed = atol + rtol * np.nan_to_num(np.abs(np.asarray(scale, np.float64)))
    return Bounds(np.zeros_like(allowed), allowed)


def outside(ref: np.ndarray, run: np.ndarray, bounds: Bounds) -> np.ndarray:
    """Where ``run`` is further from ``ref`` than allowed; a value missing (NaN) on either
    side is not judged (a statistic one run did not record)."""
    ref, run = np.asarray(ref, np.float64), np.asarray(run, np.float64)
    with np.errstate(invalid="ignore"):
        return np.abs(run - ref) > bounds.allowed
